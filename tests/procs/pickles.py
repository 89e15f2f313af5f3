"""Pool workers for tests/test_cache_pickles.py (spawn context: module level). The
initializer gets a pickled cache; each task fetches one key through it."""

from __future__ import annotations

import os
from typing import Any

from xproc import WAIT, HashSink, append_line, payload, payload_sha

import streamcache

SIZE = 300_000  # over the size a hit reads whole: later readers stream the entry
CHUNK = 16 * 1024

_worker: dict[str, Any] = {}


def init(cache: streamcache.CacheBase, barrier: Any, runs: str) -> None:
    _worker.update(cache=cache, barrier=barrier, runs=runs)


def fetch_one(key: str) -> dict[str, Any]:
    """Fetch ``key`` once every worker holds a task (so each worker fetches once); say
    what this worker's cache is and what the fetch gave."""
    cache: streamcache.CacheBase = _worker["cache"]
    _worker["barrier"].wait(WAIT)

    def create(w: streamcache.Writer) -> None:
        append_line(_worker["runs"], str(os.getpid()))
        for chunk in payload(key, SIZE, CHUNK):
            w.write(chunk)

    sink = HashSink()
    res = cache.fetch(key, sink, create, timeout=WAIT)
    logged = len(cache.entries) if isinstance(cache, streamcache.LoggingCache) else None
    return {
        "pid": os.getpid(),
        "created": res.created,
        "ok": res.written == SIZE and sink.hexdigest() == payload_sha(key, SIZE, CHUNK),
        "cache": describe(cache),
        "logged": logged,
    }


def describe(cache: streamcache.CacheBase) -> list[tuple[str, dict[str, Any]]]:
    """The chain of caches ``cache`` is, outermost first, each with its options."""
    chain: list[tuple[str, dict[str, Any]]] = []
    while True:
        if isinstance(cache, streamcache.StreamCache):
            chain.append(("StreamCache", {"dir": cache.dir, **cache._options()}))
            return chain
        if isinstance(cache, streamcache.MinOccurrences):
            chain.append(("MinOccurrences", {"n": cache.n, "min_age": cache.min_age}))
            cache = cache.cache
        elif isinstance(cache, streamcache.LoggingCache):
            chain.append(("LoggingCache", {}))
            cache = cache.cache
        else:
            chain.append((type(cache).__name__, {}))
            return chain
