"""The creator of a ``stream()`` or ``astream()`` miss takes its bytes from its producer's
writes in its own process (see streamcache/entry/feed.py), while readers in other
processes read the data file: every read gives the same bytes or the same error as on
the file's path (the scripts of the one-contract test), a creator that stops reading or
closes paces nobody beyond back pressure, and its reads make no read system call."""

from __future__ import annotations

import asyncio
import io
import os
import re
import threading
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import procs_stream_feed
import pytest
from helpers import WAIT, writing
from test_every_path_same_bytes import KEY, PLAIN, SCRIPTS, SMALL
from xproc import expect

import ipc
import streamcache
from streamcache import Create, CreateError, Writer

READERS = 1  # other processes on the entry
# The creator's calls and its create's wait for the readers: spawning a process takes
# seconds at load 50.
LONG = 5 * WAIT


def _gated(create: Create, attached: list[Any]) -> Create:
    """``create``, once every other reader has attached (so each reads from byte 0)."""

    def run(w: Writer) -> Any:
        for event in attached:
            if not event.wait(LONG):
                raise TimeoutError("a reader process never attached")
        return create(w)

    return run


def _start_readers(
    spawn: SpawnContext, cache_dir: Path, attached: list[Any], out: Any
) -> list[Any]:
    procs = []
    for event in attached:
        p = spawn.Process(
            target=procs_stream_feed.attach_and_read,
            args=(str(cache_dir), KEY, event),
            kwargs={"out": out},
        )
        p.start()
        procs.append(p)
    return procs


def _iterate(s: streamcache.Stream) -> bytes:
    return b"".join(s)


def _read_small(s: streamcache.Stream) -> bytes:
    parts = []
    while chunk := s.read(SMALL):
        parts.append(chunk)
    return b"".join(parts)


def _readinto(s: streamcache.Stream) -> bytes:
    got, buf = bytearray(), bytearray(SMALL)
    while n := s.readinto(buf):
        got += buf[:n]
    return bytes(got)


SYNC_READS: dict[str, Callable[[streamcache.Stream], bytes]] = {
    "iterate": _iterate,
    "read-n": _read_small,
    "readinto": _readinto,
}


def _creator_reads(
    cache: streamcache.StreamCache, create: Create, read: str, started: Callable[[], None]
) -> bytes:
    """The creator's call: ``stream()`` read as ``read`` says, or ``astream()``."""
    if read == "astream":

        async def main() -> bytes:
            async with cache.astream(KEY, create, timeout=LONG) as s:
                assert s.created
                started()
                parts = []
                async for chunk in s:
                    parts.append(chunk)
                return b"".join(parts)

        return asyncio.run(main())
    with cache.stream(KEY, create, timeout=LONG) as s:
        assert s.created
        started()
        return SYNC_READS[read](s)


@pytest.mark.parametrize("read", [*SYNC_READS, "astream"])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_the_creator_and_readers_elsewhere_get_the_same_bytes_or_error(
    cache_dir: Path, spawn: SpawnContext, script: str, read: str
) -> None:
    s = SCRIPTS[script]
    attached = [spawn.Event() for _ in range(READERS)]
    out = spawn.Queue()
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    procs: list[Any] = []
    try:
        create = _gated(s.create, attached)

        def started() -> None:
            procs.extend(_start_readers(spawn, cache_dir, attached, out))

        if s.error is None:
            assert _creator_reads(cache, create, read, started) == PLAIN
        else:
            with pytest.raises(CreateError, match=s.error):
                _creator_reads(cache, create, read, started)
        for _ in procs:
            msg = expect(out, "read" if s.error is None else "raised", LONG)
            if s.error is None:
                assert msg[0] == PLAIN
            else:
                name, text, got = msg
                assert name in ("CreateError", "AllReadersLeft"), msg
                assert re.search(s.error, text), text
                assert PLAIN.startswith(got)
        for p in procs:
            p.join(WAIT)
            assert p.exitcode == 0
        assert cache.wait_producers(WAIT)
        # A failed entry is not stored; a whole one is a hit.
        sink = io.BytesIO()
        res = cache.fetch(KEY, sink, writing(PLAIN))
        assert res == (len(PLAIN), s.error is not None)
        assert sink.getvalue() == PLAIN
    finally:
        for p in procs:
            p.join(WAIT)
        cache.stop()


