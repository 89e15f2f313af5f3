"""``with cache as c`` gives ``c`` the type of the cache it was entered on, not the base
class, so a method only one kind of cache has passes ``mypy --strict`` (this file is in
the project's mypy ``files``: on a base-typed ``__enter__`` mypy fails here)."""

from __future__ import annotations

from pathlib import Path

import streamcache


def test_with_keeps_each_cache_type(tmp_path: Path) -> None:
    with streamcache.StreamCache(tmp_path / "c", cleanup_interval=0) as cache:
        report = cache.gc()  # StreamCache only
        assert report.ran
        assert cache.wait_producers(10)  # StreamCache only
        with streamcache.MinOccurrences(cache, 1, 60) as admitted:
            assert admitted.n == 1  # MinOccurrences only
        with streamcache.LoggingCache(cache) as logged:
            assert logged.entries == []  # LoggingCache only
    with streamcache.NullCache() as null:
        assert isinstance(null, streamcache.NullCache)
