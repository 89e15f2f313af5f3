"""``cache.invalidate(key)``: the next call for the key, in any process, creates afresh.

Checked with real processes: a finished entry goes (a reader that opened it before
reads all of it); an entry in flight goes on for the readers it has, which get every
byte and a clean end, but is never published, not even over the entry that a later
fetch made meanwhile; nothing is left in /dev/shm or the directory after a cleanup
pass. Every cache has the method; one that stores nothing says False.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import data_files, finished_entries, index_records, ipc_objects
from procs.invalidate import HOUR, fetch_once, gated_producer
from xproc import WAIT, commanded_reader, expect, payload_bytes, payload_sha

import streamcache
from streamcache import LoggingCache, MinOccurrences, NullCache, StreamCache

KEY = "invalidate-me"
TOTAL = 1 << 20  # more than fetch reads whole: a hit keeps the file open
CHUNK = 64 * 1024


def _no_create(w: Any) -> None:
    raise AssertionError("this call must find the entry, not create it")


def _writer(data: bytes) -> Any:
    def create(w: Any) -> None:
        w.write(data)

    return create


def start(spawn: Any, target: Callable[..., None], *args: Any) -> tuple[Any, Any]:
    """A child running ``target(*args, out=q)``, and ``q``."""
    q = spawn.Queue()
    proc = spawn.Process(target=target, args=args, kwargs={"out": q}, daemon=True)
    proc.start()
    return proc, q


def _fetch_in_child(spawn: Any, cache_dir: Path, seed: str) -> tuple[Any, ...]:
    """Fetch KEY in a new process offering the payload ``seed``: (sha, written, created)."""
    proc, q = start(spawn, fetch_once, str(cache_dir), KEY, seed, TOTAL, CHUNK)
    got = expect(q, "fetched", WAIT)
    proc.join(WAIT)
    assert proc.exitcode == 0
    return got


def test_finished_entry_goes_and_its_open_reader_reads_it_all(cache_dir: Path, spawn: Any) -> None:
    cache = StreamCache(cache_dir, max_age=HOUR, cleanup_interval=0)
    try:
        assert _fetch_in_child(spawn, cache_dir, "old") == (
            payload_sha("old", TOTAL, CHUNK),
            TOTAL,
            True,
        )
        attached, commands = spawn.Event(), spawn.Queue()
        reader, rq = start(spawn, commanded_reader, str(cache_dir), KEY, attached, commands)
        assert expect(rq, "attached", WAIT)[0] is False, "a hit on the finished entry"
        commands.put(str(CHUNK))
        assert expect(rq, "pos", WAIT) == (CHUNK,)

        assert cache.invalidate(KEY) is True
        assert finished_entries(cache_dir) == []
        assert cache.peek(KEY) is None
        # The next fetch, in another process, creates afresh.
        assert _fetch_in_child(spawn, cache_dir, "new") == (
            payload_sha("new", TOTAL, CHUNK),
            TOTAL,
            True,
        )
        # The reader that opened the old entry still reads all of it.
        commands.put("all")
        assert expect(rq, "done", WAIT) == (payload_sha("old", TOTAL, CHUNK), TOTAL)
        reader.join(WAIT)
        assert reader.exitcode == 0
        out = io.BytesIO()
        assert cache.fetch(KEY, out, _no_create) == (TOTAL, False)
        assert out.getvalue() == payload_bytes("new", TOTAL, CHUNK)
        assert cache.invalidate(KEY) is True
        assert cache.invalidate(KEY) is False, "nothing left to drop"
    finally:
        cache.stop()


@pytest.mark.parametrize("inline", [True, False], ids=["inline-creator", "producer-thread"])
@pytest.mark.parametrize(
    "newer", [False, True], ids=["next-fetch-after-it-ends", "newer-entry-while-in-flight"]
)
def test_entry_in_flight_ends_for_its_readers_and_is_never_published(
    cache_dir: Path, spawn: Any, inline: bool, newer: bool
) -> None:
    """Invalidated while a reader in another process streams it: that reader gets every
    byte and a clean end, the producer finishes, and the entry is not published. With
    ``newer``, a fetch made a new entry of the key before the old producer ended: the
    old one's publish must not land over it."""
    wrote_first, go = spawn.Event(), spawn.Event()
    producer, pq = start(
        spawn,
        gated_producer,
        str(cache_dir),
        KEY,
        "old",
        TOTAL,
        CHUNK,
        inline,
        wrote_first,
        go,
    )
    cache = StreamCache(cache_dir, max_age=HOUR, cleanup_interval=0)
    try:
        assert wrote_first.wait(WAIT), "the producer's first write"
        attached, commands = spawn.Event(), spawn.Queue()
        reader, rq = start(spawn, commanded_reader, str(cache_dir), KEY, attached, commands)
        assert expect(rq, "attached", WAIT)[0] is False, "attached to the entry in flight"
        commands.put(str(CHUNK))
        assert expect(rq, "pos", WAIT) == (CHUNK,)

        assert cache.invalidate(KEY) is True
        assert index_records(cache_dir) == [], "no fetch attaches to it any more"
        assert data_files(cache_dir) == [], "its data file is unlinked at once"
        assert cache.peek(KEY) is None
        new_sha = payload_sha("new", TOTAL, CHUNK)
        if newer:
            assert _fetch_in_child(spawn, cache_dir, "new") == (new_sha, TOTAL, True)

        go.set()
        commands.put("all")
        assert expect(rq, "done", WAIT) == (payload_sha("old", TOTAL, CHUNK), TOTAL)
        assert expect(pq, "fetched", WAIT) == (payload_sha("old", TOTAL, CHUNK), TOTAL, True)
        assert expect(pq, "producers-done", WAIT) == (True,)
        for proc in (reader, producer):
            proc.join(WAIT)
            assert proc.exitcode == 0

        if newer:
            out = io.BytesIO()
            assert cache.fetch(KEY, out, _no_create) == (TOTAL, False), "the newer entry stays"
            assert out.getvalue() == payload_bytes("new", TOTAL, CHUNK)
        else:
            assert finished_entries(cache_dir) == [], "never published"
            assert _fetch_in_child(spawn, cache_dir, "new") == (new_sha, TOTAL, True)

        report = cache.gc()
        assert report.ran
        assert index_records(cache_dir) == []
        assert data_files(cache_dir) == finished_entries(cache_dir)
        assert len(finished_entries(cache_dir)) == 1, "only the new entry"
        assert ipc_objects(cache_dir) == []
    finally:
        go.set()
        cache.stop()


