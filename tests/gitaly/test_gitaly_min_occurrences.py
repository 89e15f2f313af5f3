"""Gitaly's internal/streamcache/min_occurrences_test.go, ported.

MinOccurrences counts in memory (MemoryCounter) when it wraps anything but a
StreamCache, and through the cache directory (FileCounter) when it wraps a StreamCache,
so that every process on the directory adds to one count. Tests run both where it
matters; "memory" wraps LoggingCache(NullCache()) as Gitaly's tests do, "file" wraps a
StreamCache, whose index and data files show which requests reached it.

Child-process functions live at module level: spawn children import this module.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import data_files, finished_entries, index_records

from streamcache import Create, LoggingCache, MinOccurrences, NullCache, StreamCache
from streamcache.admission import FileCounter, MemoryCounter

SpawnContext = multiprocessing.context.SpawnContext

WAIT = 20.0  # bound on every wait for another process or thread (seconds)
HOUR = 3600.0
MIN_AGE = HOUR


class Clock:
    """An injected clock: starts a tenth into a counter generation; ``rotate`` moves it on
    by min_age + 1 ms: into the next generation (FileCounter), and past min_age since the
    last rotation (MemoryCounter), so both rotate exactly once. 1000 rotations drift 1 s."""

    def __init__(self) -> None:
        self.now = MIN_AGE * 500_000 + 0.1 * MIN_AGE

    def __call__(self) -> float:
        return self.now

    def rotate(self) -> None:
        self.now += MIN_AGE + 0.001


def writer(data: bytes) -> Create:
    def create(w: Any) -> None:
        w.write(data)

    return create


def counter_size(m: MinOccurrences) -> int:
    """How many keys the counters remember (Gitaly: len(oldCount) + len(newCount))."""
    counter = m.counter
    if isinstance(counter, MemoryCounter):
        return len(counter.old) + len(counter.new)
    assert isinstance(counter, FileCounter)
    names: set[str] = set()
    if os.path.isdir(counter.root):
        for gen in os.listdir(counter.root):
            names.update(os.listdir(os.path.join(counter.root, gen)))
    return len(names)


def make(mode: str, cache_dir: Path, n: int, clock: Callable[[], float] | None = None) -> Any:
    """(MinOccurrences, inner cache) for ``mode`` "memory" or "file"."""
    inner: Any = LoggingCache(NullCache()) if mode == "memory" else StreamCache(cache_dir)
    if clock is None:
        m = MinOccurrences(inner, n, MIN_AGE)
    else:
        m = MinOccurrences(inner, n, MIN_AGE, clock=clock)
    expected = MemoryCounter if mode == "memory" else FileCounter
    assert isinstance(m.counter, expected)
    return m, inner


# -- child processes ------------------------------------------------------------------------


def child_worker(cache_dir: str, n: int, conn: Any) -> None:
    """Serve fetch requests (key, data) -> (output, created) from the parent until None."""
    cache = MinOccurrences(StreamCache(cache_dir, max_age=HOUR), n, MIN_AGE)
    try:
        while conn.poll(WAIT):
            msg = conn.recv()
            if msg is None:
                break
            key, data = msg
            out = io.BytesIO()
            res = cache.fetch(key, out, writer(data))
            conn.send((out.getvalue(), res.created))
    finally:
        cache.stop()


def fetch_many(cache: MinOccurrences, keys: range, release: Callable[[], None]) -> list[str]:
    """One thread per key, released at once, fetches f"key.{i}" (content f"hello.{i}").
    Returns the errors."""
    errors: list[str] = []
    go = threading.Event()

    def one(i: int) -> None:
        if not go.wait(WAIT):
            errors.append("never released")
            return
        try:
            out = io.BytesIO()
            cache.fetch(f"key.{i}", out, writer(f"hello.{i}".encode()))
            if out.getvalue() != f"hello.{i}".encode():
                errors.append(f"key.{i}: wrong output {out.getvalue()!r}")
        except BaseException as exc:
            errors.append(f"key.{i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in keys]
    for t in threads:
        t.start()
    try:
        release()
    finally:
        go.set()
        for t in threads:
            t.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a fetch thread is stuck"
    return errors


def child_fetch_many(cache_dir: str, first: int, count: int, ready: Any, go: Any, q: Any) -> None:
    cache = MinOccurrences(StreamCache(cache_dir, max_age=HOUR), 1, MIN_AGE)

    def release() -> None:
        ready.set()
        go.wait(WAIT)

    try:
        q.put(fetch_many(cache, range(first, first + count), release))
    finally:
        cache.stop()


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "n"),
    [("memory", 1), ("file", 1), ("two processes", 1), ("two processes", 3)],
    ids=["memory", "file", "two processes N=1", "two processes N=3"],
)
def test_min_occurrences_suppress(cache_dir: Path, spawn: SpawnContext, mode: str, n: int) -> None:
    """Go: TestMinOccurrences_suppress.

    A key's first N requests bypass the wrapped cache (their output is still right);
    every later one reaches it. "memory": the LoggingCache sees 1 + i - N calls. "file":
    the bypassed requests leave no entry, request N creates it, the rest are hits.
    "two processes": requests alternate between this process and a child process, each
    with its own MinOccurrences(StreamCache(dir), N): their counts add up, so request N
    (from 0), whichever process makes it, is the first to reach the cache; with
    per-process counts both would stay below the threshold longer.
    """
    if mode == "two processes":
        suppress_across_processes(cache_dir, spawn, n)
        return
    m, inner = make(mode, cache_dir, n)
    try:
        for i in range(10):
            out = io.BytesIO()
            res = m.fetch("key", out, writer(b"hello"))
            assert out.getvalue() == b"hello"
            if mode == "memory":
                if i < n:
                    assert inner.entries == [], "the first call did not reach the cache"
                else:
                    assert len(inner.entries) == 1 + i - n, "the call reached the cache"
            elif i < n:
                assert res.created, "a bypass runs create itself"
                assert data_files(cache_dir) == [], "the first call did not reach the cache"
            else:
                assert res.created == (i == n), "reached the cache: created once, then hits"
                assert len(finished_entries(cache_dir)) == 1
        if mode == "file":
            assert len(data_files(cache_dir)) == 1
    finally:
        m.stop()


def suppress_across_processes(cache_dir: Path, spawn: SpawnContext, n: int) -> None:
    parent_conn, child_conn = spawn.Pipe()
    proc = spawn.Process(target=child_worker, args=(str(cache_dir), n, child_conn), daemon=True)
    proc.start()
    m = MinOccurrences(StreamCache(cache_dir, max_age=HOUR), n, MIN_AGE)
    try:
        for i in range(2 * n + 4):
            data = f"hello {i}".encode()
            who = "child" if i % 2 else "parent"
            if who == "child":
                parent_conn.send(("key", data))
                assert parent_conn.poll(WAIT), "the child process answers"
                output, created = parent_conn.recv()
            else:
                out = io.BytesIO()
                res = m.fetch("key", out, writer(data))
                output, created = out.getvalue(), res.created
            if i < n:
                assert (output, created) == (data, True), f"request {i} ({who}) bypasses"
                assert data_files(cache_dir) == [], f"request {i} ({who}) bypasses"
            else:
                first = f"hello {n}".encode()
                assert (output, created) == (first, i == n), f"request {i} ({who}) reaches"
                assert len(finished_entries(cache_dir)) == 1
        parent_conn.send(None)
        proc.join(WAIT)
        assert proc.exitcode == 0
    finally:
        m.stop()


@pytest.mark.parametrize("mode", ["memory", "file", "two processes"])
def test_min_occurrences_many_different_calls(
    cache_dir: Path, spawn: SpawnContext, mode: str
) -> None:
    """Go: TestMinOccurrences_manyDifferentCalls.

    1000 concurrent requests for distinct keys (N=1) all get their output and none reaches
    the wrapped cache. "two processes": 500 threads here and 500 in a child process on one
    directory, released at once.
    """
    calls = 1000
    m, inner = make("memory" if mode == "memory" else "file", cache_dir, 1)
    try:
        if mode == "two processes":
            ready, go = spawn.Event(), spawn.Event()
            q = spawn.Queue()
            half = calls // 2
            args = (str(cache_dir), half, calls - half, ready, go, q)
            proc = spawn.Process(target=child_fetch_many, args=args, daemon=True)
            proc.start()

            def release() -> None:
                assert ready.wait(WAIT), "the child's threads are ready"
                go.set()

            try:
                errors = fetch_many(m, range(half), release)
                errors += q.get(timeout=WAIT)
            finally:
                go.set()
            proc.join(WAIT)
            assert proc.exitcode == 0
        else:
            errors = fetch_many(m, range(calls), lambda: None)
        assert errors == []
        if mode == "memory":
            assert inner.entries == [], "every key was unique: no call reached the cache"
        else:
            assert index_records(cache_dir) == [], "no call reached the cache"
            assert data_files(cache_dir) == []
    finally:
        m.stop()


class StopCounting(NullCache):
    """Gitaly's stopCache: a NullCache that counts stop() calls."""

    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


