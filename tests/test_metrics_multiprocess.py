"""Metrics under PROMETHEUS_MULTIPROC_DIR (gunicorn's mode): several processes do known
work on one cache directory; a MultiProcessCollector adds up their files, and every
value must match the work done."""

from __future__ import annotations

from multiprocessing.context import SpawnContext
from pathlib import Path

import procs.metrics
import pytest
from prometheus_client import CollectorRegistry, multiprocess

from streamcache.disk.filestore import TRAILER

WORKERS = 3
HITS = 40  # fetches of the shared key per worker
MISSES = 3  # new keys per worker


def run(spawn: SpawnContext, target: object, *args: object) -> list[int]:
    procs = [spawn.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, f"child {p.pid} ended with {p.exitcode}"
    return [p.pid for p in procs if p.pid is not None]


def test_counts_of_several_processes_add_up(
    cache_dir: Path, tmp_path: Path, spawn: SpawnContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(prom))
    barrier = spawn.Barrier(WORKERS)
    work = [(str(cache_dir), i, HITS, MISSES, barrier) for i in range(WORKERS)]
    pids = run(spawn, procs.metrics.work, *work)
    run(spawn, procs.metrics.collect, (str(cache_dir),))

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(prom))
    d = str(cache_dir)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"dir": d, **labels})

    unique = [procs.metrics.unique_size(i, j) for i in range(WORKERS) for j in range(MISSES)]
    shared = len(procs.metrics.SHARED)
    # The shared key is created once across all processes; every other fetch of it hits.
    assert value("streamcache_fetches_total", outcome="miss") == 1 + WORKERS * MISSES
    assert value("streamcache_fetches_total", outcome="hit") == WORKERS * HITS - 1 + WORKERS
    assert value("streamcache_fetches_total", outcome="error") == WORKERS
    assert value("streamcache_fetches_total", outcome="bypass") == WORKERS
    # Producers wrote the shared entry, the unique ones and 10 bytes before each failure.
    assert value("streamcache_generated_bytes_total") == shared + sum(unique) + 10 * WORKERS
    stream_hits = sum(procs.metrics.unique_size(i, 0) for i in range(WORKERS))
    assert value("streamcache_served_bytes_total") == (
        WORKERS * HITS * shared + sum(unique) + stream_hits
    )
    assert value("streamcache_evictions_total", reason="expired") == 0
    # Measured by the last cleanup pass: the finished entries, trailers included.
    entries = 1 + WORKERS * MISSES
    assert value("streamcache_index_entries") == entries
    assert value("streamcache_disk_bytes") == shared + sum(unique) + entries * TRAILER.size
    assert value("streamcache_enabled", max_age="300") == 1

    # gunicorn's child_exit hook: a dead worker's "live" gauges go, its counts stay.
    for pid in [*pids, *_collector_pid(prom)]:
        multiprocess.mark_process_dead(pid, str(prom))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(prom))
    assert value("streamcache_enabled", max_age="300") is None
    assert value("streamcache_fetches_total", outcome="error") == WORKERS


def _collector_pid(prom: Path) -> list[int]:
    """Pids of every process that wrote a live gauge (the collecting child too)."""
    return [int(p.stem.rsplit("_", 1)[1]) for p in prom.glob("gauge_live*_*.db")]
