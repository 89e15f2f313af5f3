"""Deadlines: a call's ``timeout`` turned into a point on the monotonic clock."""

from __future__ import annotations

import math
import time

# A finite timeout longer than this is effectively no deadline: it is clamped here, so
# no wait derived from it (a lock's, a poll's, a queue's) overflows a platform limit.
MAX_TIMEOUT = 365.0 * 24 * 3600


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds (clamped to :data:`MAX_TIMEOUT`), or None for no deadline.

    TypeError for anything but None or a real number; ValueError for a negative, NaN
    or infinite one (None is how to ask for no deadline).
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be seconds or None, not {type(timeout).__name__}")
    if isinstance(timeout, int):  # any size: float() of a huge int would overflow
        timeout = min(timeout, MAX_TIMEOUT)
    seconds = float(timeout)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"timeout must be finite seconds >= 0 (None for no deadline), got {timeout!r}"
        )
    return min(seconds, MAX_TIMEOUT)


def deadline_for(timeout: object) -> float | None:
    """The monotonic time at which ``timeout`` (checked by :func:`check_timeout`) passes."""
    seconds = check_timeout(timeout)
    return None if seconds is None else time.monotonic() + seconds


def remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("streamcache: timeout passed")
    return left
