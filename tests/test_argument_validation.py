"""Bad values fail at the call that takes them, with the argument's name (docs/design.md,
"Public API"): a timeout that is negative, NaN or infinite (None means no deadline), an
infinite or NaN max_age, liveness or min_age, a Config without a usable dir. A huge
but finite timeout is effectively no deadline and must work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import fcntl
import io
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, data_files

import streamcache
from streamcache.base import CacheBase

BAD_TIMEOUTS = [math.inf, -math.inf, math.nan, -1, -0.001]
HUGE_TIMEOUTS = [1e30, sys.float_info.max, 10**400, 10**12]
CACHE_KINDS = [
    "StreamCache",
    "MinOccurrences",
    "new",
    "NullCache",
    "LoggingCache(StreamCache)",
    "LoggingCache(NullCache)",
]


def cache_of(kind: str, cache_dir: Path) -> CacheBase:
    if kind == "StreamCache":
        return streamcache.StreamCache(cache_dir)
    if kind == "MinOccurrences":
        return streamcache.MinOccurrences(streamcache.StreamCache(cache_dir), 1, 60)
    if kind == "new":
        return streamcache.new(streamcache.Config(dir=cache_dir))
    if kind == "NullCache":
        return streamcache.NullCache()
    if kind == "LoggingCache(StreamCache)":
        return streamcache.LoggingCache(streamcache.StreamCache(cache_dir))
    assert kind == "LoggingCache(NullCache)"
    return streamcache.LoggingCache(streamcache.NullCache())


def inner_stream_cache(cache: CacheBase) -> streamcache.StreamCache | None:
    if isinstance(cache, streamcache.StreamCache):
        return cache
    inner = getattr(cache, "cache", None)
    return inner_stream_cache(inner) if isinstance(inner, CacheBase) else None


class Create:
    """A create that records whether it ran."""

    def __init__(self, data: bytes = b"data") -> None:
        self.data = data
        self.ran = threading.Event()

    def __call__(self, w: Any) -> None:
        self.ran.set()
        w.write(self.data)


# -- timeouts ------------------------------------------------------------------------------


def call(cache: CacheBase, method: str, create: Create, timeout: Any) -> Any:
    """Make the call; for astream only the call itself (not entering it)."""
    if method == "fetch":
        return cache.fetch("k", io.BytesIO(), create, timeout=timeout)
    if method == "stream":
        with cache.stream("k", create, timeout=timeout) as s:
            return s.read()
    return cache.astream("k", create, timeout=timeout)


@pytest.mark.parametrize("method", ["fetch", "stream", "astream"])
@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_bad_timeout_is_a_value_error_at_the_call(cache_dir: Path, kind: str, method: str) -> None:
    """Every cache's fetch, stream and astream refuse it before doing anything (astream
    at the call, not when entered); the message names ``timeout``."""
    cache = cache_of(kind, cache_dir)
    try:
        for bad in BAD_TIMEOUTS:
            create = Create()
            with pytest.raises(ValueError, match="timeout") as info:
                call(cache, method, create, bad)
            assert repr(bad) in str(info.value)
            assert not create.ran.is_set()
        for bad_type in ("1", b"1", [1], True):
            with pytest.raises(TypeError, match="timeout"):
                call(cache, method, Create(), bad_type)
    finally:
        cache.stop()
    assert data_files(cache_dir) == []


@pytest.mark.parametrize("method", ["fetch", "stream"])
def test_a_refused_call_is_no_occurrence(cache_dir: Path, method: str) -> None:
    """MinOccurrences checks the arguments before counting: after refused calls the
    first good one is still the key's first request and bypasses the cache."""
    with streamcache.new(streamcache.Config(dir=cache_dir, min_occurrences=1)) as cache:
        for bad in BAD_TIMEOUTS:
            with pytest.raises(ValueError, match="timeout"):
                call(cache, method, Create(), bad)
        with pytest.raises(TypeError, match="create"):
            call(cache, method, "not callable", None)  # type: ignore[arg-type]
        assert call(cache, method, Create(b"first"), None) in (b"first", (5, True))
        assert data_files(cache_dir) == [], "the first good call went to the cache"
        assert call(cache, method, Create(b"second"), None) in (b"second", (6, True))
        assert data_files(cache_dir) != []


@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_huge_finite_timeout_is_no_deadline(cache_dir: Path, kind: str) -> None:
    """1e30 seconds (or the largest float, or a huge int) works like no deadline, on a
    miss and a hit, through fetch, stream and astream: nothing overflows (a lock's
    timeout, a poll's milliseconds)."""
    cache = cache_of(kind, cache_dir)
    data = os.urandom(200_000)

    async def through_astream(timeout: Any) -> bytes:
        async with cache.astream("k", Create(data), timeout=timeout) as s:
            return b"".join([c async for c in s])

    try:
        for timeout in HUGE_TIMEOUTS:
            for _ in range(3):  # new(): the first bypasses, the second creates, then hits
                dst = io.BytesIO()
                assert cache.fetch("k", dst, Create(data), timeout=timeout).written == len(data)
                assert dst.getvalue() == data
                with cache.stream("k", Create(data), timeout=timeout) as s:
                    assert s.read() == data
                assert asyncio.run(through_astream(timeout)) == data
    finally:
        sc = inner_stream_cache(cache)
        if sc is not None:
            assert sc.wait_producers(WAIT)
        cache.stop()


