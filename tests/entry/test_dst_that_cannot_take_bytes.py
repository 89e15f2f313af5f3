"""A dst that cannot take bytes (a text-mode file, a file opened only for reading) is a
TypeError at the call that says what is wrong, on every cache, with and without a
timeout; create never runs. Every dst that can take bytes is still accepted."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import WAIT, data_files

import streamcache
from streamcache.base import CacheBase

CACHE_KINDS = ["StreamCache", "new", "MinOccurrences(1)", "NullCache", "LoggingCache"]
TIMEOUTS = [None, WAIT]


def cache_of(kind: str, cache_dir: Path) -> CacheBase:
    if kind == "StreamCache":
        return streamcache.StreamCache(cache_dir)
    if kind == "new":
        return streamcache.new(streamcache.Config(dir=cache_dir))
    if kind == "MinOccurrences(1)":  # its first request runs create straight into dst
        return streamcache.MinOccurrences(streamcache.StreamCache(cache_dir), 1, 60)
    if kind == "NullCache":
        return streamcache.NullCache()
    assert kind == "LoggingCache"
    return streamcache.LoggingCache(streamcache.StreamCache(cache_dir))


class Create:
    def __init__(self, data: bytes = b"payload") -> None:
        self.data = data
        self.runs = 0

    def __call__(self, w: Any) -> None:
        self.runs += 1
        w.write(self.data)


BAD_DSTS: dict[str, tuple[Callable[[Path], IO[Any]], str]] = {
    "text file": (lambda p: open(p, "w"), "text"),  # noqa: SIM115
    "text file for reading": (lambda p: open(p), "text"),  # noqa: SIM115
    "StringIO": (lambda p: io.StringIO(), "text"),
    "binary file for reading": (lambda p: open(p, "rb"), "not open for writing"),  # noqa: SIM115
    "raw file for reading": (
        lambda p: open(p, "rb", buffering=0),  # noqa: SIM115
        "not open for writing",
    ),
}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "out"
    path.write_bytes(b"")
    yield path


@pytest.mark.parametrize("timeout", TIMEOUTS, ids=["no timeout", "timeout"])
@pytest.mark.parametrize("kind", CACHE_KINDS)
@pytest.mark.parametrize("bad", list(BAD_DSTS))
def test_dst_that_cannot_take_bytes_is_type_error_at_the_call(
    cache_dir: Path, target: Path, kind: str, bad: str, timeout: float | None
) -> None:
    opener, says = BAD_DSTS[bad]
    create = Create()
    with cache_of(kind, cache_dir) as cache, opener(target) as dst:
        with pytest.raises(TypeError, match=says):
            cache.fetch("k", dst, create, timeout)
        assert create.runs == 0
        if isinstance(cache, streamcache.LoggingCache):
            assert [e.created for e in cache.entries] == [False]
    assert target.read_bytes() == b""
    assert data_files(cache_dir) == []


class WriteOnly:
    """A hand-written sink: only write(), returning None."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> None:
        self.data += b


class DjangoLike(WriteOnly):
    """Like Django's HttpResponse: writable() says True, write() returns None."""

    def writable(self) -> bool:
        return True


@pytest.mark.parametrize("timeout", TIMEOUTS, ids=["no timeout", "timeout"])
@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_dsts_that_take_bytes_are_accepted(
    cache_dir: Path, target: Path, kind: str, timeout: float | None
) -> None:
    data = b"x" * 100_000
    with cache_of(kind, cache_dir) as cache:
        for i, dst in enumerate([io.BytesIO(), WriteOnly(), DjangoLike()]):
            assert cache.fetch(f"k{i}", dst, Create(data), timeout).written == len(data)
            got = dst.getvalue() if isinstance(dst, io.BytesIO) else bytes(dst.data)
            assert got == data
        for j, mode in enumerate(["wb", "ab", "r+b"]):
            target.write_bytes(b"")
            with open(target, mode, buffering=0 if j == 1 else -1) as f:
                assert cache.fetch(f"f{j}", f, Create(data), timeout).written == len(data)
            assert target.read_bytes() == data
        a, b = socket.socketpair()
        with a, b:
            assert cache.fetch("sock", a, Create(b"hello"), timeout).written == 5
            assert b.recv(16) == b"hello"
        settle = getattr(getattr(cache, "cache", cache), "wait_producers", None)
        if settle is not None:
            assert settle(WAIT)
