"""Deadlines: a call's ``timeout`` turned into a point on the monotonic clock."""

from __future__ import annotations

import time


def deadline_for(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be seconds or None, not {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError("timeout must be >= 0")
    return time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("streamcache: timeout passed")
    return left