def cleanup_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.name == "streamcache-cleanup"]


@pytest.mark.parametrize("inner", ["counting", "StreamCache", "LoggingCache"])
def test_min_occurrences_propagate_stop(cache_dir: Path, inner: str) -> None:
    """Go: TestMinOccurrences_propagateStop.

    stop() reaches the inner cache. "counting": as in Gitaly, a NullCache that counts its
    stops. "StreamCache" / "LoggingCache": the StreamCache's background cleanup thread
    (started by its first fetch) ends, directly or through a LoggingCache in between;
    fetch still works after stop, and does not start the cleanup again.
    """
    if inner == "counting":
        counting = StopCounting()
        m = MinOccurrences(counting, 1, MIN_AGE)
        assert counting.stopped == 0
        m.stop()
        assert counting.stopped == 1
        return
    sc = StreamCache(cache_dir, max_age=HOUR)
    m = MinOccurrences(LoggingCache(sc) if inner == "LoggingCache" else sc, 0, MIN_AGE)
    before = set(threading.enumerate())
    out = io.BytesIO()
    assert m.fetch("key", out, writer(b"hello")).created
    cleaners = cleanup_threads(before)
    assert len(cleaners) == 1 and cleaners[0].is_alive(), "the inner cache's cleanup runs"

    m.stop()
    assert not cleaners[0].is_alive(), "stop reached the inner cache"

    out = io.BytesIO()
    res = m.fetch("key", out, writer(b"WRONG"))
    assert (res.created, out.getvalue()) == (False, b"hello"), "fetch works after stop"
    assert cleanup_threads(before) == [], "the cleanup did not start again"


