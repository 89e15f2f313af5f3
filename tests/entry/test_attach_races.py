"""Readers attaching to an entry in flight: an attacher killed while it makes the entry's
IPC objects, and bytes written between an attach and the producer's next look for those
objects. Children live in tests/entry/procs_inline.py.
"""

from __future__ import annotations

import io
import signal
import threading
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import procs_inline
from helpers import finished_size, ipc_objects
from procs_inline import StartGated, get_report, read_exactly, start_child, wait_event

import ipc
from ipc.channel import unlink_channel
from streamcache import StreamCache
from streamcache.cache import LAYOUT, channel_base, key_hash
from streamcache.disk.index import Index

WAIT = 20.0
HOUR = 3600.0
KEY = "attach-race"


def _base(cache_dir: Path, key: str) -> str:
    rec = Index(str(cache_dir / LAYOUT)).read(key_hash(key))
    assert rec is not None, "the entry has a record while in flight"
    return channel_base(ipc.prefix_for(cache_dir), rec.file)


def _objects_of(cache_dir: Path, base: str) -> list[str]:
    return [name for name in ipc_objects(cache_dir) if name.startswith("/" + base)]


# -- an attacher killed while making the IPC objects -------------------------------------------


def test_objects_of_an_attacher_killed_halfway_do_not_outlive_the_entry(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    written, go = threading.Event(), threading.Event()
    result: list[Any] = []

    def create(w: Any) -> None:
        w.write(b"head ")
        written.set()
        if not go.wait(WAIT):
            raise RuntimeError("never released")
        w.write(b"tail")

    def produce() -> None:
        out = io.BytesIO()
        result.append((cache.fetch(KEY, out, create), out.getvalue()))

    producer = threading.Thread(target=produce)
    producer.start()
    base = ""
    try:
        wait_event(written, "the producer's first write")
        base = _base(cache_dir, KEY)
        proc, _ = start_child(spawn, procs_inline.attacher_killed_making_bells, str(cache_dir), KEY)
        proc.join(WAIT)
        assert proc.exitcode == -signal.SIGKILL
        assert _objects_of(cache_dir, base), "the killed attacher left part of the objects"
        go.set()
        producer.join(WAIT)
        assert result and result[0][1] == b"head tail", result
        assert finished_size(cache_dir, KEY) == 9
        cache.gc()
        # This process (the producer) lives on, as a server does.
        assert _objects_of(cache_dir, base) == [], "objects of a finished entry leaked"
    finally:
        go.set()
        producer.join(WAIT)
        if base:
            unlink_channel(base)


def test_reader_after_an_attacher_killed_halfway_reads_the_entry(
    cache_dir: Path, spawn: SpawnContext, gated_producer: StartGated
) -> None:
    """The killed attacher's leftovers name a live producer; the next reader replaces them
    (it may not open them) and the producer, which could not open the partial set, finds
    the new one and publishes to it: the reader gets every byte and the end."""
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    producer = gated_producer(KEY)
    base = _base(cache_dir, KEY)
    proc, _ = start_child(spawn, procs_inline.attacher_killed_making_bells, str(cache_dir), KEY)
    proc.join(WAIT)
    assert proc.exitcode == -signal.SIGKILL
    assert _objects_of(cache_dir, base), "the killed attacher left part of the objects"
    with cache.stream(KEY, procs_inline.forbidden_create, timeout=WAIT) as s:
        assert not s.created
        assert read_exactly(s, 5) == b"head "
        producer.go.set()
        assert s.read() == b"tail"
    assert get_report(producer.out) == ("ok", 9, True)
    producer.proc.join(WAIT)
    assert _objects_of(cache_dir, base) == []


# -- bytes written between an attach and the producer's next look ------------------------------


def test_bytes_written_after_an_attach_reach_the_reader_while_create_blocks(
    cache_dir: Path, gated_producer: StartGated
) -> None:
    producer = gated_producer(KEY, tail_gate=True, discovery_interval=HOUR)
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    with cache.stream(KEY, procs_inline.forbidden_create, timeout=3.0) as s:
        assert read_exactly(s, 5) == b"head "
        producer.go.set()
        wait_event(producer.wrote_tail, "the producer's second write")
        try:
            tail = read_exactly(s, 4)
        except TimeoutError:
            tail = b""
        assert tail == b"tail", "the written tail never reached the attached reader"
        producer.hold.set()
        assert s.read() == b""
    assert get_report(producer.out) == ("ok", 9, True)
