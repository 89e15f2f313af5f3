"""Signals with a Python handler during a doorbell wait: readers and producers carry on.

Found by the chaos driver (tools/chaos.py), isolated here into deterministic tests.

Signals during a doorbell wait: ``posix_ipc.Semaphore.acquire`` raises
``posix_ipc.SignalError`` when a signal with a Python handler interrupts
``sem_timedwait`` (EINTR). ``ipc.Doorbell.wait`` catches only ``BusyError``, so the
SignalError escapes from a reader's ``read``/``fetch`` (an undocumented exception) or
from the producer's ``write`` (the entry fails with "CreateError: SignalError: ...").
Servers install such handlers in their workers (gunicorn: SIGUSR1 to reopen logs,
SIGHUP, SIGWINCH...), so a log rotation fails every request waiting on a doorbell at
that moment. The chaos driver found it by sending SIGUSR1 (faulthandler's stack dump)
to a worker whose reader was waiting.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import open_segment

import streamcache
from ipc.segment import Segment
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.index import Index

KEY = "signal-during-wait"


def _segment_of(cache_dir: str, deadline: float) -> Segment:
    index = Index(str(Path(cache_dir) / LAYOUT))
    while True:
        rec = index.read(key_hash(KEY))
        if rec is not None:
            return open_segment(cache_dir, rec)
        if time.monotonic() > deadline:
            raise TimeoutError("no record of the entry")
        time.sleep(0.001)


def _signal_while(cond: Callable[[], bool], thread_id: int, deadline: float) -> int:
    """Send SIGUSR1 to ``thread_id`` five times while ``cond()`` holds (it says the
    thread sleeps on a doorbell for up to 5 s). Returns how many were sent."""
    sent = 0
    while sent < 5 and time.monotonic() < deadline:
        if cond():
            signal.pthread_kill(thread_id, signal.SIGUSR1)
            sent += 1
            time.sleep(0.02)  # spacing between signals, not a synchronisation
        else:
            time.sleep(0.001)
    return sent


def reader_interrupted(cache_dir: str, out: Any) -> None:
    """Child: the main thread, a reader of an entry a thread of this process creates,
    waits on the channel for the producer's next write while SIGUSR1 (with a handler)
    arrives; it must still get every byte. (The creator's own stream() would take its
    bytes from the producer in process, never waiting on the channel.)"""
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    cache = streamcache.StreamCache(cache_dir, liveness=5.0, cleanup_interval=0)
    wrote_first, release = threading.Event(), threading.Event()
    main = threading.get_ident()

    def create(w: Any) -> None:
        w.write(b"a")
        wrote_first.set()
        release.wait(20)
        w.write(b"b")

    def creator() -> None:
        with contextlib.suppress(Exception), cache.stream(KEY, create, timeout=20) as s:
            s.read()

    def poke() -> None:
        deadline = time.monotonic() + 20
        try:
            seg = _segment_of(cache_dir, deadline)
            try:
                sent = _signal_while(
                    lambda: any(r.waiting for r in seg.reader_list()),
                    main,
                    deadline,
                )
                out.put(("signals", sent))
            finally:
                seg.close()
        finally:
            release.set()

    threading.Thread(target=creator, daemon=True).start()
    try:
        if not wrote_first.wait(20):
            raise TimeoutError("the creator never wrote")
        threading.Thread(target=poke, daemon=True).start()
        with cache.stream(KEY, forbidden, timeout=20) as s:
            data = s.read()
        out.put(("ok", data))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__module__}.{type(exc).__name__}: {exc}"))
        release.set()
    cache.wait_producers(20)


def forbidden(w: Any) -> None:
    raise AssertionError("the reader created instead of attaching")


def producer_interrupted(cache_dir: str, out: Any) -> None:
    """Child: the producer thread is blocked by back pressure (window 0, the reader has
    not read yet) while SIGUSR1 (with a handler) arrives; the entry must not fail."""
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    cache = streamcache.StreamCache(cache_dir, window=0, liveness=5.0, cleanup_interval=0)
    producer_thread: list[int] = []
    started, poked = threading.Event(), threading.Event()

    def create(w: Any) -> None:
        producer_thread.append(threading.get_ident())
        started.set()
        w.write(b"a")  # blocks until the reader has read it
        w.write(b"b")

    try:
        with cache.stream(KEY, create, timeout=20) as s:
            assert started.wait(20)
            deadline = time.monotonic() + 20
            seg = _segment_of(cache_dir, deadline)
            try:
                sent = _signal_while(lambda: seg.producer_waiting, producer_thread[0], deadline)
                out.put(("signals", sent))
            finally:
                seg.close()
            poked.set()
            data = s.read()
        out.put(("ok", data))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__module__}.{type(exc).__name__}: {exc}"))
    cache.wait_producers(20)


def _run_child(
    spawn: multiprocessing.context.SpawnContext, target: Callable[..., None], cache_dir: Path
) -> dict[str, Any]:
    """Run ``target`` in a child; its two reports ("signals" sent, and "ok" data or
    "error"), by tag."""
    out = spawn.Queue()
    child = spawn.Process(target=target, args=(str(cache_dir), out))
    child.start()
    results = dict([out.get(timeout=40), out.get(timeout=40)])
    child.join(30)
    assert child.exitcode == 0
    return results


def test_reader_survives_a_signal_while_waiting(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    streamcache.StreamCache(cache_dir, cleanup_interval=0)  # create the dir
    results = _run_child(spawn, reader_interrupted, cache_dir)
    assert results == {"signals": 5, "ok": b"ab"}


def test_producer_survives_a_signal_while_blocked(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    streamcache.StreamCache(cache_dir, cleanup_interval=0)
    results = _run_child(spawn, producer_interrupted, cache_dir)
    assert results == {"signals": 5, "ok": b"ab"}
