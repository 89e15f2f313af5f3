"""One reader does not cost the others: a reader beyond the slots reads every byte without
stealing a ring, and (a known limitation) the creator's stalled client holds the readers.
Children live in tests/entry/procs_inline.py.
"""

from __future__ import annotations

import threading
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import procs_inline
import pytest
import xproc
from procs_inline import get_report, start_child, wait_event

import streamcache
from streamcache import StreamCache
from streamcache.entry.pipe import PipeReader

WAIT = 20.0
HOUR = 3600.0
KEY = "reader-independence"


# -- readers beyond the slots are not counted: they fail when the slotted ones leave -----------


def test_unslotted_reader_reads_everything_without_stealing_rings(cache_dir: Path) -> None:
    """A reader beyond the slots (reader_slots=4 here; 16384 by default) reads every
    byte by polling, and the slotted readers, woken by the doorbell, lose no ring to it
    (with window=0 each write waits for one of them)."""
    cache = streamcache.StreamCache(cache_dir, window=0, reader_slots=4, cleanup_interval=0)
    data = bytes(range(256)) * 64

    def create(w: Any) -> None:
        for i in range(0, len(data), 256):
            w.write(data[i : i + 256])

    streams = [cache.stream("k", create, timeout=WAIT)]
    try:
        for _ in range(3):
            streams.append(cache.stream("k", xproc.forbidden_create, timeout=WAIT))
        overflow = cache.stream("k", xproc.forbidden_create, timeout=WAIT)
        src = overflow._source
        assert isinstance(src, PipeReader) and src._slot is None
        results: list[bytes] = []
        threads = [
            threading.Thread(target=lambda s=s: results.append(s.read()))
            for s in [*streams, overflow]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert results == [data] * 5
    finally:
        for s in [*streams, overflow]:
            s.close()
        assert cache.wait_producers(WAIT)


# -- the inline creator's dst sets the pace of every reader ------------------------------------


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="LIMITATION: a creator whose dst has no descriptor (a Python object) keeps its "
    "copy inside the producer's writes until one write to it takes over 10 ms; one that "
    "blocks indefinitely holds the producer, and the readers, until it returns (with a "
    "descriptor the copy moves to a thread as soon as another reader attaches: "
    "test_inline_creator.py::test_creator_client_paces_nobody_once_another_reader_"
    "attached)",
)
def test_a_stalled_creator_client_does_not_stall_the_other_readers(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    chunks = [bytes([65 + i]) * 4096 for i in range(4)]
    stalled, release = spawn.Event(), spawn.Event()
    proc, out = start_child(
        spawn, procs_inline.stalled_dst_producer, str(cache_dir), KEY, chunks, stalled, release
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    try:
        wait_event(stalled, "the creator's client to stall")
        got = b""
        try:
            with cache.stream(KEY, procs_inline.forbidden_create, timeout=3.0) as s:
                assert not s.created
                for chunk in s:
                    got += chunk
        except TimeoutError:
            pass
        assert got == b"".join(chunks), f"read {len(got)} of {len(b''.join(chunks))} bytes"
        release.set()
        assert get_report(out) == ("ok", len(got), True, True)
    finally:
        release.set()
        proc.join(WAIT)
