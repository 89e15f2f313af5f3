"""LoggingCache logs ``created`` as "this call ran create", also for a call that failed.

Gitaly's Fetch returns created=true together with the error when its own create
failed; a LogEntry(key, created, error) must say the same. A call that failed on
somebody else's create did not create.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, FailingDst

import streamcache
from streamcache.base import CacheBase
from streamcache.entry.stream import Stream

INNER_KINDS = ["StreamCache", "NullCache", "new"]


def inner_of(kind: str, cache_dir: Path) -> CacheBase:
    if kind == "StreamCache":
        return streamcache.StreamCache(cache_dir)
    if kind == "NullCache":
        return streamcache.NullCache()
    # MinOccurrences(StreamCache): the first call bypasses the cache, the second creates
    return streamcache.new(streamcache.Config(dir=cache_dir, min_occurrences=1))


def failing(w: Any) -> None:
    w.write(b"partial")
    raise KeyError("no such pack")


def ok(w: Any) -> None:
    w.write(b"fine")


@pytest.mark.parametrize("timeout", [None, 10.0], ids=["no timeout", "timeout"])
@pytest.mark.parametrize("kind", INNER_KINDS)
def test_fetch_whose_own_create_failed_is_logged_created(
    cache_dir: Path, kind: str, timeout: float | None
) -> None:
    cache = streamcache.LoggingCache(inner_of(kind, cache_dir))
    try:
        errors = []
        for _ in range(2):  # new(): the bypassing call, then the cache's own
            with pytest.raises(streamcache.CreateError, match="KeyError") as info:
                cache.fetch("k", io.BytesIO(), failing, timeout=timeout)
            errors.append(info.value)
        # The failed entry left no trace: the next call creates (and logs created).
        assert cache.fetch("k", io.BytesIO(), ok, timeout=timeout) == (4, True)
        assert cache.entries == [
            streamcache.LogEntry("k", True, errors[0]),
            streamcache.LogEntry("k", True, errors[1]),
            streamcache.LogEntry("k", True, None),
        ]
    finally:
        cache.stop()


@pytest.mark.parametrize("kind", INNER_KINDS)
def test_fetch_whose_dst_failed_while_creating_is_logged_created(
    cache_dir: Path, kind: str
) -> None:
    """The creating fetch's own client went away: the call raised the dst's error, but
    it ran create (whether the entry is then kept for others is not the point here)."""
    cache = streamcache.LoggingCache(inner_of(kind, cache_dir))
    calls = 2 if kind == "new" else 1  # new(): the bypassing call, then the cache's own
    try:
        for _ in range(calls):
            with pytest.raises(ConnectionResetError):
                cache.fetch("k", FailingDst(ok=0), ok)
        assert [(e.key, e.created, type(e.error)) for e in cache.entries] == [
            ("k", True, ConnectionResetError)
        ] * calls
    finally:
        cache.stop()


def test_fetch_that_failed_on_another_calls_create_is_not_logged_created(
    cache_dir: Path,
) -> None:
    """A fetch that attached to an entry another call creates, and got that create's
    error, did not create."""
    inner = streamcache.StreamCache(cache_dir)
    cache = streamcache.LoggingCache(inner)
    gate = threading.Event()

    def fails_late(w: Any) -> None:
        w.write(b"first")
        if not gate.wait(WAIT):
            raise AssertionError("never released")
        raise KeyError("late")

    class Attached:
        """A dst that releases the creator once the first bytes reached it."""

        def write(self, b: bytes) -> int:
            gate.set()
            return len(b)

    try:
        with inner.stream("k", fails_late) as creator:  # another caller is creating
            with pytest.raises(streamcache.CreateError, match="KeyError") as info:
                cache.fetch("k", Attached(), ok, timeout=WAIT)
            with pytest.raises(streamcache.CreateError):
                creator.read()
        assert cache.entries == [streamcache.LogEntry("k", False, info.value)]
    finally:
        gate.set()
        inner.wait_producers(WAIT)
        cache.stop()


@pytest.mark.parametrize("kind", INNER_KINDS)
def test_stream_that_created_is_logged_created(cache_dir: Path, kind: str) -> None:
    """A stream is logged when opened; one whose create then fails was still created
    by this call (the error reaches its reader)."""
    cache = streamcache.LoggingCache(inner_of(kind, cache_dir))
    try:
        for _ in range(2):
            with cache.stream("k", failing, timeout=WAIT) as s:
                with pytest.raises(streamcache.CreateError, match="KeyError"):
                    s.read()
        assert [(e.key, e.created) for e in cache.entries] == [("k", True)] * 2
    finally:
        inner = getattr(cache.cache, "cache", cache.cache)
        if isinstance(inner, streamcache.StreamCache):
            inner.wait_producers(WAIT)
        cache.stop()


class CreatesThenFails(CacheBase):
    """A cache whose stream() and fetch() run create at once and raise its error, as
    NullCache.fetch does: the case where a stream call itself fails after creating."""

    def stream(self, key: str, create: Any, timeout: float | None = None) -> Stream:
        try:
            create(io.BytesIO())
        except Exception as exc:
            raise streamcache.CreateError(f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("create was expected to fail")

    def fetch(self, key: str, dst: Any, create: Any, timeout: float | None = None) -> Any:
        return self.stream(key, create, timeout)


def test_stream_call_that_failed_after_creating_is_logged_created() -> None:
    cache = streamcache.LoggingCache(CreatesThenFails())
    with pytest.raises(streamcache.CreateError) as in_stream:
        cache.stream("s", failing)
    with pytest.raises(streamcache.CreateError) as in_fetch:
        cache.fetch("f", io.BytesIO(), failing)
    assert cache.entries == [
        streamcache.LogEntry("s", True, in_stream.value),
        streamcache.LogEntry("f", True, in_fetch.value),
    ]


def test_a_call_refused_before_creating_is_not_logged_created(cache_dir: Path) -> None:
    cache = streamcache.LoggingCache(streamcache.StreamCache(cache_dir))
    with pytest.raises(TypeError):
        cache.fetch("k", io.BytesIO(), "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cache.fetch("k", io.BytesIO(), ok, timeout=-1)
    assert [(e.created, type(e.error)) for e in cache.entries] == [
        (False, TypeError),
        (False, ValueError),
    ]
    cache.stop()
