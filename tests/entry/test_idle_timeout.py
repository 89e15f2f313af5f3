"""``idle_timeout``: TimeoutError when no new byte of the entry arrives for that long,
however long the whole transfer takes (docs/design.md, "Failure model": a producer
alive but writing nothing).

One case runs through every path a call can go (an entry produced in this process, one
produced in another process, NullCache, a miss that bypasses the budget,
MinOccurrences' pass-through, LoggingCache) and every way it is read (fetch, stream,
astream), on a fake monotonic clock that moves only when the test moves it: the
producer writes a chunk each time the clock has moved 0.6 idle_timeouts, many times
over (so the transfer lasts several idle_timeouts and is never cut off); then it writes
nothing, the clock moves past idle_timeout, and the call must raise the same
TimeoutError on every path. The producer is released afterwards, so nothing is left
running. A last case runs the silence on the system clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, FakeMonotonic

import ipc
import streamcache
from streamcache import CacheBase, Writer

pytestmark = pytest.mark.timeout(180)

KEY = "idle-key"
IDLE = 10.0  # seconds on the fake clock
STEPS = 5  # chunks written 0.6 IDLE apart: 3 IDLE in all
CHUNK = b"0123456789" * 10
IDLE_ERROR = f"streamcache: no new byte of the entry for {IDLE:g} s (idle_timeout)"


def paced(orders: Any) -> Callable[[Writer], None]:
    """A create that writes CHUNK on each "write" order and ends on "end"; it waits for
    orders (a queue.Queue, or a multiprocessing one) at most WAIT each."""

    def create(w: Writer) -> None:
        while True:
            order = orders.get(timeout=WAIT)
            if order == "end":
                return
            w.write(CHUNK)

    return create


def _produce_elsewhere(dir: str, orders: Any, done: Any) -> None:
    """The entry's producer in another process (inline in its fetch, on the system clock)."""
    cache = streamcache.StreamCache(dir, cleanup_interval=0, registry=None)
    try:
        out = io.BytesIO()
        cache.fetch(KEY, out, paced(orders))
        done.put(len(out.getvalue()))
    finally:
        cache.stop()


class Path_:
    """The cache a path's call goes to, and how its producer is ordered to write."""

    def __init__(self, cache: CacheBase, orders: Any) -> None:
        self.cache = cache
        self.orders = orders


@contextlib.contextmanager
def opened(path: str, cache_dir: Path, clock: ipc.Clock) -> Iterator[Path_]:
    """The cache whose call for KEY goes the way ``path`` names, on ``clock``."""
    if path == "null":
        yield Path_(streamcache.NullCache(clock=clock), queue.Queue())
        return
    budget = 1 if path == "bypass" else None
    cache = streamcache.StreamCache(
        cache_dir, clock=clock, cleanup_interval=0, max_bytes=budget, registry=None
    )
    try:
        if path == "bypass":
            with _budget_taken(cache):
                yield Path_(cache, queue.Queue())
                assert cache.peek(KEY) is None
        elif path == "entry":
            yield Path_(cache, queue.Queue())
        elif path == "pass-through":
            yield Path_(streamcache.MinOccurrences(cache, 1, 60.0), queue.Queue())
        elif path == "logging":
            yield Path_(streamcache.LoggingCache(cache), queue.Queue())
        else:
            assert path == "other-process"
            spawn = multiprocessing.get_context("spawn")
            orders, done = spawn.Queue(), spawn.Queue()
            proc = spawn.Process(target=_produce_elsewhere, args=(str(cache_dir), orders, done))
            proc.start()
            try:
                orders.put("write")  # the entry exists (in flight) once that is written
                wait_for_entry(cache)
                yield Path_(cache, orders)
                assert done.get(timeout=WAIT) == len(CHUNK) * (STEPS + 2)
            finally:
                proc.join(WAIT)
                if proc.is_alive():
                    proc.kill()
                    proc.join(WAIT)
            assert proc.exitcode == 0
    finally:
        assert cache.wait_producers(WAIT)
        cache.stop()


def wait_for_entry(cache: streamcache.StreamCache) -> None:
    deadline = ipc.SYSTEM.monotonic() + WAIT
    while (info := cache.peek(KEY)) is None or info.produced < len(CHUNK):
        assert ipc.SYSTEM.monotonic() < deadline, "the other process never made its entry"
        ipc.SYSTEM.sleep(0.005)


@contextlib.contextmanager
def _budget_taken(cache: streamcache.StreamCache) -> Iterator[None]:
    """The whole budget (1 byte) held by an entry in flight: a miss of KEY bypasses."""
    wrote, go = threading.Event(), threading.Event()

    def hold(w: Writer) -> None:
        w.write(b"h")
        wrote.set()
        go.wait(WAIT)

    held = cache.stream("held", hold)
    try:
        assert wrote.wait(WAIT)
        yield
    finally:
        go.set()
        assert held.read() == b"h"
        held.close()


