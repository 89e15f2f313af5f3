"""A create that fails or is interrupted before it starts: its readers get an error, and
the next fetch creates the entry afresh. Children live in tests/entry/procs_inline.py.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import procs_inline
import pytest
import xproc
from helpers import ipc_objects, writing
from procs_inline import get_report, start_child

import ipc
import streamcache
from ipc.channel import unlink_channel
from streamcache import StreamCache
from streamcache.cache import LAYOUT, channel_base, key_hash
from streamcache.disk.index import Index
from streamcache.entry.producer import Producer

WAIT = 20.0
HOUR = 3600.0
KEY = "create-failure"


def _index(cache_dir: Path) -> Index:
    return Index(str(cache_dir / LAYOUT))


# -- an exception whose str() raises: the entry never leaves "writing" -------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


def _raise_unprintable(w: Any) -> None:
    w.write(b"partial")
    raise Unprintable()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_create_raising_unprintable_exception_fails_readers(cache_dir: Path) -> None:
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    try:
        with pytest.raises(streamcache.CreateError):
            cache.fetch("k", io.BytesIO(), _raise_unprintable, timeout=3)
    finally:
        cache.wait_producers(5)


# -- an exception between publishing the record and starting the producer thread ---------------


class RequestDeadline(Exception):
    pass


def _deadline_handler(signum: int, frame: Any) -> None:
    raise RequestDeadline("the request's alarm fired")


def test_exception_before_producer_start_leaves_nothing_behind(cache_dir: Path) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    start_code = Producer.start.__code__

    def alarm_at_start(frame: Any, event: str, arg: Any) -> None:
        # A real signal at this instruction, as a request-timeout alarm would deliver it.
        if event == "call" and frame.f_code is start_code:
            os.kill(os.getpid(), signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, _deadline_handler)
    sys.setprofile(alarm_at_start)
    try:
        with pytest.raises(RequestDeadline):
            cache.stream("k", xproc.writer_of("x", 1000, 100), timeout=WAIT)
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGUSR1, old)
    h = key_hash("k")
    orphan = _index(cache_dir).read(h)
    try:
        sink = io.BytesIO()
        assert cache.fetch("k", sink, xproc.writer_of("y", 1000, 100), timeout=WAIT) == (
            1000,
            True,
        )
        assert sink.getvalue() == xproc.payload_bytes("y", 1000, 100)
        assert cache.wait_producers(WAIT)
        cache.gc()
        assert ipc_objects(cache_dir) == []
    finally:
        # Remove what the orphan leaves behind: its producer is this live process, so
        # neither gc nor the leak check would.
        if orphan is not None:
            unlink_channel(channel_base(ipc.prefix_for(cache_dir), orphan.file))


# -- the inline creator interrupted before its create started ----------------------------------


def test_inline_creator_interrupted_before_create_leaves_no_entry(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    stop = spawn.Event()
    proc, out = start_child(
        spawn, procs_inline.inline_creator_interrupted, str(cache_dir), KEY, stop
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    try:
        assert get_report(out) == ("interrupted",)
        sink = io.BytesIO()
        try:
            res = cache.fetch(KEY, sink, writing(b"fresh"), timeout=3.0)
        except TimeoutError:
            raise AssertionError(
                "the next fetch waited for a creator that was interrupted"
            ) from None
        assert res == (5, True)
        assert sink.getvalue() == b"fresh"
    finally:
        stop.set()
        proc.join(WAIT)


# -- a producer thread that cannot start --------------------------------------------------------


class _NoThreads(threading.Thread):
    """A thread that cannot start, as when the process is out of threads."""

    def start(self) -> None:
        raise RuntimeError("can't start new thread")


def test_a_producer_thread_that_cannot_start_fails_the_entry_at_once(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry must not stay "writing" under this live process: its record, data file
    and channel go at once, and the next fetch creates afresh."""
    import streamcache.entry.producer

    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    monkeypatch.setattr(streamcache.entry.producer.threading, "Thread", _NoThreads)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        cache.stream("k", xproc.writer_of("x", 1000, 100), timeout=WAIT)
    monkeypatch.undo()
    assert _index(cache_dir).read(key_hash("k")) is None
    assert ipc_objects(cache_dir) == [], "the channel of the failed entry is gone at once"
    assert xproc.data_files(cache_dir) == []
    sink = io.BytesIO()
    assert cache.fetch("k", sink, xproc.writer_of("x", 1000, 100), timeout=WAIT) == (1000, True)
    assert cache.wait_producers(WAIT)
