"""Child-process functions for tests/test_reader_close.py (spawn context).

Each child reports through a multiprocessing queue ``out`` (``("error", traceback)`` on an
unexpected exception, via :func:`xproc.reporting`); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import Any

from xproc import WAIT, forbidden_create, reporting

import streamcache


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
                info = seg.slot_info(slot.index)
                waiting = info is not None and info.waiting
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
