"""Child-process functions for tests/test_review.py (spawn context).

Each child reports through a multiprocessing queue ``out`` (``("error", traceback)`` on an
unexpected exception, via :func:`xproc.reporting`); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
import threading
import time
from typing import Any

from xproc import WAIT, HashSink, forbidden_create, payload_chunk, reporting

import ipc
import streamcache
from streamcache.cache import LAYOUT, key_hash
from streamcache.index import Index


def _thread_syscall(native_id: int) -> str:
    """The number of the system call thread ``native_id`` of this process is blocked in."""
    try:
        with open(f"/proc/self/task/{native_id}/syscall") as f:
            return f.read().split()[0]
    except OSError:
        return ""


def _in_doorbell_wait(frame: Any) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "wait" and code.co_filename.endswith(("doorbell.py", "futex.py")):
            return True
        frame = frame.f_back
    return False


_FUTEX = "202" if os.uname().machine == "x86_64" else "98"  # x86_64 / aarch64


@reporting
def cancelled_astream_reader(dir: str, key: str, first: int, *, out: Any) -> None:
    """Attach to ``key`` with astream, read ``first`` bytes, start a read that must wait for
    the producer, cancel it (as an ASGI server does when the client disconnects) and leave
    the ``async with``: the close runs in another worker thread while the first one still
    sleeps on the readers' doorbell."""
    cache = streamcache.StreamCache(dir, liveness=0.5, cleanup_interval=0)

    async def main() -> None:
        async with cache.astream(key, forbidden_create) as s:
            got = b""
            while len(got) < first:
                got += await s.read(first - len(got))
            source = s._require()._source  # the PipeReader: its slot shows "waiting"
            seg, slot = source._seg, source._slot
            assert slot is not None
            loop = asyncio.get_running_loop()
            task = asyncio.create_task(s.read(10))
            # The read runs in the default executor's only thread; wait (bounded) until it
            # is asleep in the semaphore wait: its slot says "waiting" and the thread is in
            # futex(2) on three polls in a row while this thread leaves the GIL free.
            deadline = time.monotonic() + WAIT
            seen = 0
            while seen < 3:
                if time.monotonic() > deadline:
                    raise TimeoutError("the read never went to sleep on the doorbell")
                await asyncio.sleep(0.002)
                threads = list(loop._default_executor._threads)  # type: ignore[union-attr]
                waiting = seg._words[64 + slot * 8 + 2]
                # The executor may hold an idle thread too (also in futex): look for the
                # one whose Python stack is inside the doorbell's wait.
                frames = sys._current_frames()
                asleep = any(
                    _in_doorbell_wait(frames.get(t.ident or 0))
                    and _thread_syscall(t.native_id or 0) == _FUTEX
                    for t in threads
                )
                seen = seen + 1 if waiting and asleep else 0
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            out.put(("cancelled",))
        # __aexit__ closed the stream in a second worker thread; the first one's wait
        # times out (liveness) while this process lives on.
        out.put(("closed",))

    asyncio.run(main())  # shutdown waits for the executor's threads
    out.put(("survived",))


@reporting
def fork_while_locked(dir: str, key_hash: str, *, out: Any) -> None:
    """A thread holds ``key_hash``'s index stripe; meanwhile the main thread forks a child
    that merely lives on (a pool worker, a subprocess before exec). The test then SIGKILLs
    this process while its thread is still inside the critical section."""
    index = Index(os.path.join(dir, LAYOUT))
    locked = threading.Event()
    never = threading.Event()

    def hold() -> None:
        with index.locked(key_hash, WAIT):
            locked.set()
            never.wait(WAIT * 2)

    threading.Thread(target=hold, daemon=True).start()
    if not locked.wait(WAIT):
        raise TimeoutError("the thread never took the lock")
    pid = os.fork()
    if pid == 0:  # the forked child: does nothing with the cache, just lives
        try:
            time.sleep(WAIT)
        finally:
            os._exit(0)
    out.put(("forked", pid))
    never.wait(WAIT * 2)


@reporting
def emfile_fetch(dir: str, key: str, *, out: Any) -> None:
    """Fetch ``key`` (in flight in another process) with exactly one free descriptor, as a
    busy server near its RLIMIT_NOFILE does; report whether the live record survived."""
    cache = streamcache.StreamCache(dir, liveness=0.2, cleanup_interval=0)
    index = Index(os.path.join(dir, LAYOUT))
    h = key_hash(key)
    # Warm up every import and code path first, so no lazy open happens below.
    cache.fetch("warm-up", HashSink(), lambda w: w.write(b"x"), timeout=WAIT)
    assert index.read(h) is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The lowest free descriptor number f and the next one g: with the limit at g, f is
    # the only descriptor this process can still open.
    f = os.open(os.devnull, os.O_RDONLY)
    g = os.open(os.devnull, os.O_RDONLY)
    os.close(f)
    os.close(g)
    outcome = "attached"
    resource.setrlimit(resource.RLIMIT_NOFILE, (g, hard))  # one descriptor left
    try:
        with cache.stream(key, forbidden_create, timeout=5):
            pass
    except BaseException as exc:  # any failure is acceptable here
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    rec = index.read(h)
    out.put(("outcome", outcome, rec is not None))


@reporting
def killed_between_record_and_segment(
    dir: str, key: str, chunk: int, wrote: Any, release: Any, *, out: Any
) -> None:
    """Create ``key`` (one chunk, then wait for ``release``) and die by SIGKILL exactly after
    the entry is published as finished and before the segment says "done": when the
    producer thread enters
    ``Segment.finish`` (a profile hook, i.e. kill -9 at that instruction)."""
    cache = streamcache.StreamCache(dir, liveness=0.2, cleanup_interval=0)
    finish_code = ipc.Segment.finish.__code__

    def die_at_finish(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is finish_code:
            os.kill(os.getpid(), signal.SIGKILL)

    def create(w: Any) -> None:
        sys.setprofile(die_at_finish)  # this (the producer) thread only
        w.write(payload_chunk("rs", 0, chunk))
        wrote.set()
        if not release.wait(WAIT):
            raise TimeoutError("never released")

    s = cache.stream(key, create, timeout=WAIT)
    out.put(("created", s.created))
    # Our own reader leaves; the test's reader keeps the entry alive.
    if not release.wait(WAIT):
        raise TimeoutError("never released")
    s.close()
    time.sleep(WAIT)  # the producer thread SIGKILLs this process
