"""max_bytes (docs/design.md, "Beyond Gitaly"): the oldest finished entries are evicted
first, the data on disk stays within the budget plus one entry, misses bypass the cache when
everything on disk is in flight, and the running total is repaired by gc."""

from __future__ import annotations

import fcntl
import io
import os
import signal
import struct
import threading
import warnings
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

from procs.budget import CHUNK, budget_worker, bypasses, hold_entry_in_flight
from prometheus_client import REGISTRY
from xproc import WAIT, expect, payload_bytes, wait_pid, writer_of

import streamcache
from streamcache.cache import LAYOUT
from streamcache.disk.filestore import TRAILER

MiB = 2**20


def disk_bytes(cache_dir: Path) -> int:
    """What the entries' files under ``cache_dir`` hold now (finished and in flight)."""
    total = 0
    for sub in ("entries", "data"):
        top = cache_dir / LAYOUT / sub
        try:
            shards = list(os.scandir(top))
        except FileNotFoundError:
            continue
        for shard in shards:
            try:
                files = list(os.scandir(shard.path))
            except OSError:
                continue
            for f in files:
                try:
                    st = f.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                if f.is_file(follow_symlinks=False):
                    total += st.st_size
    return total


def counted_total(cache_dir: Path) -> int:
    """The running total as the usage file says now (read without its lock)."""
    with open(cache_dir / LAYOUT / "locks" / "usage.lock", "rb") as f:
        data = f.read(16)
    return int(struct.unpack_from("<q", data, 8)[0])


def finished_keys(cache: streamcache.StreamCache, keys: list[str]) -> list[str]:
    files = cache._store.files
    return [k for k in keys if os.path.exists(files.entry_path(streamcache.cache.key_hash(k)))]


class Watcher:
    """Samples the disk use of a cache dir from a thread until stopped; keeps the peak."""

    def __init__(self, cache_dir: Path) -> None:
        self._dir = cache_dir
        self._stop = threading.Event()
        self.peak = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, disk_bytes(self._dir))
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)


