"""A call's timeout is a reading of its cache's injected clock (docs/design.md,
"Semantics kept from Gitaly": time is injected).

Each case starts a call whose create (in a thread, or in another process) stops after
its first bytes, on a fake monotonic clock that moves only when the test moves it, and
with a timeout of a tenth of a second on it. Once the create has started, real
seconds pass (many times the timeout) with the fake clock standing still: the call
must still be waiting, so real time did not end it. Then the test moves the fake
clock past the timeout: the call must raise TimeoutError, so the fake clock did. The
same cases run on the system clock with a short real timeout. Every path that waits
is covered: a reader of the entry in flight (a thread's wait on the futex, the hub's
for astream), a reader of another process's entry, the in-process queue of NullCache
and of MinOccurrences' pass-through, and a dst that takes nothing (poll on its
socket, the back-off without a descriptor).
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, FakeMonotonic, recv

import ipc
import streamcache
from streamcache import CacheBase, MinOccurrences, NullCache, StreamCache

pytestmark = pytest.mark.timeout(120)

FAKE_TIMEOUT = 0.1  # the fake clock's cases: seconds on the fake clock
STILL = 1.5  # real seconds the fake clock stands still: 15 times the timeout
REAL_TIMEOUT = 0.3  # the system clock's cases: a real timeout that does pass
KEY = "clock-key"


class Gate:
    """A create that writes its first bytes, then waits for the test's release."""

    def __init__(self) -> None:
        self.ran = threading.Event()
        self.release = threading.Event()

    def create(self, w: Any) -> None:
        self.ran.set()
        w.write(b"first")
        self.release.wait(WAIT)
        w.write(b"rest")


class _Signalling(io.BytesIO):
    """fetch's dst: sets ``got`` at the first bytes."""

    def __init__(self, got: threading.Event) -> None:
        super().__init__()
        self._got = got

    def write(self, data: Any) -> int:
        self._got.set()
        return super().write(data)


# Each call sets ``got`` once it has the entry's first bytes (its deadline is taken by
# then), and reads on until the end or its timeout.
def _fetch(cache: CacheBase, create: Any, timeout: float, got: threading.Event) -> object:
    return cache.fetch(KEY, _Signalling(got), create, timeout)


def _read_stream(cache: CacheBase, create: Any, timeout: float, got: threading.Event) -> object:
    with cache.stream(KEY, create, timeout) as s:
        first = s.read(5)
        got.set()
        return first + s.read()


def _read_astream(cache: CacheBase, create: Any, timeout: float, got: threading.Event) -> object:
    async def read() -> bytes:
        async with cache.astream(KEY, create, timeout) as s:
            first = await s.read(5)
            got.set()
            return first + await s.read()

    return asyncio.run(read())


Call = Callable[[CacheBase, Any, float, threading.Event], object]
CALLS: dict[str, Call] = {"fetch": _fetch, "stream": _read_stream, "astream": _read_astream}


def _call_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.fixture(params=["fake", "system"])
def clocked(request: pytest.FixtureRequest) -> tuple[ipc.Clock, FakeMonotonic | None, float]:
    """(clock, its fake monotonic or None, the calls' timeout)."""
    if request.param == "system":
        return ipc.SYSTEM, None, REAL_TIMEOUT
    fake = FakeMonotonic(start=0.0)
    return ipc.Clock(monotonic=fake), fake, FAKE_TIMEOUT


def _expect_timeout(
    call: Callable[[], object], got: threading.Event, fake: FakeMonotonic | None
) -> None:
    """Run ``call`` in a thread. With a ``fake`` clock: once the call ``got`` its first
    bytes, it must still wait after :data:`STILL` real seconds, and end once ``fake``
    moves past its timeout. On the system clock it ends by itself. Either way it must
    end with TimeoutError, within real seconds."""
    t, out = _call_in_thread(call)
    if fake is not None:
        assert got.wait(WAIT), f"the call never got its first bytes: {out}"
        t.join(STILL)
        assert t.is_alive(), f"the call ended while its clock stood still: {out}"
        fake.advance(FAKE_TIMEOUT + 1)
    t.join(WAIT)
    assert not t.is_alive(), "the call did not end when its clock passed its timeout"
    assert len(out) == 1 and isinstance(out[0], TimeoutError), out


@pytest.fixture
def cache(
    cache_dir: Path, clocked: tuple[ipc.Clock, FakeMonotonic | None, float]
) -> Iterator[StreamCache]:
    c = StreamCache(cache_dir, clock=clocked[0], cleanup_interval=0, registry=None)
    yield c
    c.stop()


