"""One contract on every path: whichever way a call goes (an entry of StreamCache,
NullCache, a miss that bypasses the budget, MinOccurrences' pass-through, LoggingCache)
and whichever way it is read (fetch into a BytesIO or a socket, stream iteration,
``read(n)``, ``readinto``, astream), the same create gives the same bytes or the same
error; a stream that raised a failure raises it again on every later read, and a
failed call stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import re
import socket
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import WAIT, writing
from procs.budget import bypasses

import streamcache
from streamcache import Create, CreateError, Writer

KEY = "k"
# Odd sizes, more than one read's worth (see pipe.CHUNK), so that reads split writes.
HEAD = bytes(range(256)) * 300 + b"head"
TAIL = b"tail" * 50_001
PLAIN = HEAD + TAIL
SMALL = 777  # read(n) and readinto with a small n


class Boom(Exception):
    pass


def plain(w: Writer) -> None:
    w.write(HEAD)
    w.write(TAIL)


def empty_writes(w: Writer) -> None:
    w.write(b"")
    w.write(HEAD)
    w.write(b"")
    w.write(bytearray())
    w.write(memoryview(b""))
    w.write(TAIL)
    w.write(b"")


def bytes_like(w: Writer) -> None:
    w.write(bytearray(HEAD))
    w.write(memoryview(TAIL)[:7])
    w.write(memoryview(TAIL)[7:])


def generator(w: Writer) -> Iterator[bytes | bytearray | memoryview]:
    yield b""
    yield HEAD
    yield bytearray(b"")
    yield memoryview(TAIL)[:100]
    yield bytearray(TAIL[100:])


def returns_a_list(w: Writer) -> list[bytes]:
    w.write(HEAD)
    return [TAIL]


def returns_int(w: Writer) -> int:
    w.write(HEAD)
    return w.write(TAIL)


def returns_bytes(w: Writer) -> bytes:
    w.write(HEAD)
    return TAIL


def raises_after_bytes(w: Writer) -> None:
    w.write(HEAD)
    raise Boom("create failed after some bytes")


def generator_raises_after_bytes(w: Writer) -> Iterator[bytes]:
    yield HEAD
    raise Boom("create failed after some bytes")


async def async_def(w: Writer) -> None:
    w.write(HEAD)


def short_of_its_size(w: Writer) -> None:
    w.set_size(len(PLAIN) + 1)
    w.write(HEAD)
    w.write(TAIL)


@dataclass(frozen=True)
class Script:
    create: Create
    error: str | None = None  # None: gives PLAIN; else a CreateError whose text matches


SCRIPTS = {
    "plain": Script(plain),
    "empty-writes": Script(empty_writes),
    "bytes-like": Script(bytes_like),
    "generator": Script(generator),
    "returns-a-list": Script(returns_a_list),
    # mypy refuses these two (bytes are no iterable of chunks): the error is for
    # callers without a type checker.
    "returns-int": Script(returns_int, r"\bnot int\b"),  # type: ignore[arg-type]
    "returns-bytes": Script(returns_bytes, r"\bnot bytes\b"),  # type: ignore[arg-type]
    "raises-after-bytes": Script(raises_after_bytes, "Boom: create failed after some bytes"),
    "generator-raises": Script(generator_raises_after_bytes, "Boom: create failed"),
    "short-of-set-size": Script(short_of_its_size, "size"),
    "async-def": Script(async_def, r"\bnot coroutine\b"),  # type: ignore[arg-type]
}
FAILING = [name for name, script in SCRIPTS.items() if script.error is not None]

PATHS = ["entry", "null", "bypass", "pass-through", "logging"]


@contextlib.contextmanager
def opened(path: str, cache_dir: Path) -> Iterator[streamcache.CacheBase]:
    """The cache whose first call for KEY goes the way ``path`` names; afterwards,
    checks that it went that way."""
    if path == "null":
        yield streamcache.NullCache()
        return
    if path == "bypass":
        with _budget_in_flight(cache_dir) as cache:
            before = bypasses(cache)
            yield cache
            assert bypasses(cache) > before, "the call did not bypass the cache"
            assert cache.peek(KEY) is None
        return
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    try:
        if path == "entry":
            yield cache
        elif path == "pass-through":
            yield streamcache.MinOccurrences(cache, 1, 60.0)
        else:
            assert path == "logging"
            logging = streamcache.LoggingCache(cache)
            yield logging
            assert logging.entries and logging.entries[0].created
    finally:
        assert cache.wait_producers(WAIT)
        cache.stop()


@contextlib.contextmanager
def _budget_in_flight(cache_dir: Path) -> Iterator[streamcache.StreamCache]:
    """A cache whose whole budget (1 byte) an entry in flight holds: every miss of
    another key bypasses it."""
    cache = streamcache.StreamCache(cache_dir, max_bytes=1, cleanup_interval=0)
    wrote, go = threading.Event(), threading.Event()

    def hold(w: Writer) -> None:
        w.write(b"h")
        wrote.set()
        if not go.wait(WAIT):
            raise TimeoutError("the test never let the entry finish")

    held = cache.stream("held", hold, timeout=WAIT)
    try:
        assert wrote.wait(WAIT)
        yield cache
    finally:
        go.set()
        assert held.read() == b"h"
        held.close()
        assert cache.wait_producers(WAIT)
        cache.stop()


# -- the reads: each returns the bytes it got, or raises what the call raised ---------


def fetch_bytesio(cache: streamcache.CacheBase, create: Create) -> bytes:
    out = io.BytesIO()
    res = cache.fetch(KEY, out, create)
    assert res == (len(out.getvalue()), True)
    return out.getvalue()


def fetch_with_timeout(cache: streamcache.CacheBase, create: Create) -> bytes:
    out = io.BytesIO()
    res = cache.fetch(KEY, out, create, timeout=WAIT)
    assert res == (len(out.getvalue()), True)
    return out.getvalue()


def fetch_socket(cache: streamcache.CacheBase, create: Create) -> bytes:
    a, b = socket.socketpair()
    got = bytearray()

    def drain() -> None:
        while data := b.recv(1 << 16):
            got.extend(data)

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        with a:
            res = cache.fetch(KEY, a, create)
            a.shutdown(socket.SHUT_WR)
    finally:
        with contextlib.suppress(OSError):
            a.close()
        drainer.join(WAIT)
        assert not drainer.is_alive()
        b.close()
    assert res == (len(got), True)
    return bytes(got)


def stream_iteration(cache: streamcache.CacheBase, create: Create) -> bytes:
    with cache.stream(KEY, create, timeout=WAIT) as s:
        assert s.created
        return b"".join(s)


def stream_read_small(cache: streamcache.CacheBase, create: Create) -> bytes:
    parts = []
    with cache.stream(KEY, create, timeout=WAIT) as s:
        assert s.created
        while chunk := s.read(SMALL):
            assert len(chunk) <= SMALL
            parts.append(chunk)
    return b"".join(parts)


def stream_readinto(cache: streamcache.CacheBase, create: Create) -> bytes:
    got = bytearray()
    buf = bytearray(SMALL)
    with cache.stream(KEY, create, timeout=WAIT) as s:
        assert s.created
        while n := s.readinto(buf):
            got += buf[:n]
    return bytes(got)


def astream(cache: streamcache.CacheBase, create: Create) -> bytes:
    async def main() -> bytes:
        parts = []
        async with cache.astream(KEY, create, timeout=WAIT) as s:
            assert s.created
            async for chunk in s:
                parts.append(chunk)
        return b"".join(parts)

    return asyncio.run(main())


READS: dict[str, Callable[[streamcache.CacheBase, Create], bytes]] = {
    "fetch": fetch_bytesio,
    "fetch-timeout": fetch_with_timeout,
    "fetch-socket": fetch_socket,
    "iterate": stream_iteration,
    "read-n": stream_read_small,
    "readinto": stream_readinto,
    "astream": astream,
}


@pytest.mark.parametrize("read", list(READS))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_the_same_create_gives_the_same_bytes_or_error_on_every_path(
    cache_dir: Path, script: str, path: str, read: str
) -> None:
    s = SCRIPTS[script]
    with opened(path, cache_dir) as cache:
        if s.error is None:
            assert READS[read](cache, s.create) == PLAIN
            return
        with pytest.raises(CreateError, match=s.error):
            READS[read](cache, s.create)
        # Nothing stored: the next call with a correct create gets the correct bytes.
        out = io.BytesIO()
        assert cache.fetch(KEY, out, writing(PLAIN)) == (len(PLAIN), True)
        assert out.getvalue() == PLAIN


def _raises_again(read: Callable[[], object], what: str) -> None:
    try:
        got = read()
    except CreateError:
        return
    raise AssertionError(f"{what} after the failure gave {got!r:.40}, not the CreateError")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("script", FAILING)
def test_a_failure_is_raised_by_every_later_read_of_the_stream(
    cache_dir: Path, script: str, path: str
) -> None:
    s = SCRIPTS[script]
    with opened(path, cache_dir) as cache:
        with cache.stream(KEY, s.create, timeout=WAIT) as st:
            with pytest.raises(CreateError, match=s.error):
                st.read()
            _raises_again(st.read, "read()")
            _raises_again(lambda: st.read(SMALL), "read(n)")
            _raises_again(lambda: st.readinto(bytearray(SMALL)), "readinto")
            _raises_again(lambda: next(st), "next()")
            _raises_again(st.read, "read() once more")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("script", FAILING)
def test_a_failure_is_raised_by_every_later_read_of_the_astream(
    cache_dir: Path, script: str, path: str
) -> None:
    s = SCRIPTS[script]

    async def main() -> list[str]:
        raised = []
        async with cache.astream(KEY, s.create, timeout=WAIT) as st:
            with pytest.raises(CreateError, match=s.error):
                await st.read()

            async def read_n() -> bytes:
                return await st.read(SMALL)

            reads: list[tuple[str, Callable[[], Awaitable[bytes]]]] = [
                ("read()", st.read),
                ("read(n)", read_n),
                ("anext", st.__anext__),
                ("read() once more", st.read),
            ]
            for what, read in reads:
                try:
                    got = await read()
                except CreateError:
                    raised.append(what)
                else:
                    raise AssertionError(f"{what} after the failure gave {got!r:.40}")
        return raised

    with opened(path, cache_dir) as cache:
        assert len(asyncio.run(main())) == 4


def test_a_returned_value_is_named_in_the_error(cache_dir: Path) -> None:
    """The error says what create returned, with a hint for ``return w.write(...)``."""
    with (
        opened("null", cache_dir) as cache,
        pytest.raises(CreateError, match=re.escape("the count w.write returned?")),
    ):
        cache.fetch(KEY, io.BytesIO(), returns_int)  # type: ignore[arg-type]


def test_an_async_create_is_refused_without_a_never_awaited_warning(cache_dir: Path) -> None:
    """create runs in a thread: an ``async def`` create is an error that says so, and
    its coroutine is closed, not left to warn when it is collected."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with (
            opened("null", cache_dir) as cache,
            pytest.raises(CreateError, match="make it a plain def"),
        ):
            cache.fetch(KEY, io.BytesIO(), async_def)  # type: ignore[arg-type]
        gc.collect()
    assert [w.message for w in seen if issubclass(w.category, RuntimeWarning)] == []


