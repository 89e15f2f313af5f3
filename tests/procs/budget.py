"""Child processes for tests/disk/test_disk_budget.py, tests/disk/procs_full_disk.py and
tests/entry/test_every_path_same_bytes.py (spawn context: module level)."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from prometheus_client import REGISTRY
from xproc import WAIT, HashSink, payload_sha, reporting, writer_of

import streamcache

CHUNK = 256 * 1024


def bypasses(cache: streamcache.StreamCache) -> int:
    """Fetches of ``cache``'s directory in this process that bypassed the cache."""
    labels = {"dir": cache.dir, "outcome": "bypass"}
    return int(REGISTRY.get_sample_value("streamcache_fetches_total", labels) or 0)


@reporting
def budget_worker(
    dir: str, budget: int, size: int, keys: list[str], rounds: int, seed: int, *, out: Any
) -> None:
    """Fetch every key of ``keys`` and two keys of its own ``rounds`` times in a random
    order, through fetch (inline and in a producer thread) and stream; check every byte;
    report the counts."""
    keys = [*keys, f"own-{seed}-a", f"own-{seed}-b"]
    cache = streamcache.StreamCache(dir, max_bytes=budget, max_age=3600, cleanup_interval=0)
    rng = random.Random(seed)
    want = {key: payload_sha(key, size, CHUNK) for key in keys}
    fetches = creates = 0
    try:
        for _ in range(rounds):
            for key in rng.sample(keys, len(keys)):
                sink = HashSink()
                how = rng.choice(("inline", "thread", "stream"))
                if how == "stream":
                    with cache.stream(key, writer_of(key, size, CHUNK), timeout=30) as s:
                        for chunk in s:
                            sink.write(chunk)
                        created = s.created
                else:
                    timeout = 30.0 if how == "thread" else None
                    res = cache.fetch(key, sink, writer_of(key, size, CHUNK), timeout)
                    assert res.written == size, (key, how, res)
                    created = res.created
                assert sink.n == size and sink.hexdigest() == want[key], (key, how)
                fetches += 1
                creates += created
        assert cache.wait_producers(30)
    finally:
        cache.stop()
    out.put(("done", fetches, creates, bypasses(cache)))


@reporting
def hold_entry_in_flight(dir: str, budget: int, key: str, *, out: Any) -> None:
    """Create ``key`` under the budget ``budget``: write ``budget`` bytes, report, then
    wait (to be killed)."""
    cache = streamcache.StreamCache(dir, max_bytes=budget, cleanup_interval=0)

    def create(w: Any) -> None:
        w.write(b"k" * budget)
        out.put(("writing", os.getpid()))
        time.sleep(WAIT)

    cache.fetch(key, HashSink(), create)
