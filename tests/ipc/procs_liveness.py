"""Child processes for tests/ipc/test_liveness_under_wakeups.py (spawn context: module level).

Every child reports through its ``out`` queue and bounds every wait, so a library that
never notices a death fails the test instead of hanging it. Times are
``time.monotonic()``, which is one clock for every process of the host on Linux.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from xproc import WAIT, forbidden_create, payload_chunk, read_head, reporting

import streamcache

CHUNK = 64 * 1024


def _ignore_usr1() -> None:
    """A handled (not ignored) SIGUSR1, like gunicorn's: it interrupts system calls."""
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)


@reporting
def stalled_producer(dir: str, key: str, liveness: float, wrote_first: Any, *, out: Any) -> None:
    """Create ``key`` with ``stream()``, write one chunk and never finish (the test
    SIGKILLs this process). The creator's own stream is closed, so only other processes
    read."""
    cache = streamcache.StreamCache(dir, liveness=liveness, cleanup_interval=0)
    never = threading.Event()

    def create(w: Any) -> None:
        w.write(payload_chunk(key, 0, CHUNK))
        wrote_first.set()
        never.wait(WAIT * 2)
        raise TimeoutError("the test did not kill the producer")

    with cache.stream(key, create, timeout=WAIT * 2) as s:
        read_head(s, CHUNK)
        out.put(("created", s.created))
        never.wait(WAIT * 2)


@reporting
def waiting_reader(dir: str, key: str, liveness: float, *, out: Any) -> None:
    """Attach to ``key`` in the main thread (so the handled SIGUSR1 the test sends
    interrupts its waits), read the first chunk, then wait for more and report how and
    when the stream ended."""
    _ignore_usr1()
    cache = streamcache.StreamCache(dir, liveness=liveness, cleanup_interval=0)
    with cache.stream(key, forbidden_create, timeout=WAIT) as s:
        head = read_head(s, CHUNK)
        out.put(("first", len(head)))
        try:
            for _ in s:
                pass
        except streamcache.ProducerDied:
            out.put(("ended", "ProducerDied", time.monotonic()))
            return
        except BaseException as exc:
            out.put(("ended", type(exc).__name__, time.monotonic()))
            return
    out.put(("ended", "eof", time.monotonic()))


@reporting
def window0_producer(dir: str, key: str, liveness: float, go_alone: Any, *, out: Any) -> None:
    """Create ``key`` with window=0 in a producer thread that writes until its readers are
    gone. The creator's own stream closes when the test sets ``go_alone`` (another
    process has attached by then), and the main thread blocks SIGUSR1, so the test's
    signals interrupt the producer thread's back-pressure wait. Reports when create's
    write raised BrokenPipeError."""
    _ignore_usr1()
    cache = streamcache.StreamCache(dir, window=0, liveness=liveness, cleanup_interval=0)
    broken = threading.Event()
    ended: list[float] = []

    def create(w: Any) -> None:
        i = 0
        try:
            while True:
                w.write(payload_chunk(key, i, CHUNK))
                i += 1
        except BrokenPipeError:
            ended.append(time.monotonic())
            broken.set()
            raise

    s = cache.stream(key, create, timeout=WAIT)
    read_head(s, CHUNK)
    out.put(("created", s.created))
    if not go_alone.wait(WAIT):
        raise TimeoutError("the test never let the reader go alone")
    s.close()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    out.put(("alone",))
    if broken.wait(WAIT * 2):
        out.put(("broken", ended[0]))
    else:
        out.put(("still blocked",))
    cache.wait_producers(WAIT)


@reporting
def attached_reader(dir: str, key: str, liveness: float, *, out: Any) -> None:
    """Attach to ``key``, read one chunk, report, then stop reading (the test kills it)."""
    cache = streamcache.StreamCache(dir, liveness=liveness, cleanup_interval=0)
    with cache.stream(key, forbidden_create, timeout=WAIT) as s:
        read_head(s, CHUNK)
        out.put(("attached",))
        threading.Event().wait(WAIT * 2)
