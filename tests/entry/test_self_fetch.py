"""A ``create`` that fetches its own key from the thread that runs it gets
``streamcache.Error`` at once, instead of waiting for itself forever."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

import streamcache


def _inner(w: Any) -> None:
    w.write(b"never")


@pytest.mark.parametrize("how", ["fetch", "fetch with timeout", "stream"])
@pytest.mark.parametrize("through", ["same cache", "another cache", "new(cfg)"])
def test_create_fetching_its_own_key_fails_at_once(cache_dir: Path, how: str, through: str) -> None:
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    other: streamcache.CacheBase = {
        "same cache": cache,
        "another cache": streamcache.StreamCache(cache_dir, cleanup_interval=0),
        "new(cfg)": streamcache.new(streamcache.Config(dir=cache_dir, min_occurrences=0)),
    }[through]
    seen: list[BaseException] = []

    def create(w: Any) -> None:
        w.write(b"head")
        try:
            other.fetch("k", io.BytesIO(), _inner, timeout=5)
        except streamcache.Error as exc:
            seen.append(exc)
            raise

    with pytest.raises(streamcache.CreateError):
        if how == "fetch":
            cache.fetch("k", io.BytesIO(), create)
        elif how == "fetch with timeout":
            cache.fetch("k", io.BytesIO(), create, timeout=10)
        else:
            with cache.stream("k", create, timeout=10) as s:
                s.read()
    assert len(seen) == 1 and not isinstance(seen[0], streamcache.CreateError)
    assert "its own key" in str(seen[0])
    assert cache.wait_producers(10)
    # The entry failed and left; the next fetch creates it afresh.
    sink = io.BytesIO()
    assert cache.fetch("k", sink, _inner) == (5, True)
    other.stop()