@pytest.mark.parametrize("mode", ["memory", "file"])
def test_min_occurrences_forget_old_keys(cache_dir: Path, mode: str) -> None:
    """Go: TestMinOccurrences_forgetOldKeys.

    Counts live in two generations: 1000 keys, then one rotation and a new key (all
    remembered), then another rotation and the new key again: only the new key is left.
    The rotation is driven by the injected clock.
    """
    clock = Clock()
    m, _ = make(mode, cache_dir, 1, clock)
    try:
        assert counter_size(m) == 0
        calls = 1000
        for i in range(calls):
            m.fetch(f"old key.{i}", io.BytesIO(), writer(b"hello"))
        assert counter_size(m) == calls, "old keys"

        clock.rotate()
        m.fetch("new key", io.BytesIO(), writer(b"hello"))
        assert counter_size(m) == calls + 1, "old keys and new key"

        clock.rotate()
        m.fetch("new key", io.BytesIO(), writer(b"hello"))
        assert counter_size(m) == 1, "only new key"
    finally:
        m.stop()


@pytest.mark.parametrize("mode", ["memory", "file"])
def test_min_occurrences_key_survives_rotation(cache_dir: Path, mode: str) -> None:
    """Go: TestMinOccurrences_keySurvivesRotation.

    A key asked in every generation keeps its count across 1000 rotations; one idle for
    two rotations (asked every third) restarts at 1. The FileCounter stops counting past
    its cap (only "more than n" matters), so exact counts use a large cap; with the real
    cap n=1 the frequent key stays above the threshold.
    """
    clock = Clock()
    m, _ = make(mode, cache_dir, 1, clock)
    big = 10**9
    try:
        for i in range(1000):
            clock.rotate()
            assert m.counter.incr("frequent key", big) == i + 1, "remembered and incremented"
            capped = m.counter.incr("frequent capped key", m.n)
            assert (capped > m.n) == (i > 0), "a frequent key stays above the threshold"
            # i % 3: it takes two rotations for a key to be forgotten
            if i % 3 == 0:
                assert m.counter.incr("infrequent key", big) == 1, "forgotten and reset"
    finally:
        m.stop()
