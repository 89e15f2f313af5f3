"""One injectable clock: wall time, monotonic time and sleep, passed down as one object.

Tests swap it for a fake so nothing waits for real minutes (Gitaly's
``newCacheWithSleep`` injects its sleep the same way). Every layer that reads the
time or sleeps takes the clock it was given; none calls :mod:`time` itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    """``wall``: epoch seconds (expiry times); ``monotonic``: seconds for deadlines and
    liveness checks (one clock for every process of the host on Linux); ``sleep``."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


SYSTEM = Clock()
