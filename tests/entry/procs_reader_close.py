"""Child-process functions for tests/entry/test_reader_close.py (spawn context).

Each child reports through a multiprocessing queue ``out`` (``("error", traceback)`` on an
unexpected exception, via :func:`xproc.reporting`); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from xproc import WAIT, forbidden_create, reporting

import streamcache
from ipc.hub import hub


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
    the ``async with``: the close unmaps the channel that the process's waiting thread
    (ipc.hub) was watching for that read."""
    cache = streamcache.StreamCache(dir, liveness=0.5, cleanup_interval=0)

    async def main() -> None:
        async with cache.astream(key, forbidden_create) as s:
            got = b""
            while len(got) < first:
                got += await s.read(first - len(got))
            source = s._require()._source  # the PipeReader: its slot shows "waiting"
            seg, slot = source._seg, source._slot
            assert slot is not None
            task = asyncio.create_task(s.read(10))
            # Wait (bounded) until the read is parked in the hub: its slot says
            # "waiting" and the hub watches it.
            deadline = time.monotonic() + WAIT
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError("the read never went to the waiting thread")
                await asyncio.sleep(0.002)
                info = seg.slot_info(slot.index)
                if info is not None and info.waiting and hub().watching == 1:
                    break
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            out.put(("cancelled",))
        if hub().watching != 0:
            raise AssertionError("the closed stream's wait is still watched")
        out.put(("closed",))

    asyncio.run(main())  # shutdown waits for the executor's threads
    out.put(("survived",))
