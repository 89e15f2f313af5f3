"""A cache object pickles: unpickled in another process (here the initializer of a
``spawn`` Pool) it opens the same directory with the same options, so workers share
entries with each other and with the parent (docs/design.md, "Public API")."""

from __future__ import annotations

import inspect
import io
import multiprocessing.context
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from procs.pickles import describe, fetch_one, init
from prometheus_client import CollectorRegistry

import streamcache

WORKERS = 3
POOL_TIMEOUT = 120.0

Factory = Callable[[Path], streamcache.CacheBase]


def stream_cache(path: Path) -> streamcache.StreamCache:
    return streamcache.StreamCache(
        path,
        max_age=123.0,
        window=2**20,
        max_bytes=2**30,
        liveness=0.5,
        cleanup_interval=7.0,
        reader_slots=64,
        registry=None,
        key_preview=12,
    )


FACTORIES: dict[str, tuple[Factory, int]] = {
    # name: (the cache, how many workers run create)
    "StreamCache": (stream_cache, 1),
    "new": (lambda p: streamcache.new(streamcache.Config(dir=p, max_age=77, window=2**16)), 1),
    "MinOccurrences": (lambda p: streamcache.MinOccurrences(stream_cache(p), 0, 50.0), 1),
    "LoggingCache": (lambda p: streamcache.LoggingCache(stream_cache(p)), 1),
    "NullCache": (lambda p: streamcache.NullCache(), WORKERS),
}


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_spawn_pool_workers_share_the_pickled_cache(
    cache_dir: Path,
    tmp_path: Path,
    spawn: multiprocessing.context.SpawnContext,
    kind: str,
) -> None:
    factory, creates = FACTORIES[kind]
    runs = tmp_path / "runs"
    with factory(cache_dir) as cache:
        barrier = spawn.Barrier(WORKERS)
        with spawn.Pool(WORKERS, initializer=init, initargs=(cache, barrier, str(runs))) as pool:
            results = pool.map_async(fetch_one, ["shared"] * WORKERS, chunksize=1).get(POOL_TIMEOUT)
        assert len({r["pid"] for r in results}) == WORKERS  # each worker fetched once
        assert all(r["ok"] for r in results)
        assert len(runs.read_text().splitlines()) == creates
        assert sum(r["created"] for r in results) == creates
        for r in results:
            assert r["cache"] == describe(cache)  # same directory, same options
            if kind == "LoggingCache":
                assert r["logged"] == 1  # the worker's own call only
        if creates == 1:  # the parent reads the entry the workers made
            out = io.BytesIO()
            res = cache.fetch("shared", out, lambda w: None)
            assert not res.created and res.written > 0


def test_every_option_of_a_stream_cache_survives_pickling(tmp_path: Path) -> None:
    with stream_cache(tmp_path / "c") as cache:
        copy = pickle.loads(pickle.dumps(cache))
        with copy:
            assert type(copy) is streamcache.StreamCache and copy is not cache
            assert describe(copy) == describe(cache)
    # An option added to StreamCache and forgotten by pickling fails here.
    options = set(inspect.signature(streamcache.StreamCache).parameters) - {"dir"}
    assert set(cache._options()) == options


def test_default_registry_pickles_a_registry_of_its_own_does_not(tmp_path: Path) -> None:
    with streamcache.StreamCache(tmp_path / "c", cleanup_interval=0) as cache:
        with pickle.loads(pickle.dumps(cache)) as copy:
            assert copy.metrics is not None
    own = CollectorRegistry()
    with streamcache.StreamCache(tmp_path / "c", cleanup_interval=0, registry=own) as cache:
        with pytest.raises(TypeError, match="registry of its own"):
            pickle.dumps(cache)
