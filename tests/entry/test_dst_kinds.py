"""Every kind of ``dst`` docs/design.md's "Public API" allows, through every cache's fetch.

A dst is any object with ``write(bytes)``, or a ``socket.socket``. ``write`` may
return the count it took or None: None from a non-blocking ``io.RawIOBase`` means
"took nothing, would block", from anything else "took everything". A dst that takes
nothing never makes a call spin: it waits on its descriptor where there is one, else
backs off, and every wait ends at ``timeout``.

Each test fetches one key through StreamCache (a miss, then a hit), NullCache, and
``streamcache.new(cfg)`` (MinOccurrences: its first call runs create straight into
dst, the second is the StreamCache's miss, the third its hit), with and without a
timeout (without one, the creating fetch writes to dst from create's own thread), and
for an entry read whole on a hit (small) and one copied in chunks (large).
"""

from __future__ import annotations

import fcntl
import io
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, data_files

import streamcache
from streamcache.base import CacheBase

KiB = 1 << 10
SMALL = 40 * KiB  # a hit reads it whole: one write_all of the entry
LARGE = (1 << 20) + 7  # copied chunk by chunk (or with sendfile where dst has a descriptor)
KINDS = ["StreamCache", "NullCache", "new"]


def data_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def writer_of(data: bytes, chunk: int = 64 * KiB) -> Callable[[Any], None]:
    def create(w: Any) -> None:
        for i in range(0, len(data), chunk):
            w.write(data[i : i + chunk])

    return create


def cache_of(kind: str, cache_dir: Path) -> tuple[CacheBase, list[bool]]:
    """A cache of ``kind`` and the ``created`` of its successive fetches of one key."""
    if kind == "StreamCache":
        return streamcache.StreamCache(cache_dir), [True, False]
    if kind == "NullCache":
        return streamcache.NullCache(), [True, True]
    # min_occurrences=1: the first call bypasses the StreamCache, the second creates.
    cfg = streamcache.Config(dir=cache_dir, min_occurrences=1)
    return streamcache.new(cfg), [True, True, False]


def inner_stream_cache(cache: CacheBase) -> streamcache.StreamCache | None:
    if isinstance(cache, streamcache.StreamCache):
        return cache
    if isinstance(cache, streamcache.MinOccurrences):
        return inner_stream_cache(cache.cache)
    return None


def settle(cache: CacheBase) -> None:
    """Wait for the producers a fetch with a timeout may leave running; stop the cache."""
    sc = inner_stream_cache(cache)
    if sc is not None:
        assert sc.wait_producers(WAIT), "a producer is stuck"
    cache.stop()


# -- kinds of dst --------------------------------------------------------------------------


class NoneSink:
    """A hand-written sink whose write returns None (took everything), like Django's
    HttpResponse.write. No descriptor."""

    def __init__(self) -> None:
        self.got = bytearray()

    def write(self, b: bytes) -> None:
        self.got += b


class Drained:
    """The write end of a descriptor pair (``dst``), whose read end ``fd`` a thread
    drains until EOF; :meth:`received` closes the write end and returns what arrived."""

    def __init__(self, dst: Any, fd: int, close_dst: Callable[[], None]) -> None:
        self.dst = dst
        self._fd = fd
        self._close_dst = close_dst
        self._got = bytearray()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while chunk := os.read(self._fd, 64 * KiB):
            self._got += chunk

    def received(self) -> bytes:
        self._close_dst()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the drain thread saw no EOF"
        return bytes(self._got)

    def close(self) -> None:
        self._close_dst()
        self._thread.join(WAIT)
        os.close(self._fd)


def nonblocking_raw_pipe() -> Drained:
    """An ``io.FileIO`` on a non-blocking pipe of one page: its write returns None
    whenever the pipe is full (an io.RawIOBase saying "would block")."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    raw = io.FileIO(w, "wb")
    assert isinstance(raw, io.RawIOBase)
    return Drained(raw, r, raw.close)


def socket_pair(blocking: bool) -> Drained:
    """One end of a connected socket pair (small buffers, so sends would block)."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.setblocking(blocking)
    fd = os.dup(b.fileno())
    b.close()

    def close() -> None:
        if a.fileno() >= 0:
            a.shutdown(socket.SHUT_WR)
            a.close()

    return Drained(a, fd, close)


DST_KINDS: dict[str, Callable[[], Drained]] = {
    "raw non-blocking pipe": nonblocking_raw_pipe,
    "blocking socket": lambda: socket_pair(True),
    "non-blocking socket": lambda: socket_pair(False),
}