BIG = 24 << 20  # more than the feed holds for a creator that does not read (8 MiB)
PART = 1 << 20


def _big() -> Create:
    def create(w: Writer) -> None:
        for i in range(BIG // PART):
            w.write(bytes([i % 251]) * PART)

    return create


def _big_bytes() -> bytes:
    return b"".join(bytes([i % 251]) * PART for i in range(BIG // PART))


@pytest.mark.parametrize("then", ["resume", "close"])
def test_a_creator_that_stops_reading_paces_no_reader_elsewhere(
    cache_dir: Path, spawn: SpawnContext, then: str
) -> None:
    """The creator reads one chunk, then nothing: a reader in another process reads the
    whole entry (three times what the feed holds) meanwhile, the producer held by no
    one; then the creator reads on (every byte, in order) or closes."""
    attached = [spawn.Event()]
    out = spawn.Queue()
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0, window=0)
    procs: list[Any] = []
    try:
        with cache.stream(KEY, _gated(_big(), attached), timeout=LONG) as s:
            assert s.created
            procs = _start_readers(spawn, cache_dir, attached, out)
            first = s.read(SMALL)
            msg = expect(out, "read", LONG)  # hangs (then fails) if the creator paced it
            assert msg[0] == _big_bytes()
            assert cache.wait_producers(WAIT)  # the entry is whole while the creator waits
            if then == "resume":
                assert first + s.read() == _big_bytes()
        procs[0].join(WAIT)
        assert procs[0].exitcode == 0
        sink = io.BytesIO()
        assert cache.fetch(KEY, sink, writing(b"not this")) == (BIG, False)
    finally:
        for p in procs:
            p.join(WAIT)
        cache.stop()


def _thread_reads() -> int:
    """Read system calls made so far by the calling thread (Linux's per-thread I/O
    accounting); reading the count is one more."""
    fd = os.open(f"/proc/self/task/{threading.get_native_id()}/io", os.O_RDONLY)
    try:
        text = os.read(fd, 4096).decode()
    finally:
        os.close(fd)
    return int(text.split("syscr:")[1].split()[0])


@pytest.mark.skipif(
    not os.path.exists(f"/proc/self/task/{threading.get_native_id()}/io"),
    reason="needs Linux's per-thread I/O accounting",
)
def test_the_creators_reads_take_the_producers_writes_without_reading_the_file(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """While another process reads the entry from its file, the creator's iteration (this
    thread) makes no read system call (no pread of the data file) and no futex wait on
    the channel (this process's other threads make none either: the producer's own
    waits are on a semaphore): every chunk comes from a write of the producer."""
    attached = [spawn.Event()]
    out = spawn.Queue()
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    chunks = [bytes([i]) * (64 << 10) for i in range(32)]
    procs: list[Any] = []
    try:
        with cache.stream(KEY, _gated(writing(*chunks), attached), timeout=LONG) as s:
            procs = _start_readers(spawn, cache_dir, attached, out)
            before = _thread_reads()
            waits = ipc.futex.counts.waits
            cost = _thread_reads() - before  # of reading the count itself
            got = b"".join(s)
            reads = _thread_reads() - before - 2 * cost
            futex_waits = ipc.futex.counts.waits - waits
        assert got == b"".join(chunks)
        assert expect(out, "read", LONG)[0] == got
        assert (reads, futex_waits) == (0, 0)
    finally:
        for p in procs:
            p.join(WAIT)
        cache.stop()
