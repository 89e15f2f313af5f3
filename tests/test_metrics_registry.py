"""Metrics in one process: a cache's metrics go to the registry it was given and no
other; two caches can share a registry (the default one too); each count matches what
the calls did."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from helpers import writing
from prometheus_client import REGISTRY, CollectorRegistry

import streamcache
from streamcache import metrics

MiB = 1 << 20


def value(registry: CollectorRegistry, name: str, dir: Path, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"dir": str(dir), **labels})


def fetches(registry: CollectorRegistry, dir: Path) -> dict[str, float | None]:
    return {
        o: value(registry, "streamcache_fetches_total", dir, outcome=o) for o in metrics.OUTCOMES
    }


def test_registries_are_isolated(cache_dir: Path) -> None:
    one, two = CollectorRegistry(), CollectorRegistry()
    a = streamcache.StreamCache(cache_dir, registry=one, cleanup_interval=0)
    b = streamcache.StreamCache(cache_dir, registry=two, cleanup_interval=0)
    a.fetch("k", io.BytesIO(), writing(b"x" * 5000))
    for _ in range(3):
        b.fetch("k", io.BytesIO(), writing(b"never"))
    # Hits are tallied on the fast path: a scrape (get_sample_value collects) counts them.
    assert fetches(one, cache_dir) == {"hit": 0, "miss": 1, "bypass": 0, "error": 0}
    assert fetches(two, cache_dir) == {"hit": 3, "miss": 0, "bypass": 0, "error": 0}
    assert value(one, "streamcache_served_bytes_total", cache_dir) == 5000
    assert value(two, "streamcache_served_bytes_total", cache_dir) == 15000
    assert value(two, "streamcache_generated_bytes_total", cache_dir) == 0


def test_caches_share_a_registry_and_the_default_one(cache_dir: Path, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    other = tmp_path / "other"
    caches = [
        streamcache.StreamCache(d, registry=registry, cleanup_interval=0)
        for d in (cache_dir, cache_dir, other)
    ]
    for c in caches:
        c.fetch("k", io.BytesIO(), writing(b"y" * 10))
    assert fetches(registry, cache_dir) == {"hit": 1, "miss": 1, "bypass": 0, "error": 0}
    assert fetches(registry, other) == {"hit": 0, "miss": 1, "bypass": 0, "error": 0}
    # Two caches on the default registry in one process: no "Duplicated timeseries".
    before = REGISTRY.get_sample_value(
        "streamcache_fetches_total", {"dir": str(cache_dir), "outcome": "hit"}
    )
    for _ in range(2):
        streamcache.StreamCache(cache_dir, cleanup_interval=0).fetch(
            "k", io.BytesIO(), writing(b"never")
        )
    after = REGISTRY.get_sample_value(
        "streamcache_fetches_total", {"dir": str(cache_dir), "outcome": "hit"}
    )
    assert after == (before or 0) + 2
    caches[2].stop()
    streamcache.StreamCache(other, registry=None, cleanup_interval=0).fetch(
        "k2", io.BytesIO(), writing(b"z")
    )
    assert fetches(registry, other)["miss"] == 1  # registry=None counts nothing anywhere


def test_new_takes_a_registry(cache_dir: Path, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    cfg = streamcache.Config(dir=cache_dir, max_age=90, min_occurrences=1)
    with streamcache.new(cfg, registry=registry) as cache:
        for _ in range(3):
            cache.fetch("k", io.BytesIO(), writing(b"v" * 100))
    # The first request of a key is not admitted (min_occurrences=1): a bypass.
    assert fetches(registry, cache_dir) == {"hit": 1, "miss": 1, "bypass": 1, "error": 0}
    assert value(registry, "streamcache_enabled", cache_dir, max_age="90") == 1
    off = tmp_path / "off"
    streamcache.new(streamcache.Config(dir=off, enabled=False), registry=registry)
    assert value(registry, "streamcache_enabled", off, max_age="300") == 0
    assert not off.exists()
    with pytest.raises(TypeError, match="registry"):
        streamcache.StreamCache(cache_dir, registry="default")  # type: ignore[arg-type]


def test_errors_and_stream_outcomes(cache_dir: Path) -> None:
    registry = CollectorRegistry()
    cache = streamcache.StreamCache(cache_dir, registry=registry, cleanup_interval=0)

    def fail(w: object) -> None:
        raise ValueError("no")

    with pytest.raises(streamcache.CreateError):
        cache.fetch("bad", io.BytesIO(), fail)
    with pytest.raises(streamcache.CreateError):
        with cache.stream("bad", fail) as s:
            s.read()
    with cache.stream("good", writing(b"g" * 3 * MiB)) as s:
        assert len(s.read()) == 3 * MiB
    with cache.stream("good", writing(b"never")) as s:
        assert len(s.read(10)) == 10  # closed early: still a hit, 10 bytes served
    assert fetches(registry, cache_dir) == {"hit": 1, "miss": 1, "bypass": 0, "error": 2}
    assert value(registry, "streamcache_served_bytes_total", cache_dir) == 3 * MiB + 10
    assert value(registry, "streamcache_generated_bytes_total", cache_dir) == 3 * MiB


def test_expiry_is_an_eviction_and_usage_is_measured(cache_dir: Path) -> None:
    registry = CollectorRegistry()
    now = [1_000_000.0]
    cache = streamcache.StreamCache(
        cache_dir, max_age=60, registry=registry, clock=lambda: now[0], cleanup_interval=0
    )
    for k in ("a", "b"):
        cache.fetch(k, io.BytesIO(), writing(b"e" * 1000))
    cache.gc()
    assert value(registry, "streamcache_index_entries", cache_dir) == 2
    assert value(registry, "streamcache_disk_bytes", cache_dir) == 2 * (1000 + 16)
    now[0] += 61
    cache.gc()
    assert value(registry, "streamcache_evictions_total", cache_dir, reason="expired") == 2
    assert value(registry, "streamcache_index_entries", cache_dir) == 0
    assert value(registry, "streamcache_disk_bytes", cache_dir) == 0


def test_back_pressure_is_counted(cache_dir: Path) -> None:
    """window=0: the producer waits after each write until a reader has it all; the
    reader holds off 0.3 s before its first read, so the producer is blocked for about
    that long (counted: more than nothing)."""
    registry = CollectorRegistry()
    cache = streamcache.StreamCache(cache_dir, window=0, registry=registry, cleanup_interval=0)
    started = threading.Event()

    def create(w: streamcache.Writer) -> None:
        started.set()
        w.write(b"p" * MiB)
        w.write(b"p" * MiB)

    with cache.stream("slow", create) as s:
        assert started.wait(10)
        threading.Event().wait(0.3)
        assert len(s.read()) == 2 * MiB
    assert cache.wait_producers(10)
    held = value(registry, "streamcache_backpressure_seconds_total", cache_dir)
    assert held is not None and 0 < held < 30