# -- a total timeout, while create is alive and still writing -------------------------

SHORT = 0.5  # the calls' total timeout: create goes on writing long after it


def _fetch_timed(cache: streamcache.CacheBase, create: Create) -> object:
    return cache.fetch(KEY, io.BytesIO(), create, timeout=SHORT)


def _stream_timed(cache: streamcache.CacheBase, create: Create) -> object:
    with cache.stream(KEY, create, timeout=SHORT) as s:
        return s.read()


def _astream_timed(cache: streamcache.CacheBase, create: Create) -> object:
    async def main() -> bytes:
        async with cache.astream(KEY, create, timeout=SHORT) as s:
            return await s.read()

    return asyncio.run(main())


TIMED: dict[str, Callable[[streamcache.CacheBase, Create], object]] = {
    "fetch": _fetch_timed,
    "stream": _stream_timed,
    "astream": _astream_timed,
}


@pytest.mark.parametrize("read", list(TIMED))
@pytest.mark.parametrize("path", PATHS)
def test_a_total_timeout_ends_the_call_while_create_still_writes(
    cache_dir: Path, path: str, read: str
) -> None:
    """A create that is alive and writes a byte every 10 ms (so no idle bound trips)
    for up to WAIT: every call with a total timeout raises TimeoutError while create is
    still at it. A fetch on the NullCache and bypass paths once ran create in the
    caller's thread and returned only when create did, whatever its timeout."""
    stop, ran_out, ended = threading.Event(), threading.Event(), threading.Event()

    def trickle(w: Writer) -> None:
        try:
            w.write(HEAD)
            give_up = time.monotonic() + WAIT
            while not stop.is_set():
                if time.monotonic() >= give_up:
                    ran_out.set()
                    return
                w.write(b"x")
                stop.wait(0.01)
        finally:
            ended.set()

    with opened(path, cache_dir) as cache:
        try:
            with pytest.raises(TimeoutError):
                TIMED[read](cache, trickle)
            # (create may have ended already: on the cached paths a write after the
            # timed-out reader left finds no reader and raises; only running out of
            # time shows that the call waited for it)
            assert not ran_out.is_set(), "the call waited for create to end"
        finally:
            stop.set()
        assert ended.wait(WAIT)
        if path == "bypass":
            # A call that timed out counts as an error, not a bypass: the next one shows
            # the budget is still held (the harness checks the path by that count).
            out = io.BytesIO()
            assert cache.fetch(KEY, out, writing(PLAIN)) == (len(PLAIN), True)
            assert out.getvalue() == PLAIN