@pytest.mark.parametrize("how", list(CALLS))
def test_a_reader_of_an_entry_in_flight_times_out_on_the_cache_clock(
    cache: StreamCache, clocked: tuple[ipc.Clock, FakeMonotonic | None, float], how: str
) -> None:
    """The entry's producer runs in a thread of this process."""
    _, fake, timeout = clocked
    gate, got = Gate(), threading.Event()
    try:
        _expect_timeout(lambda: CALLS[how](cache, gate.create, timeout, got), got, fake)
    finally:
        gate.release.set()
    assert cache.wait_producers(None)


def _child_streams(dir: str, started: Any, release: Any, conn: Any) -> None:
    """Create the entry (a reader of it here, its producer in a thread) and keep it in
    flight until released."""
    cache = StreamCache(dir, cleanup_interval=0, registry=None)

    def create(w: Any) -> None:
        w.write(b"first")
        started.set()
        release.wait(WAIT)
        w.write(b"rest")

    try:
        with cache.stream(KEY, create) as s:
            conn.send(s.read())
    finally:
        cache.stop()


@pytest.mark.parametrize("how", list(CALLS))
def test_a_reader_of_another_process_entry_times_out_on_the_cache_clock(
    cache: StreamCache,
    cache_dir: Path,
    clocked: tuple[ipc.Clock, FakeMonotonic | None, float],
    spawn: multiprocessing.context.SpawnContext,
    how: str,
) -> None:
    """The entry's producer runs in another process (on the system clock)."""
    _, fake, timeout = clocked
    started, release = spawn.Event(), spawn.Event()
    parent, child = spawn.Pipe()
    proc = spawn.Process(target=_child_streams, args=(str(cache_dir), started, release, child))
    proc.start()
    gate, got = Gate(), threading.Event()
    gate.release.set()
    try:
        # A spawned child's start-up (an interpreter, the imports) took over 20 s at
        # load 58: the bound on it is a hang's, not the wait's.
        assert started.wait(10 * WAIT), "the child's create never started"
        _expect_timeout(lambda: CALLS[how](cache, gate.create, timeout, got), got, fake)
        assert not gate.ran.is_set(), "the call created instead of attaching"
    finally:
        release.set()
    assert recv(parent) == b"firstrest"
    proc.join(WAIT)
    assert proc.exitcode == 0


@pytest.mark.parametrize("how", ["stream", "astream"])
@pytest.mark.parametrize("kind", ["NullCache", "MinOccurrences pass-through"])
def test_a_reader_of_an_uncached_create_times_out_on_the_cache_clock(
    cache: StreamCache,
    clocked: tuple[ipc.Clock, FakeMonotonic | None, float],
    kind: str,
    how: str,
) -> None:
    """The in-process queue: NullCache(clock=...), and MinOccurrences' pass-through,
    which reads its wrapped cache's clock."""
    clock, fake, timeout = clocked
    target: CacheBase
    target = NullCache(clock=clock) if kind == "NullCache" else MinOccurrences(cache, 1, 60)
    gate, got = Gate(), threading.Event()
    try:
        _expect_timeout(lambda: CALLS[how](target, gate.create, timeout, got), got, fake)
    finally:
        gate.release.set()


class _TakesNothing:
    """A dst without a descriptor that never takes a byte: the back-off path."""

    def write(self, data: bytes) -> int:
        return 0


@pytest.mark.parametrize("dst_kind", ["socket", "no descriptor"])
def test_a_write_to_a_dst_that_takes_nothing_times_out_on_the_cache_clock(
    clocked: tuple[ipc.Clock, FakeMonotonic | None, float], dst_kind: str
) -> None:
    """NullCache's fetch writes from create's own call: poll on the socket's
    descriptor, or the back-off of a dst without one."""
    clock, fake, timeout = clocked
    got = threading.Event()

    def create(w: Any) -> None:
        got.set()  # the fetch's deadline is taken before create runs
        for _ in range(1024):  # far more than a socket buffer holds
            w.write(b"x" * 65536)

    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        dst: Any = a if dst_kind == "socket" else _TakesNothing()
        cache = NullCache(clock=clock)
        _expect_timeout(lambda: cache.fetch(KEY, dst, create, timeout), got, fake)


def test_a_nullcache_takes_only_an_ipc_clock() -> None:
    with pytest.raises(TypeError, match=r"ipc\.Clock"):
        NullCache(clock=lambda: 0.0)  # type: ignore[arg-type]
    assert streamcache.NullCache()._clock is ipc.SYSTEM
