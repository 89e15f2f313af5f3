"""One injectable clock: wall time, monotonic time and sleep, passed down as one object.

Tests swap it for a fake so nothing waits for real minutes (Gitaly's
``newCacheWithSleep`` injects its sleep the same way). Every layer that reads the
time takes the clock it was given; none calls :mod:`time` for a reading. A wait
that blocks in the kernel (a futex, a semaphore, poll, a queue) still needs a
real timeout: it is derived from a deadline minus the clock's ``monotonic()``, and
the clock is read again when the wait returns. The kernel's own clock is
:data:`SYSTEM`: the one of ``futex_waitv``'s absolute timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ipc.tuples import NamedTuple


class Clock(NamedTuple):
    """``wall``: epoch seconds (expiry times); ``monotonic``: seconds for deadlines and
    liveness checks (one clock for every process of the host on Linux); ``sleep``."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


SYSTEM = Clock()


def clock_of(clock: Clock | Callable[[], float]) -> Clock:
    """``clock`` as a :class:`Clock`: a plain function is the wall clock (epoch
    seconds), with the system's monotonic time and sleep."""
    if isinstance(clock, Clock):
        return clock
    if not callable(clock):
        raise TypeError(f"clock must be an ipc.Clock or a function, not {type(clock).__name__}")
    return Clock(wall=clock)