def test_huge_timeout_waits_on_a_descriptor(cache_dir: Path) -> None:
    """A dst that would block (a non-blocking pipe with a slow reader) is waited on
    with poll: a huge timeout must not overflow its milliseconds."""
    data = os.urandom(300_000)
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 4096):
            got.extend(chunk)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        with io.FileIO(w, "wb", closefd=False) as dst:
            for cache in (streamcache.NullCache(), streamcache.StreamCache(cache_dir)):
                for _ in range(2):
                    assert cache.fetch("k", dst, Create(data), timeout=1e30).written == len(data)
                cache.stop()
    finally:
        os.close(w)
        t.join(WAIT)
        os.close(r)
    assert bytes(got) == data * 4


# -- durations of caches -------------------------------------------------------------------

BAD_DURATIONS = [math.inf, -math.inf, math.nan, -1]


@pytest.mark.parametrize("name", ["max_age", "liveness"])
def test_bad_stream_cache_durations(tmp_path: Path, name: str) -> None:
    for bad in BAD_DURATIONS:
        with pytest.raises(ValueError, match=name):
            streamcache.StreamCache(tmp_path / "c", **{name: bad})
    with pytest.raises(TypeError, match=name):
        streamcache.StreamCache(tmp_path / "c", **{name: "5m"})


def test_bad_min_age() -> None:
    for bad in BAD_DURATIONS:
        with pytest.raises(ValueError, match="min_age"):
            streamcache.MinOccurrences(streamcache.NullCache(), 1, bad)


def test_stream_cache_dir_is_never_the_cwd(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dir"):
        streamcache.StreamCache("")
    with pytest.raises(TypeError, match="dir"):
        streamcache.StreamCache(5)  # type: ignore[arg-type]


# -- Config --------------------------------------------------------------------------------


def test_config_dir_is_required() -> None:
    with pytest.raises(TypeError, match="dir"):
        streamcache.Config()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="dir"):
        streamcache.Config(dir="")
    for bad in (5, None, b"/var/cache/x", ["/tmp"]):
        with pytest.raises(TypeError, match="dir"):
            streamcache.Config(dir=bad)  # type: ignore[arg-type]


BAD_FIELDS: list[tuple[str, Any, type[Exception]]] = [
    ("enabled", "no", TypeError),
    ("enabled", None, TypeError),
    ("max_age", math.inf, ValueError),
    ("max_age", math.nan, ValueError),
    ("max_age", -1, ValueError),
    ("max_age", datetime.timedelta(seconds=-1), ValueError),
    ("max_age", "5m", TypeError),
    ("min_occurrences", -1, ValueError),
    ("min_occurrences", 1.5, TypeError),
    ("min_occurrences", True, TypeError),
    ("window", -1, ValueError),
    ("window", 2.0**20, TypeError),
    ("max_bytes", 0, ValueError),
    ("max_bytes", -5, ValueError),
    ("max_bytes", "1G", TypeError),
]


@pytest.mark.parametrize(("field", "bad", "error"), BAD_FIELDS)
def test_config_checks_every_field(
    tmp_path: Path, field: str, bad: Any, error: type[Exception]
) -> None:
    """Config refuses a bad value when made (naming the field), and new() refuses one
    assigned afterwards."""
    with pytest.raises(error, match=field):
        streamcache.Config(dir=tmp_path / "c", **{field: bad})
    cfg = streamcache.Config(dir=tmp_path / "c")
    setattr(cfg, field, bad)
    with pytest.raises(error, match=field):
        streamcache.new(cfg)
    assert not (tmp_path / "c").exists()


def test_config_keeps_its_fields_and_order(tmp_path: Path) -> None:
    cfg = streamcache.Config(
        dir=tmp_path / "c",
        enabled=False,
        max_age=datetime.timedelta(minutes=2),
        min_occurrences=3,
        window=0,
        max_bytes=2**30,
    )
    assert (cfg.enabled, cfg.max_age, cfg.min_occurrences, cfg.window, cfg.max_bytes) == (
        False,
        datetime.timedelta(minutes=2),
        3,
        0,
        2**30,
    )
    positional = streamcache.Config(str(tmp_path / "c"), True, 10.0, 2, 1024, None)
    assert positional.dir == str(tmp_path / "c") and positional.max_age == 10.0
    assert [f.name for f in dataclasses.fields(streamcache.Config)] == [
        "dir",
        "enabled",
        "max_age",
        "min_occurrences",
        "window",
        "max_bytes",
    ]
