"""Fallbacks for platforms without sem_timedwait or futex (macOS).

Linux has both, so each fallback is forced by switching the module's capability
flag: the only way to run those paths here.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, open_segment

import ipc
import streamcache
from ipc import doorbell, futex
from ipc.naming import new_base, object_name
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.index import Index


def test_polling_wait_times_out_and_wakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doorbell, "_TIMED_WAITS", False)
    name = object_name(new_base(ipc.prefix_for(tmp_path)), "r")
    bell = ipc.Doorbell.create(name)
    try:
        assert bell.wait(0.05) is False
        bell.ring()
        assert bell.wait(0.05) is True
        ringer = threading.Timer(0.05, bell.ring)
        ringer.start()
        assert bell.wait(10) is True
        ringer.join()
    finally:
        bell.close()
        bell.unlink()


def _reader_without_futex(cache_dir: str, key: str, q: Any) -> None:
    futex.SUPPORTED = False  # as on macOS: readers sleep on the "r" semaphore
    cache = streamcache.StreamCache(cache_dir, liveness=30.0, cleanup_interval=0)
    try:
        with cache.stream(key, lambda w: None, timeout=WAIT) as s:
            q.put(("attached", s.created))
            q.put(("got", s.read()))
    finally:
        cache.stop()


def test_readers_sleep_on_the_semaphore_without_futex(
    cache_dir: Path, spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there is no futex the readers' bell is the "r" semaphore. A reader in another
    process sleeping on it (its liveness 30 s, longer than any wait here, so only a ring
    can wake it) gets each write."""
    monkeypatch.setattr(futex, "SUPPORTED", False)
    cache = streamcache.StreamCache(cache_dir, liveness=30.0, cleanup_interval=0)
    q = spawn.Queue()
    proc = spawn.Process(target=_reader_without_futex, args=(str(cache_dir), "k", q))

    def create(w: Any) -> None:
        w.write(b"first ")
        proc.start()
        assert q.get(timeout=WAIT) == ("attached", False)
        rec = Index(str(cache_dir / LAYOUT)).read(key_hash("k"))
        assert rec is not None
        seg = open_segment(cache_dir, rec)
        try:
            for chunk in (b"second ", b"third"):
                deadline = time.monotonic() + WAIT
                while not any(r.waiting for r in seg.reader_list()):
                    assert time.monotonic() < deadline, "the reader never went to sleep"
                    time.sleep(0.001)
                w.write(chunk)
        finally:
            seg.close()

    try:
        out = io.BytesIO()
        assert cache.fetch("k", out, create) == (18, True)
        assert q.get(timeout=WAIT) == ("got", b"first second third")
        proc.join(WAIT)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
        cache.stop()
