"""Stream progress and ranges: ``start=``, ``s.size``, ``s.produced``, ``s.position``,
``w.set_size`` and ``cache.peek``, seen from other processes and from every cache."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, recv, wait_until, writing
from procs_sizes import stream_reader

import streamcache

DATA = bytes(range(256)) * 64  # 16 KiB, every byte's value tells its offset mod 256


@pytest.fixture
def cache(cache_dir: Path) -> Iterator[streamcache.StreamCache]:
    c = streamcache.StreamCache(cache_dir, liveness=0.5, cleanup_interval=0)
    yield c
    c.wait_producers(WAIT)
    c.stop()


class Gate:
    """A create that announces the size, writes the first ``head`` bytes, and waits
    for ``go`` before writing the rest."""

    def __init__(self, data: bytes, head: int, announce: bool = True) -> None:
        self.data, self.head, self.announce = data, head, announce
        self.wrote_head = threading.Event()
        self.go = threading.Event()

    def __call__(self, w: Any) -> None:
        if self.announce:
            w.set_size(len(self.data))
        w.write(self.data[: self.head])
        self.wrote_head.set()
        assert self.go.wait(WAIT), "the test never let the producer finish"
        w.write(self.data[self.head :])


def test_announced_size_is_seen_in_another_process_before_any_byte(
    cache: streamcache.StreamCache, cache_dir: Path, spawn: Any
) -> None:
    gate = Gate(DATA, head=0)
    with cache.stream("k", gate) as mine:
        wait_until(lambda: mine.size is not None, "the creator's stream sees the size")
        parent, child = spawn.Pipe()
        proc = spawn.Process(target=stream_reader, args=(str(cache_dir), "k", 0, child))
        proc.start()
        assert recv(parent) == ("opened", False, len(DATA), 0)
        parent.send("state")
        assert recv(parent) == ("state", len(DATA), 0, 0)
        gate.go.set()
        parent.send("read")
        assert recv(parent) == ("read", DATA, len(DATA), len(DATA))
        assert mine.read() == DATA
        proc.join(WAIT)


def test_a_reader_starting_mid_write_in_another_process_gets_the_bytes_from_there(
    cache: streamcache.StreamCache, cache_dir: Path, spawn: Any
) -> None:
    gate = Gate(DATA, head=1000)
    with cache.stream("k", gate) as mine:
        assert gate.wrote_head.wait(WAIT)
        parent, child = spawn.Pipe()
        start = len(DATA) - 1024  # past what is written: it waits for the producer
        proc = spawn.Process(target=stream_reader, args=(str(cache_dir), "k", start, child))
        proc.start()
        assert recv(parent) == ("opened", False, len(DATA), start)
        parent.send("state")
        _, size, produced, position = recv(parent)
        assert (size, position) == (len(DATA), start) and produced >= 1000
        parent.send("read")
        gate.go.set()
        assert recv(parent) == ("read", DATA[start:], len(DATA), len(DATA))
        assert mine.read() == DATA
        proc.join(WAIT)


def test_back_pressure_counts_a_reader_from_its_start(cache_dir: Path) -> None:
    # window=0 is Gitaly's rule: the producer may not run ahead of its best reader.
    # The only reader starts at byte 12 KiB and has read nothing, yet the producer
    # may write up to there.
    cache = streamcache.StreamCache(cache_dir, window=0, liveness=0.5, cleanup_interval=0)
    start = 12 * 1024
    wrote = threading.Event()

    def create(w: Any) -> None:
        for i in range(0, start, 1024):
            w.write(DATA[i : i + 1024])
        wrote.set()
        w.write(DATA[start:])

    with cache.stream("k", create, start=start) as s:
        assert wrote.wait(WAIT), "the producer was held back before the reader's start"
        assert s.position == start
        assert s.read() == DATA[start:]
    cache.wait_producers(WAIT)


@pytest.mark.parametrize("finished", [True, False])
def test_a_start_past_the_end_ends_at_once(cache: streamcache.StreamCache, finished: bool) -> None:
    gate = Gate(DATA, head=10, announce=False)
    if finished:
        gate.go.set()
        assert cache.stream("k", gate).read() == DATA
    with cache.stream("k", gate, start=len(DATA) + 5) as s:
        gate.go.set()
        assert s.read() == b""
        assert s.position == len(DATA) + 5
        assert s.size == len(DATA)


def test_finished_entry_reports_its_size_and_produced(cache: streamcache.StreamCache) -> None:
    cache.stream("k", writing(DATA)).read()
    with cache.stream("k", lambda w: None, start=100) as s:
        assert (s.created, s.size, s.produced, s.position) == (False, len(DATA), len(DATA), 100)
        assert s.read(10) == DATA[100:110]
        assert s.position == 110


def test_size_is_none_until_known_then_the_final_size(cache: streamcache.StreamCache) -> None:
    gate = Gate(DATA, head=100, announce=False)
    with cache.stream("k", gate) as s:
        assert gate.wrote_head.wait(WAIT)
        assert s.size is None
        wait_until(lambda: s.produced == 100, "produced counts the bytes written")
        gate.go.set()
        assert s.read() == DATA
        assert s.size == s.produced == s.position == len(DATA)


def _announces(size: object, *chunks: bytes) -> Callable[[streamcache.Writer], None]:
    def create(w: streamcache.Writer) -> None:
        w.set_size(size)  # type: ignore[arg-type]
        for chunk in chunks:
            w.write(chunk)

    return create


def _below_written(w: streamcache.Writer) -> None:
    w.write(b"x" * 5)
    w.set_size(4)


def _changed(w: streamcache.Writer) -> None:
    w.set_size(5)
    w.set_size(6)


@pytest.mark.parametrize(
    "create",
    [
        pytest.param(_announces(10, b"x" * 9), id="short"),
        pytest.param(_announces(10, b"x" * 11), id="long"),
        pytest.param(_below_written, id="below-written"),
        pytest.param(_changed, id="changed"),
        pytest.param(_announces(-1), id="negative"),
        pytest.param(_announces(2.0), id="float"),
        pytest.param(_announces(True), id="bool"),
    ],
)
def test_a_create_that_breaks_its_announced_size_fails_the_entry(
    cache_dir: Path, create: Callable[[streamcache.Writer], None]
) -> None:
    for cache in caches(cache_dir):
        with pytest.raises(streamcache.CreateError, match=r"size|set_size"):
            cache.stream("k", create).read()
        with pytest.raises(streamcache.CreateError, match=r"size|set_size"):
            cache.fetch("k", NullSink(), create)
        assert cache.peek("k") is None
        cache.stop()


def test_an_announced_size_that_is_kept_passes(cache_dir: Path) -> None:
    def create(w: Any) -> None:
        assert w.set_size(4) == 4
        w.set_size(4)  # the same size again is no change
        w.write(b"ab")
        w.write(b"cd")

    for cache in caches(cache_dir):
        with cache.stream("k", create) as s:
            assert s.read() == b"abcd" and s.size == 4
        assert cache.fetch("j", NullSink(), create).written == 4
        cache.stop()


def caches(cache_dir: Path) -> list[streamcache.CacheBase]:
    """One of every cache, each on its own directory."""
    sc = streamcache.StreamCache(cache_dir, liveness=0.5, cleanup_interval=0)
    other = streamcache.StreamCache(cache_dir / "logged", liveness=0.5, cleanup_interval=0)
    third = streamcache.StreamCache(cache_dir / "min", liveness=0.5, cleanup_interval=0)
    return [
        sc,
        streamcache.LoggingCache(other),
        streamcache.MinOccurrences(third, 5, 60),  # bypass: below its threshold
        streamcache.NullCache(),
    ]


class NullSink:
    def write(self, data: bytes) -> int:
        return len(data)


def test_every_cache_streams_from_start_and_reports_progress(cache_dir: Path) -> None:
    for cache in caches(cache_dir):
        name = type(cache).__name__
        with cache.stream("k", _announces(len(DATA), DATA), start=7) as s:
            assert s.position == 7, name
            got = s.read()
            assert got == DATA[7:], name
            assert (s.size, s.produced, s.position) == (len(DATA), len(DATA), len(DATA)), name
        cache.stop()


def test_astream_has_start_and_progress(cache: streamcache.StreamCache) -> None:
    import asyncio

    async def main() -> tuple[bytes, int | None, int]:
        async with cache.astream("k", writing(DATA), start=3) as s:
            data = await s.read()
            return data, s.size, s.position

    assert asyncio.run(main()) == (DATA[3:], len(DATA), len(DATA))


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True])
def test_a_bad_start_is_refused_at_the_call(cache_dir: Path, bad: object) -> None:
    for cache in caches(cache_dir):
        error = ValueError if bad == -1 else TypeError
        with pytest.raises(error):
            cache.stream("k", lambda w: None, start=bad)  # type: ignore[arg-type]
        with pytest.raises(error):
            cache.astream("k", lambda w: None, start=bad)  # type: ignore[arg-type]
        cache.stop()


def test_finished_file_is_bounded_and_positioned(cache: streamcache.StreamCache) -> None:
    import os

    cache.stream("k", writing(DATA)).read()
    s = cache.stream("k", lambda w: None, start=1000)
    f = s.finished_file()
    assert f is not None
    assert os.lseek(f.fileno(), 0, os.SEEK_CUR) == 1000
    assert f.read(10) == DATA[1000:1010]
    assert f.read() == DATA[1010:]  # not a byte of the trailer
    assert f.read() == b""
    f.close()
    assert s.closed


def test_finished_file_is_none_while_in_flight(cache: streamcache.StreamCache) -> None:
    gate = Gate(DATA, head=10)
    with cache.stream("k", gate) as s:
        assert gate.wrote_head.wait(WAIT)
        assert s.finished_file() is None
        gate.go.set()
        assert s.read() == DATA
        f = s.finished_file()  # finished now: the rest (nothing) as a file
        assert f is not None and f.read() == b""


def test_peek_never_creates_and_tells_the_state(cache_dir: Path) -> None:
    sc = streamcache.StreamCache(cache_dir, liveness=0.5, cleanup_interval=0)
    cache = streamcache.MinOccurrences(sc, 1, 60)
    assert cache.peek("k") is None
    assert cache.peek("k") is None  # peeks are no occurrences: the next call still bypasses
    assert cache.stream("k", writing(b"x")).read() == b"x"
    assert cache.peek("k") is None  # bypassed: nothing stored
    gate = Gate(DATA, head=100)
    with cache.stream("k", gate) as s:  # the second request: cached
        assert gate.wrote_head.wait(WAIT)
        wait_until(lambda: (cache.peek("k") or info0()).produced == 100, "peek sees progress")
        assert cache.peek("k") == streamcache.EntryInfo(len(DATA), 100, False)
        gate.go.set()
        assert s.read() == DATA
    sc.wait_producers(WAIT)
    assert cache.peek("k") == streamcache.EntryInfo(len(DATA), len(DATA), True)
    failing = streamcache.StreamCache(cache_dir / "f", cleanup_interval=0)
    with pytest.raises(streamcache.CreateError):
        failing.stream("bad", lambda w: 1 / 0).read()
    assert failing.peek("bad") is None
    assert streamcache.NullCache().peek("k") is None
    with pytest.raises(TypeError):
        sc.peek(b"k")  # type: ignore[arg-type]


def info0() -> streamcache.EntryInfo:
    return streamcache.EntryInfo(None, -1, False)


def test_readers_that_took_every_announced_byte_and_left_do_not_abandon_the_entry(
    cache: streamcache.StreamCache,
) -> None:
    returned = threading.Event()
    readers_gone = threading.Event()

    def create(w: Any) -> None:
        w.set_size(len(DATA))
        w.write(DATA)
        assert readers_gone.wait(WAIT)  # every reader has left before create returns
        returned.set()

    with cache.stream("k", create) as s:
        got = b""
        while len(got) < len(DATA):  # every byte, but not the end (create has not returned)
            got += s.read(len(DATA) - len(got))
        assert got == DATA
    readers_gone.set()
    assert returned.wait(WAIT)
    cache.wait_producers(WAIT)
    assert cache.peek("k") == streamcache.EntryInfo(len(DATA), len(DATA), True)
    with cache.stream("k", forbidden) as again:
        assert not again.created and again.read() == DATA


def test_readers_that_left_before_the_announced_end_abandon_it(
    cache: streamcache.StreamCache,
) -> None:
    readers_gone = threading.Event()
    outcome: list[BaseException] = []

    def create(w: Any) -> None:
        w.set_size(len(DATA) + 1)
        w.write(DATA)
        assert readers_gone.wait(WAIT)
        try:
            w.write(b"!")
        except BrokenPipeError as exc:
            outcome.append(exc)
            raise

    with cache.stream("k", create) as s:
        got = b""
        while len(got) < len(DATA):
            got += s.read(len(DATA) - len(got))
    readers_gone.set()
    cache.wait_producers(WAIT)
    assert len(outcome) == 1
    assert cache.peek("k") is None


def forbidden(w: Any) -> None:
    raise AssertionError("a finished entry must be hit, not created again")


def test_a_fetch_after_every_reader_took_the_announced_bytes_attaches_not_creates(
    cache: streamcache.StreamCache,
) -> None:
    # The entry is whole though create has not returned and nobody reads it: a new
    # request joins it instead of creating it again.
    returned = threading.Event()
    release = threading.Event()

    def create(w: Any) -> None:
        w.set_size(len(DATA))
        w.write(DATA)
        assert release.wait(WAIT)
        returned.set()

    with cache.stream("k", create) as s:
        got = b""
        while len(got) < len(DATA):
            got += s.read(len(DATA) - len(got))
    with cache.stream("k", forbidden) as again:
        assert not again.created
        got = b""
        while len(got) < len(DATA):
            got += again.read(len(DATA) - len(got))
        assert got == DATA
        assert not returned.is_set()
        release.set()
        assert again.read() == b""
    cache.wait_producers(WAIT)