class Got:
    """What a call received so far, and an event per chunk."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._cond = threading.Condition()

    def add(self, data: bytes) -> None:
        with self._cond:
            self.data += data
            self._cond.notify_all()

    def wait_for(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.data) >= n, WAIT), (
                f"the call got {len(self.data)} bytes, not {n}"
            )


class _Dst(io.RawIOBase):
    def __init__(self, got: Got) -> None:
        self._got = got

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._got.add(bytes(data))
        return len(data)


def _fetch(cache: CacheBase, create: Any, got: Got, idle: float) -> None:
    cache.fetch(KEY, _Dst(got), create, idle_timeout=idle)


def _stream(cache: CacheBase, create: Any, got: Got, idle: float) -> None:
    with cache.stream(KEY, create, idle_timeout=idle) as s:
        for chunk in s:
            got.add(chunk)


def _astream(cache: CacheBase, create: Any, got: Got, idle: float) -> None:
    async def main() -> None:
        async with cache.astream(KEY, create, idle_timeout=idle) as s:
            async for chunk in s:
                got.add(chunk)

    asyncio.run(main())


READS = {"fetch": _fetch, "stream": _stream, "astream": _astream}
PATHS = ["entry", "other-process", "null", "bypass", "pass-through", "logging"]


def _run(call: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, raised


@pytest.mark.parametrize("read", list(READS))
@pytest.mark.parametrize("path", PATHS)
def test_silence_times_out_and_steady_writes_never_do(
    cache_dir: Path, path: str, read: str
) -> None:
    fake = FakeMonotonic()
    clock = ipc.Clock(monotonic=fake)
    with opened(path, cache_dir, clock) as p:
        got = Got()
        t, raised = _run(lambda: READS[read](p.cache, paced(p.orders), got, IDLE))
        try:
            if path != "other-process":  # (its first chunk is written already)
                p.orders.put("write")
            got.wait_for(len(CHUNK))
            if path == "bypass":  # not stored: no entry in flight to be seen
                assert isinstance(p.cache, streamcache.StreamCache)
                assert p.cache.peek(KEY) is None
            for step in range(2, STEPS + 2):  # slow but steady: never cut off
                fake.advance(0.6 * IDLE)
                p.orders.put("write")
                got.wait_for(step * len(CHUNK))
                assert not raised, raised
            # Silence: the call still waits after real seconds while its clock stands
            # still, and times out once the clock moves past idle_timeout.
            t.join(1.5)
            assert t.is_alive() and not raised, raised
            fake.advance(IDLE + 1)
            t.join(WAIT)
            assert not t.is_alive(), "the call did not time out after idle_timeout"
        finally:
            p.orders.put("write")
            p.orders.put("end")
        assert len(raised) == 1 and type(raised[0]) is TimeoutError, raised
        assert str(raised[0]) == IDLE_ERROR
        assert bytes(got.data) == CHUNK * (STEPS + 1)
        t.join(WAIT)


@pytest.mark.parametrize("read", list(READS))
def test_silence_times_out_on_the_system_clock(cache_dir: Path, read: str) -> None:
    """A producer in another process writes a chunk and then nothing: the reader gets
    the chunk, then TimeoutError after idle_timeout of real silence."""
    with opened("other-process", cache_dir, ipc.SYSTEM) as p:
        got = Got()
        t, raised = _run(lambda: READS[read](p.cache, paced(p.orders), got, 0.2))
        try:
            t.join(WAIT)
            assert not t.is_alive(), "the call did not time out after idle_timeout"
        finally:
            for _ in range(STEPS + 1):
                p.orders.put("write")
            p.orders.put("end")
        assert len(raised) == 1 and type(raised[0]) is TimeoutError, raised
        assert "idle_timeout" in str(raised[0])
        assert bytes(got.data) == CHUNK


def test_a_total_timeout_that_comes_first_keeps_its_own_error(cache_dir: Path) -> None:
    """idle_timeout is no total deadline, nor does it replace one: with a timeout that
    passes first, the call raises the timeout's error."""
    fake = FakeMonotonic()
    cache = streamcache.NullCache(clock=ipc.Clock(monotonic=fake))
    orders: queue.Queue[str] = queue.Queue()
    got = Got()

    def call() -> None:
        with cache.stream(KEY, paced(orders), timeout=IDLE / 2, idle_timeout=IDLE) as s:
            for chunk in s:
                got.add(chunk)

    t, raised = _run(call)
    try:
        orders.put("write")
        got.wait_for(len(CHUNK))
        fake.advance(IDLE + 1)
        t.join(WAIT)
        assert not t.is_alive()
    finally:
        orders.put("end")
    assert len(raised) == 1 and type(raised[0]) is TimeoutError
    assert "idle_timeout" not in str(raised[0])


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1"])
def test_a_bad_idle_timeout_is_refused_at_the_call(cache_dir: Path, bad: Any) -> None:
    def create(w: Writer) -> None:
        raise AssertionError("create ran")

    error = TypeError if isinstance(bad, str) else ValueError
    with streamcache.StreamCache(cache_dir, cleanup_interval=0, registry=None) as cache:
        for target in (cache, streamcache.NullCache(), streamcache.MinOccurrences(cache, 1, 60)):
            with pytest.raises(error, match="idle_timeout"):
                target.fetch(KEY, io.BytesIO(), create, idle_timeout=bad)
            with pytest.raises(error, match="idle_timeout"):
                target.stream(KEY, create, idle_timeout=bad)
            with pytest.raises(error, match="idle_timeout"):
                target.astream(KEY, create, idle_timeout=bad)