def test_unknown_key_is_not_dropped(cache_dir: Path) -> None:
    cache = StreamCache(cache_dir, cleanup_interval=0)
    try:
        assert cache.invalidate("never fetched") is False
        assert cache.fetch("other", io.BytesIO(), _writer(b"x")) == (1, True)
        assert cache.invalidate("never fetched") is False
        assert cache.fetch("other", io.BytesIO(), _no_create) == (1, False), "untouched"
    finally:
        cache.stop()


def test_every_cache_has_it(cache_dir: Path) -> None:
    inner = StreamCache(cache_dir, max_age=HOUR, cleanup_interval=0, registry=None)
    admitted = MinOccurrences(inner, 1, HOUR)
    logged = LoggingCache(admitted)
    try:
        out = io.BytesIO()
        assert logged.fetch(KEY, out, _writer(b"one")) == (3, True), "not yet admitted"
        assert logged.invalidate(KEY) is False, "nothing was stored"
        assert logged.fetch(KEY, out, _writer(b"two")) == (3, True), "admitted: stored"
        assert logged.fetch(KEY, out, _no_create) == (3, False)
        assert logged.invalidate(KEY) is True
        assert admitted.invalidate(KEY) is False
        out = io.BytesIO()
        assert logged.fetch(KEY, out, _writer(b"three")) == (5, True), "created afresh"
        assert out.getvalue() == b"three"
        assert admitted.invalidate(KEY) is True
        assert [e.created for e in logged.entries] == [True, True, False, True]
        assert NullCache().invalidate(KEY) is False
        assert LoggingCache(NullCache()).invalidate(KEY) is False
    finally:
        logged.stop()


def test_new_cache_has_it(cache_dir: Path) -> None:
    for cfg in (
        streamcache.Config(dir=cache_dir, min_occurrences=0),
        streamcache.Config(dir=cache_dir, enabled=False),
    ):
        with streamcache.new(cfg, registry=None) as cache:
            cache.fetch(KEY, io.BytesIO(), _writer(b"x"))
            assert cache.invalidate(KEY) is cfg.enabled
            assert cache.fetch(KEY, io.BytesIO(), _writer(b"x")).created is True


@pytest.mark.parametrize("kind", ["stream", "min", "logging", "null"])
def test_a_key_that_is_not_a_str_is_a_type_error(cache_dir: Path, kind: str) -> None:
    inner = StreamCache(cache_dir, cleanup_interval=0, registry=None)
    cache = {
        "stream": inner,
        "min": MinOccurrences(inner, 0, HOUR),
        "logging": LoggingCache(inner),
        "null": NullCache(),
    }[kind]
    try:
        for key in (b"k", 1, None):
            with pytest.raises(TypeError, match="key must be a str"):
                cache.invalidate(key)  # type: ignore[arg-type]
    finally:
        inner.stop()


def test_invalidation_is_counted(cache_dir: Path) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    cache = StreamCache(cache_dir, cleanup_interval=0, registry=registry)
    try:
        cache.fetch(KEY, io.BytesIO(), _writer(b"x"))
        assert cache.invalidate(KEY) is True
        assert cache.invalidate(KEY) is False
        labels = {"dir": str(cache_dir), "reason": "invalidated"}
        assert registry.get_sample_value("streamcache_evictions_total", labels) == 1
    finally:
        cache.stop()


def test_command_line(cache_dir: Path) -> None:
    cache = StreamCache(cache_dir, cleanup_interval=0, registry=None)
    try:
        cache.fetch(KEY, io.BytesIO(), _writer(b"x"))

        def run() -> subprocess.CompletedProcess[str]:
            argv = [sys.executable, "-m", "streamcache", "invalidate", "--dir", str(cache_dir)]
            return subprocess.run(
                [*argv, KEY], capture_output=True, text=True, timeout=WAIT, check=False
            )

        first, second = run(), run()
        assert (first.returncode, first.stderr) == (0, "")
        assert first.stdout == f"invalidate {cache_dir}: dropped the entry of {KEY!r}\n"
        assert (second.returncode, second.stderr) == (0, "")
        assert second.stdout == f"invalidate {cache_dir}: no entry of {KEY!r}\n"
        assert cache.fetch(KEY, io.BytesIO(), _writer(b"y")).created is True
    finally:
        cache.stop()
