"""Child-process work for tests/test_metrics_multiprocess.py (spawn context): each
child runs a known mix of fetches on one cache directory with PROMETHEUS_MULTIPROC_DIR
set by the parent, so its counts land in that directory's files."""

from __future__ import annotations

import io
import os

from helpers import writing

import streamcache

SHARED = b"s" * 4096  # a small entry: hits go through the tallied fast path


def unique_size(worker: int, j: int) -> int:
    return 100 * 1024 + 7 * worker + j


class Boom(Exception):
    pass


def fail_after_ten(w: streamcache.Writer) -> None:
    w.write(b"0123456789")
    raise Boom("create failed on purpose")


def work(cache_dir: str, worker: int, hits: int, misses: int, barrier: object) -> None:
    """``hits`` fetches of one shared key (one of them, in one of the workers, creates
    it), ``misses`` new keys, one stream hit, one failing create, one bypass."""
    assert "PROMETHEUS_MULTIPROC_DIR" in os.environ
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    admitting = streamcache.MinOccurrences(cache, 1, 3600)
    barrier.wait(30)  # type: ignore[attr-defined]
    for _ in range(hits):
        out = io.BytesIO()
        cache.fetch("shared", out, writing(SHARED))
        assert out.getvalue() == SHARED
    for j in range(misses):
        size = unique_size(worker, j)
        res = cache.fetch(f"w{worker}-{j}", io.BytesIO(), writing(b"u" * size))
        assert res == (size, True), res
    with cache.stream(f"w{worker}-0", writing(b"never")) as s:
        assert len(s.read()) == unique_size(worker, 0)
        assert not s.created
    try:
        cache.fetch(f"err{worker}", io.BytesIO(), fail_after_ten)
    except streamcache.CreateError:
        pass
    else:
        raise AssertionError("the failing create did not fail the fetch")
    res = admitting.fetch(f"bp{worker}", io.BytesIO(), writing(b"b" * 1000))
    assert res == (1000, True), res
    cache.stop()  # counts the tallied hits (a spawned child exits without atexit)


def collect(cache_dir: str) -> None:
    """One cleanup pass: measures the directory's entries and bytes."""
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    assert cache.gc().ran
    cache.stop()
