"""A producer SIGKILLed at a chosen point: what its readers get, what stays of the entry,
and what a cleanup pass leaves. Children live in tests/entry/procs_producer_death.py and
tests/entry/procs_inline.py.
"""

from __future__ import annotations

import io
import os
import signal
from multiprocessing.context import SpawnContext
from pathlib import Path

import procs_inline
import procs_producer_death
import pytest
import xproc
from helpers import finished_size, index_records, ipc_objects, writing
from procs_inline import StartGated, read_exactly, wait_event
from xproc import payload_chunk

import streamcache
from streamcache import StreamCache
from streamcache.cache import LAYOUT

WAIT = 20.0
HOUR = 3600.0
KEY = "producer-death"


# -- producer killed after the record says done, before the segment does -----------------------


def test_finished_record_survives_producer_killed_before_segment_done(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    wrote, release, out = spawn.Event(), spawn.Event(), spawn.Queue()
    producer = spawn.Process(
        target=procs_producer_death.killed_between_record_and_segment,
        args=(str(cache_dir), "k", 1000, wrote, release),
        kwargs={"out": out},
    )
    producer.start()
    assert wrote.wait(WAIT)
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    with cache.stream("k", xproc.forbidden_create, timeout=WAIT) as s:
        assert s.read(1000) == payload_chunk("rs", 0, 1000)
        release.set()
        producer.join(WAIT)
        assert producer.exitcode == -signal.SIGKILL
        assert finished_size(cache_dir, "k") == 1000  # killed in between
        # A fetch now is a hit on the finished entry.
        hit = io.BytesIO()
        assert cache.fetch("k", hit, xproc.forbidden_create, timeout=WAIT) == (1000, False)
        try:
            rest = s.read()
        except streamcache.ProducerDied:
            rest = b""
        assert rest == b""
    assert finished_size(cache_dir, "k") == 1000, "the finished entry was evicted"
    hit = io.BytesIO()
    assert cache.fetch("k", hit, xproc.forbidden_create, timeout=WAIT) == (1000, False)


# -- the producer killed between publishing the entry and removing its record ------------------


def test_reader_of_an_entry_published_just_before_the_kill_gets_it_all(
    cache_dir: Path, gated_producer: StartGated
) -> None:
    producer = gated_producer(KEY, die_after_publish=True)
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    got = b""
    with cache.stream(KEY, procs_inline.forbidden_create, timeout=WAIT) as s:
        got += read_exactly(s, 5)
        producer.go.set()
        try:
            got += s.read()
            error = None
        except streamcache.CreateError as exc:
            error = exc
    producer.proc.join(WAIT)
    assert producer.proc.exitcode == -signal.SIGKILL
    assert finished_size(cache_dir, KEY) == 9, "the entry was published complete"
    assert error is None, f"the reader of a complete entry got {error!r}"
    assert got == b"head tail"


# -- a reader past the published offset --------------------------------------------------------


def test_reader_past_the_published_offset_still_learns_the_producer_died(
    cache_dir: Path, gated_producer: StartGated
) -> None:
    """A reader that has read bytes found in the file beyond the published offset (as in
    test_attach_races.py::test_bytes_written_after_an_attach_reach_the_reader_while_create_
    blocks); if the producer is then SIGKILLed, the reader still notices (ProducerDied)
    instead of waiting for an offset that will never rise."""
    producer = gated_producer(KEY, tail_gate=True, discovery_interval=HOUR)
    proc = producer.proc
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    with cache.stream(KEY, procs_inline.forbidden_create, timeout=WAIT) as s:
        assert read_exactly(s, 5) == b"head "
        producer.go.set()
        wait_event(producer.wrote_tail, "the producer's second write")
        assert read_exactly(s, 4) == b"tail"
        # (Its Events are never set after this: a multiprocessing Event's set() waits
        # for every sleeper to wake, and a killed one never does.)
        os.kill(proc.pid or 0, signal.SIGKILL)
        proc.join(WAIT)
        with pytest.raises(streamcache.ProducerDied):
            s.read()
    cache.gc()


# -- a killed inline producer with an attached reader ------------------------------------------


def test_gc_after_killed_inline_producer_with_attached_reader_leaves_nothing(
    cache_dir: Path, gated_producer: StartGated
) -> None:
    """An inline producer SIGKILLed after a reader made its IPC objects: the reader learns
    of the death (ProducerDied), and a cleanup pass leaves no object and no file."""
    proc = gated_producer(KEY).proc
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    with cache.stream(KEY, procs_inline.forbidden_create, timeout=WAIT) as s:
        assert read_exactly(s, 5) == b"head "
        assert ipc_objects(cache_dir), "the attaching reader made the objects"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(WAIT)
        with pytest.raises(streamcache.ProducerDied):
            s.read()
    cache.gc()
    assert ipc_objects(cache_dir) == []
    assert index_records(cache_dir) == []
    assert not list((cache_dir / LAYOUT).glob("data/*/*"))
    sink = io.BytesIO()
    assert cache.fetch(KEY, sink, writing(b"again")) == (5, True)
