"""Child-process functions for tests/entry/test_producer_death.py (spawn context).

Each child reports through a multiprocessing queue ``out`` (``("error", traceback)`` on an
unexpected exception, via :func:`xproc.reporting`); every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from xproc import WAIT, payload_chunk, reporting

import ipc
import streamcache


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
