"""Adversarial review of the cross-process protocol (DESIGN.md sections 3, 4 and 6).

Each test shows one problem found in review; while the library has it, the test is an
xfail(strict=True) whose reason starts with "BUG:". Children live in tests/review_procs.py.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import review_procs
import xproc
from conftest import ipc_objects
from helpers import finished_size
from xproc import expect, payload_chunk

import ipc
import streamcache
from streamcache.cache import LAYOUT, Producer, ipc_base, key_hash
from streamcache.index import Index
from streamcache.pipe import PipeReader, unlink_entry_ipc

WAIT = 20.0


def _index(cache_dir: Path) -> Index:
    return Index(str(cache_dir / LAYOUT))


def _drain(q: Any) -> list[tuple[Any, ...]]:
    msgs = []
    while True:
        try:
            msgs.append(q.get_nowait())
        except queue.Empty:
            return msgs


# -- 1. astream cancelled while waiting: sem_close() under a sleeping thread -----------------


def test_cancelled_astream_wait_does_not_crash_the_reader_process(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    wrote, pout, rout = spawn.Event(), spawn.Queue(), spawn.Queue()
    producer = spawn.Process(
        target=xproc.stuck_producer,
        args=(str(cache_dir), "k", "seed", 1000, wrote),
        kwargs={"out": pout},
    )
    producer.start()
    assert wrote.wait(WAIT)
    reader = spawn.Process(
        target=review_procs.cancelled_astream_reader,
        args=(str(cache_dir), "k", 1000),
        kwargs={"out": rout},
    )
    reader.start()
    expect(rout, "cancelled")
    reader.join(WAIT)
    msgs = _drain(rout)
    assert not any(m[0] == "error" for m in msgs), msgs
    producer.kill()
    producer.join(5)
    assert reader.exitcode == 0, f"reader process ended with {reader.exitcode}; said {msgs}"


# -- 2. an exception whose str() raises: the entry never leaves "writing" --------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


def _raise_unprintable(w: Any) -> None:
    w.write(b"partial")
    raise Unprintable()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_create_raising_unprintable_exception_fails_readers(cache_dir: Path) -> None:
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    try:
        with pytest.raises(streamcache.CreateError):
            cache.fetch("k", io.BytesIO(), _raise_unprintable, timeout=3)
    finally:
        cache.wait_producers(5)


# -- 3. fork inside another thread's critical section, then kill -9 of the parent -----------


# Not a bug with the filelock in use: its fork hooks close the held descriptors in the
# child. Kept as a regression test (a filelock without them would hang the stripe).
def test_stripe_is_free_after_holder_killed_even_if_it_forked(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    streamcache.StreamCache(cache_dir, cleanup_interval=0)  # creates the layout
    h = key_hash("k")
    out = spawn.Queue()
    holder = spawn.Process(
        target=review_procs.fork_while_locked, args=(str(cache_dir), h), kwargs={"out": out}
    )
    holder.start()
    (grandchild,) = expect(out, "forked")
    try:
        os.kill(holder.pid, signal.SIGKILL)
        # Wait for its death without join(): the grandchild inherited the end of the
        # pipe join() watches, so join() would wait for the grandchild too.
        os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)
        # The holder is dead; its forked child never touched the cache.
        with _index(cache_dir).locked(h, 3):
            pass
    finally:
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass
    holder.join(WAIT)
    assert holder.exitcode == -signal.SIGKILL


# -- 4. readers beyond the slots are not counted: they fail when the slotted ones leave ------


def test_unslotted_reader_reads_everything_without_stealing_rings(cache_dir: Path) -> None:
    """A reader beyond the slots (reader_slots=4 here; 16384 by default) reads every
    byte by polling, and the slotted readers, woken by the doorbell, lose no ring to it
    (with window=0 each write waits for one of them)."""
    cache = streamcache.StreamCache(cache_dir, window=0, reader_slots=4, cleanup_interval=0)
    data = bytes(range(256)) * 64

    def create(w: Any) -> None:
        for i in range(0, len(data), 256):
            w.write(data[i : i + 256])

    streams = [cache.stream("k", create, timeout=WAIT)]
    try:
        for _ in range(3):
            streams.append(cache.stream("k", xproc.forbidden_create, timeout=WAIT))
        overflow = cache.stream("k", xproc.forbidden_create, timeout=WAIT)
        src = overflow._source
        assert isinstance(src, PipeReader) and src._slot is None
        results: list[bytes] = []
        threads = [
            threading.Thread(target=lambda s=s: results.append(s.read()))
            for s in [*streams, overflow]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert results == [data] * 5
    finally:
        for s in [*streams, overflow]:
            s.close()
        assert cache.wait_producers(WAIT)


# -- 5. EMFILE taken for "no record": a live in-flight record is deleted ---------------------


def test_fd_exhaustion_does_not_remove_a_live_record(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    wrote, release, pout, out = spawn.Event(), spawn.Event(), spawn.Queue(), spawn.Queue()
    producer = spawn.Process(
        target=xproc.slow_producer,
        args=(str(cache_dir), "k", "seed", 2000, 1000, wrote, release),
        kwargs={"out": pout},
    )
    producer.start()
    try:
        assert wrote.wait(WAIT)
        child = spawn.Process(
            target=review_procs.emfile_fetch, args=(str(cache_dir), "k"), kwargs={"out": out}
        )
        child.start()
        outcome, present = expect(out, "outcome")
        child.join(WAIT)
        assert present, f"the in-flight record is gone after: {outcome}"
    finally:
        release.set()
        producer.join(WAIT)


# -- 6. producer killed after the record says done, before the segment does ------------------


def test_finished_record_survives_producer_killed_before_segment_done(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    wrote, release, out = spawn.Event(), spawn.Event(), spawn.Queue()
    producer = spawn.Process(
        target=review_procs.killed_between_record_and_segment,
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


# -- 7. an exception between publishing the record and starting the producer thread ---------


class RequestDeadline(Exception):
    pass


def _deadline_handler(signum: int, frame: Any) -> None:
    raise RequestDeadline("the request's alarm fired")


def test_exception_before_producer_start_leaves_nothing_behind(cache_dir: Path) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    start_code = Producer.start.__code__

    def alarm_at_start(frame: Any, event: str, arg: Any) -> None:
        # A real signal at this instruction, as a request-timeout alarm would deliver it.
        if event == "call" and frame.f_code is start_code:
            os.kill(os.getpid(), signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, _deadline_handler)
    sys.setprofile(alarm_at_start)
    try:
        with pytest.raises(RequestDeadline):
            cache.stream("k", xproc.writer_of("x", 1000, 100), timeout=WAIT)
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGUSR1, old)
    h = key_hash("k")
    orphan = _index(cache_dir).read(h)
    try:
        sink = io.BytesIO()
        assert cache.fetch("k", sink, xproc.writer_of("y", 1000, 100), timeout=WAIT) == (
            1000,
            True,
        )
        assert sink.getvalue() == xproc.payload_bytes("y", 1000, 100)
        assert cache.wait_producers(WAIT)
        cache.gc()
        assert ipc_objects(cache_dir) == []
    finally:
        # Remove what the orphan leaves behind: its producer is this live process, so
        # neither gc nor the leak check would.
        if orphan is not None:
            unlink_entry_ipc(ipc_base(ipc.prefix_for(cache_dir), orphan.file))
        with cache._mutex:
            cache._producers = {p for p in cache._producers if p.thread is not None}