def test_four_processes_stay_within_budget_plus_one_entry(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """4 MiB entries under a 10 MiB budget, from 4 processes at once (fetch inline, fetch
    in a producer thread, stream): every fetch gets the right bytes, and the disk never
    holds more than the budget plus one entry (sampled all along by a watcher thread)."""
    budget, size = 10 * MiB, 4 * MiB
    keys = [f"budget-{i}" for i in range(4)]
    streamcache.StreamCache(cache_dir, cleanup_interval=0)  # the dir exists for the watcher
    watcher = Watcher(cache_dir)
    q = spawn.Queue()
    procs = [
        spawn.Process(
            target=budget_worker,
            args=(str(cache_dir), budget, size, keys, 3, seed),
            kwargs={"out": q},
            daemon=True,
        )
        for seed in range(4)
    ]
    for p in procs:
        p.start()
    try:
        results = [expect(q, "done", timeout=50) for _ in procs]
    finally:
        watcher.stop()
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == 0
    fetches = sum(r[0] for r in results)
    creates = sum(r[1] for r in results)
    bypassed = sum(r[2] for r in results)
    assert fetches == 4 * 3 * (len(keys) + 2)
    print(
        f"budget {budget} B, entries {size} B: peak on disk {watcher.peak} B "
        f"({watcher.samples} samples), fetches {fetches}, creates {creates}, "
        f"bypasses {bypassed}"
    )
    assert watcher.samples > 0
    assert watcher.peak <= budget + size + TRAILER.size, watcher.peak
    # Quiescent: the running total is exactly what the directory holds.
    assert counted_total(cache_dir) == disk_bytes(cache_dir) <= budget + size + TRAILER.size


def test_the_oldest_finished_entries_are_evicted_first(cache_dir: Path) -> None:
    budget, size = 10 * MiB, 4 * MiB
    cache = streamcache.StreamCache(cache_dir, max_bytes=budget, cleanup_interval=0)
    keys = ["a", "b", "c"]
    for key in keys:
        out = io.BytesIO()
        assert cache.fetch(key, out, writer_of(key, size, CHUNK)).created
        assert out.getvalue() == payload_bytes(key, size, CHUNK)
        assert disk_bytes(cache_dir) <= budget + size + TRAILER.size
    assert finished_keys(cache, keys) == ["b", "c"]
    assert bypasses(cache) == 0
    # A hit stays a hit; the evicted key is created afresh, evicting the next oldest.
    assert not cache.fetch("c", io.BytesIO(), writer_of("c", size, CHUNK)).created
    assert cache.fetch("a", io.BytesIO(), writer_of("a", size, CHUNK)).created
    assert finished_keys(cache, keys) == ["a", "c"]
    assert counted_total(cache_dir) == disk_bytes(cache_dir) == 2 * (size + TRAILER.size)
    labels = {"dir": cache.dir, "reason": "budget"}
    assert REGISTRY.get_sample_value("streamcache_evictions_total", labels) == 2


def test_a_miss_bypasses_while_the_budget_is_all_in_flight(cache_dir: Path) -> None:
    """An entry in flight takes the whole budget: a miss of another key runs create
    straight into its caller (fetch and stream), succeeds, and leaves no entry; once the
    entry in flight is finished (so evictable), misses are cached again."""
    budget = 1 * MiB
    cache = streamcache.StreamCache(cache_dir, max_bytes=budget, cleanup_interval=0)
    wrote, go = threading.Event(), threading.Event()

    def hold(w: Any) -> None:
        w.write(b"h" * budget)
        wrote.set()
        if not go.wait(WAIT):
            raise TimeoutError("the test never let the entry finish")

    held = cache.stream("held", hold, timeout=WAIT)
    try:
        assert wrote.wait(WAIT)
        size = 3 * MiB  # bigger than the whole budget: it could never be cached
        out = io.BytesIO()
        res = cache.fetch("other", out, writer_of("other", size, CHUNK))
        assert res == (size, True)
        assert out.getvalue() == payload_bytes("other", size, CHUNK)
        with cache.stream("other", writer_of("other", size, CHUNK)) as s:
            assert s.created
            assert s.read() == payload_bytes("other", size, CHUNK)
        assert bypasses(cache) == 2
        assert finished_keys(cache, ["other"]) == []
        assert disk_bytes(cache_dir) == budget  # only the entry in flight
    finally:
        go.set()
        assert held.read() == b"h" * budget
        held.close()
    assert cache.wait_producers(WAIT)
    small = writer_of("small", 1000, CHUNK)
    assert cache.fetch("small", io.BytesIO(), small).created  # evicts "held"
    assert not cache.fetch("small", io.BytesIO(), small).created
    assert finished_keys(cache, ["held", "small"]) == ["small"]
    assert bypasses(cache) == 2


def test_gc_repairs_the_total_after_a_producer_is_killed_mid_write(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """A producer killed mid-write leaves its reservation counted; the cleanup pass sets
    the total back to what the directory holds, and misses are cached again."""
    budget = 2 * MiB
    q = spawn.Queue()
    proc = spawn.Process(
        target=hold_entry_in_flight, args=(str(cache_dir), budget, "killed"), kwargs={"out": q}
    )
    proc.start()
    (pid,) = expect(q, "writing")
    assert counted_total(cache_dir) >= budget
    os.kill(pid, signal.SIGKILL)
    proc.join(WAIT)
    cache = streamcache.StreamCache(cache_dir, max_bytes=budget, cleanup_interval=0)
    assert counted_total(cache_dir) >= budget  # nobody gave the dead producer's bytes back
    assert cache.fetch("next", io.BytesIO(), writer_of("next", 1000, CHUNK)).created
    assert bypasses(cache) == 1  # over budget, and nothing finished to evict
    report = cache.gc()
    assert report.ran and report.disk_bytes == 0
    assert counted_total(cache_dir) == disk_bytes(cache_dir) == 0
    assert cache.fetch("next", io.BytesIO(), writer_of("next", 1000, CHUNK)).created
    assert not cache.fetch("next", io.BytesIO(), writer_of("next", 1000, CHUNK)).created
    assert bypasses(cache) == 1


def test_without_a_budget_nothing_is_reserved(cache_dir: Path) -> None:
    """No budget: producers reserve nothing (no cost per write); gc still counts."""
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    for i in range(3):
        assert cache.fetch(f"k{i}", io.BytesIO(), writer_of(f"k{i}", MiB, CHUNK)).created
    assert bypasses(cache) == 0
    assert counted_total(cache_dir) == 0
    assert cache.gc().disk_bytes == disk_bytes(cache_dir) == 3 * (MiB + TRAILER.size)


def test_a_forked_child_does_not_share_the_usage_lock(cache_dir: Path) -> None:
    """A cache made before fork (gunicorn --preload): the child opens the usage file anew,
    so its lock excludes the parent's (a flock belongs to the open file description, which
    an inherited descriptor shares with the parent) and it counts what it writes."""
    budget = 8 * MiB
    cache = streamcache.StreamCache(cache_dir, max_bytes=budget, cleanup_interval=0)
    assert cache.fetch("before", io.BytesIO(), writer_of("before", MiB, CHUNK)).created
    usage = cache._store.usage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose
        with usage._file.locked():
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 3
                try:
                    fd = usage._file._descriptor()
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        code = 1  # taken while the parent holds it: shared
                    except BlockingIOError:
                        code = 0
                finally:
                    os._exit(code)
            code = wait_pid(pid, WAIT)
        assert code == 0
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            ok = cache.fetch("child", io.BytesIO(), writer_of("child", MiB, CHUNK)).created
            os._exit(0 if ok else 1)
        assert wait_pid(pid, WAIT) == 0
    assert counted_total(cache_dir) == disk_bytes(cache_dir) == 2 * (MiB + TRAILER.size)