# -- bytes arrive whole --------------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("timeout", [None, 10.0], ids=["no timeout", "timeout"])
@pytest.mark.parametrize("kind", KINDS)
def test_write_returning_none_took_everything(
    cache_dir: Path, kind: str, timeout: float | None, size: int
) -> None:
    """A dst whose write returns None (and has no descriptor) gets every byte once, on
    a miss and on a hit (it used to raise BlockingIOError: "would block")."""
    data = data_of(size)
    cache, created = cache_of(kind, cache_dir)
    try:
        for expected in created:
            sink = NoneSink()
            res = cache.fetch("k", sink, writer_of(data), timeout=timeout)
            assert res == (size, expected)
            assert bytes(sink.got) == data
    finally:
        settle(cache)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("timeout", [None, 10.0], ids=["no timeout", "timeout"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dst_kind", list(DST_KINDS))
def test_descriptor_dst_that_would_block(
    cache_dir: Path, dst_kind: str, kind: str, timeout: float | None, size: int
) -> None:
    """A non-blocking raw pipe writer (write returns None when full) and connected
    sockets, blocking or not, with a thread draining the other end: every byte arrives
    once, in order (a socket used to be refused: it has no write method)."""
    data = data_of(size)
    cache, created = cache_of(kind, cache_dir)
    try:
        for expected in created:
            pair = DST_KINDS[dst_kind]()
            try:
                res = cache.fetch("k", pair.dst, writer_of(data), timeout=timeout)
                assert res == (size, expected)
                assert pair.received() == data
            finally:
                pair.close()
    finally:
        settle(cache)


def test_a_socket_is_a_dst_but_not_any_object(cache_dir: Path) -> None:
    a, b = socket.socketpair()
    with a, b, streamcache.StreamCache(cache_dir) as cache:
        assert cache.fetch("k", a, writer_of(b"hello")) == (5, True)
        assert b.recv(16) == b"hello"
        for bad in (object(), b"bytes", 3):
            with pytest.raises(TypeError, match="dst"):
                cache.fetch("k", bad, writer_of(b"x"))
            with pytest.raises(TypeError, match="dst"):
                streamcache.NullCache().fetch("k", bad, writer_of(b"x"))


# -- a dst that takes nothing --------------------------------------------------------------


class ZeroSink:
    """Takes nothing: write returns 0 (until ``stop`` is set: then it raises, so that a
    call spinning on it, on code with that bug, ends once the test is over).

    With ``fd``, it says it writes to that descriptor (a full pipe)."""

    def __init__(self, fd: int | None = None) -> None:
        self.calls = 0
        self.stop = threading.Event()
        self._fd = fd
        if fd is not None:
            self.fileno = lambda: fd

    def write(self, b: bytes) -> int:
        self.calls += 1
        if self.stop.is_set():
            raise RuntimeError("the test is over")
        return 0


@pytest.fixture
def full_pipe() -> Iterator[int]:
    """The write end of a non-blocking pipe that is full and that nobody reads."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"\0" * 4096)
    except BlockingIOError:
        pass
    yield w
    os.close(w)
    os.close(r)


def fetch_in_thread(cache: CacheBase, dst: ZeroSink, data: bytes, timeout: float | None) -> Any:
    """Run one fetch in a thread; return (outcome, wall seconds, that thread's CPU
    seconds). A fetch that does not end within WAIT fails the test."""
    out: dict[str, Any] = {}

    def run() -> None:
        t0, c0 = time.monotonic(), time.thread_time()
        try:
            out["result"] = cache.fetch("k", dst, writer_of(data), timeout=timeout)
        except BaseException as exc:
            out["result"] = exc
        out["wall"], out["cpu"] = time.monotonic() - t0, time.thread_time() - c0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT)
    try:
        assert not t.is_alive(), f"the fetch did not end ({dst.calls} writes that took nothing)"
    finally:
        dst.stop.set()
        t.join(WAIT)
    return out["result"], out["wall"], out["cpu"]


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("descriptor", [False, True], ids=["no descriptor", "full pipe"])
@pytest.mark.parametrize("kind", KINDS)
def test_dst_taking_nothing_times_out_without_spinning(
    cache_dir: Path, full_pipe: int, kind: str, descriptor: bool, size: int
) -> None:
    """A dst whose write returns 0 forever: each fetch (a miss, a hit; for new(cfg) also
    its first, bypassing call) raises TimeoutError at its timeout, and the fetching
    thread sleeps meanwhile (its CPU time is a small part of the wall time). It used to
    spin at 100% CPU forever."""
    timeout = 0.5
    data = data_of(size)
    cache, created = cache_of(kind, cache_dir)
    try:
        for i in range(len(created)):
            if i == len(created) - 1 and inner_stream_cache(cache) is not None:
                settle(cache)  # whatever the timed-out miss left, the last call is a hit:
                cache.fetch("k", io.BytesIO(), writer_of(data))  # (re)made here if failed
            dst = ZeroSink(full_pipe if descriptor else None)
            result, wall, cpu = fetch_in_thread(cache, dst, data, timeout)
            assert isinstance(result, TimeoutError), repr(result)
            assert timeout * 0.9 <= wall <= timeout + 5, wall
            assert cpu < 0.25 * wall, f"{cpu:.3f} s of CPU in {wall:.3f} s: it spun"
    finally:
        settle(cache)


@pytest.mark.parametrize("kind", KINDS)
def test_dst_taking_nothing_for_a_while_without_timeout(cache_dir: Path, kind: str) -> None:
    """Without a timeout, a dst that takes nothing for 0.3 s and then takes everything:
    the fetch waits with a bounded back-off (a few dozen attempts, little CPU), not a
    spin, and every byte arrives."""
    data = data_of(SMALL)
    refuse_for = 0.3

    class LateSink:
        def __init__(self) -> None:
            self.refused = 0
            self.first: float | None = None
            self.got = bytearray()

        def write(self, b: bytes) -> int:
            now = time.monotonic()
            if self.first is None:
                self.first = now
            if now - self.first < refuse_for:
                self.refused += 1
                return 0
            self.got += b
            return len(b)

    cache, created = cache_of(kind, cache_dir)
    try:
        for expected in created:
            sink = LateSink()
            c0 = time.thread_time()
            assert cache.fetch("k", sink, writer_of(data)) == (len(data), expected)
            cpu = time.thread_time() - c0
            assert bytes(sink.got) == data
            # 0.1 ms doubling to 50 ms: about 10 attempts to reach 50 ms, then 20 a second.
            assert 0 < sink.refused < 100, f"{sink.refused} attempts in {refuse_for} s: a spin"
            assert cpu < refuse_for / 2, f"{cpu:.3f} s of CPU while refused"
    finally:
        settle(cache)
    if kind == "new":
        assert data_files(cache_dir), "the later calls went to the StreamCache"
