"""Config's default admission keeps the headline promise: concurrent first requests
for a key share one producer (``min_occurrences`` defaults to 0)."""

from __future__ import annotations

import multiprocessing.context
from pathlib import Path

from helpers import WAIT
from procs.edges import first_request

import streamcache

PROCS = 4


def test_config_caches_from_the_first_request(tmp_path: Path) -> None:
    assert streamcache.Config(dir=tmp_path / "c").min_occurrences == 0


def test_concurrent_first_requests_through_new_run_create_once(
    cache_dir: Path, tmp_path: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    log = tmp_path / "creates.log"
    barrier = spawn.Barrier(PROCS)
    out = spawn.Queue()
    procs = [
        spawn.Process(target=first_request, args=(str(cache_dir), "k", str(log), barrier, out))
        for _ in range(PROCS)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=WAIT) for _ in procs]
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == 0
    assert all(r[0] != "error" for r in results), results
    assert all(r[2] for r in results), "a process got the wrong bytes"
    assert len(log.read_text().splitlines()) == 1, "create ran more than once"
    assert sorted(r[1] for r in results) == [False] * (PROCS - 1) + [True]
