"""Closing a stream while another thread of its process is inside a read on it: an astream
read cancelled while it sleeps on the doorbell, and close() racing the end of a read.
Children live in tests/entry/procs_reader_close.py and tests/entry/procs_inline.py.
"""

from __future__ import annotations

import inspect
import queue
import sys
import threading
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from pathlib import Path
from types import FrameType
from typing import Any

import procs_inline
import procs_reader_close
import xproc
from helpers import wait_until
from procs_inline import StartGated, get_report, read_exactly, wait_event
from xproc import expect

from streamcache import StreamCache
from streamcache.entry.pipe import _Reader

WAIT = 20.0
HOUR = 3600.0
KEY = "reader-close"


def _drain(q: Any) -> list[tuple[Any, ...]]:
    msgs = []
    while True:
        try:
            msgs.append(q.get_nowait())
        except queue.Empty:
            return msgs


# -- astream cancelled while waiting: sem_close() under a sleeping thread ----------------------


def test_cancelled_astream_wait_does_not_crash_the_reader_process(
    cache_dir: Path, spawn: SpawnContext
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
        target=procs_reader_close.cancelled_astream_reader,
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


# -- close() racing the end of a read in another thread ----------------------------------------


def _pause_at(fn: Callable[..., Any], needle: str, paused: threading.Event, resume: Any) -> None:
    """In the calling thread, stop once at the line of ``fn`` holding ``needle``: set
    ``paused``, wait for ``resume`` (a breakpoint; the code runs unchanged)."""
    code = fn.__code__
    lines, first = inspect.getsourcelines(fn)
    target = next(first + i for i, line in enumerate(lines) if needle in line)

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == target:
            sys.settrace(None)
            frame.f_trace = None
            paused.set()
            resume.wait(WAIT)
        return local

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    sys.settrace(trace)


def test_close_racing_the_end_of_a_read_releases_the_slot(
    cache_dir: Path, gated_producer: StartGated
) -> None:
    # The creator's dst takes the head only: after the tail, this test's reader is the
    # entry's only reader. Window 0 (Gitaly's rule): the producer waits for that reader.
    producer = gated_producer(KEY, dst_ok=1, window=0)
    go, pout = producer.go, producer.out
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    paused, resume = threading.Event(), threading.Event()
    errors: dict[str, BaseException | None] = {}
    try:
        s = cache.stream(KEY, procs_inline.forbidden_create)
        assert read_exactly(s, 5) == b"head "

        def read() -> None:
            try:
                s.read(1)
                errors["read"] = None
            except BaseException as exc:
                errors["read"] = exc

        def close() -> None:
            _pause_at(_Reader.close, "self._leave()", paused, resume)
            try:
                s.close()
                errors["close"] = None
            except BaseException as exc:
                errors["close"] = exc
            finally:
                sys.settrace(None)

        reader = threading.Thread(target=read)
        reader.start()
        source = s._source
        wait_until(lambda: source._busy == 1, "the reading thread to be inside read()")
        closer = threading.Thread(target=close)
        closer.start()
        wait_event(paused, "close() to reach _leave")
        # The reading thread wakes on its timed wait (liveness), sees the stream closed
        # and leaves read(), releasing the reader's mappings and descriptor.
        reader.join(WAIT)
        assert not reader.is_alive()
        resume.set()
        closer.join(WAIT)
        assert isinstance(errors["read"], ValueError), errors
        problems = []
        if errors["close"] is not None:
            problems.append(f"close() raised {errors['close']!r}")
        go.set()
        # The producer writes the tail; its dst fails; no reader is left: the entry fails.
        try:
            outcome: tuple[Any, ...] = get_report(pout, 5.0)
        except AssertionError:
            outcome = ("no outcome: the producer waits for the closed reader",)
        if outcome[0] != "ConnectionResetError":
            problems.append(repr(outcome))
        assert not problems, problems
    finally:
        resume.set()
