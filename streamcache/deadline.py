"""Deadlines: a call's ``timeout`` turned into a point on its cache's monotonic clock.

A :class:`Deadline` carries the clock it was read on, so whoever checks it reads the
same clock (a fake one in tests). A wait that blocks in the kernel (a queue, poll,
a thread's join) is given :func:`wait_limit` as its real timeout, at most
:data:`RECHECK`, and reads the deadline's clock again when it returns: a deadline
on a clock that runs apart from the kernel's is still seen within ``RECHECK``.
"""

from __future__ import annotations

import math

from ipc.clock import Clock
from ipc.tuples import NamedTuple

# A finite timeout longer than this is effectively no deadline: it is clamped here, so
# no wait derived from it (a lock's, a poll's, a queue's) overflows a platform limit.
MAX_TIMEOUT = 365.0 * 24 * 3600
# The longest a kernel wait lasts before the deadline's clock is read again.
RECHECK = 1.0


class Deadline(NamedTuple):
    """The reading ``at`` of ``clock.monotonic()`` at which a call's timeout passes."""

    at: float
    clock: Clock

    def left(self) -> float:
        """Seconds until it passes on its clock; 0 once it has."""
        return max(self.at - self.clock.monotonic(), 0.0)

    def limit(self) -> float:
        """The real timeout of one kernel wait towards it: :meth:`left`, at most
        :data:`RECHECK`."""
        return min(self.left(), RECHECK)

    def passed(self) -> bool:
        return self.clock.monotonic() >= self.at

    def on(self, clock: Clock) -> float:
        """The same instant as a reading of ``clock.monotonic()``."""
        if clock is self.clock:
            return self.at
        return clock.monotonic() + (self.at - self.clock.monotonic())


def check_timeout(timeout: object, name: str = "timeout") -> float | None:
    """``timeout`` as seconds (clamped to :data:`MAX_TIMEOUT`), or None for no deadline.

    TypeError for anything but None or a real number; ValueError for a negative, NaN
    or infinite one (None is how to ask for no deadline). ``name``: the argument's.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be seconds or None, not {type(timeout).__name__}")
    if isinstance(timeout, int):  # any size: float() of a huge int would overflow
        timeout = min(timeout, MAX_TIMEOUT)
    seconds = float(timeout)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"{name} must be finite seconds >= 0 (None for no deadline), got {timeout!r}"
        )
    return min(seconds, MAX_TIMEOUT)


def deadline_for(timeout: object, clock: Clock) -> Deadline | None:
    """When ``timeout`` (checked by :func:`check_timeout`) passes, on ``clock``."""
    seconds = check_timeout(timeout)
    return None if seconds is None else Deadline(clock.monotonic() + seconds, clock)


def check_idle(idle_timeout: object) -> float | None:
    """``idle_timeout`` checked as a timeout is (:func:`check_timeout`)."""
    return check_timeout(idle_timeout, "idle_timeout")


class Idle(NamedTuple):
    """A call's ``idle_timeout``: how long one wait for the entry's next bytes may last,
    on ``clock``. Each read that must wait takes :meth:`until` once, as it starts, so
    the silence is counted from the read's start however often the wait is woken; a
    read that gets a byte ends it. Waits for anything else (a slow dst) are not
    counted: the entry's silence only, like nginx's ``proxy_read_timeout``."""

    seconds: float
    clock: Clock

    def until(self, deadline: Deadline | None) -> Deadline:
        """The deadline of one wait for new bytes: ``seconds`` from now, or the call's
        ``deadline`` if that comes first."""
        idle = Deadline(self.clock.monotonic() + self.seconds, self.clock)
        return deadline if deadline is not None and deadline.at <= idle.on(deadline.clock) else idle

    def error(self) -> TimeoutError:
        return TimeoutError(
            f"streamcache: no new byte of the entry for {self.seconds:g} s (idle_timeout)"
        )


def idle_for(idle_timeout: object, clock: Clock) -> Idle | None:
    """``idle_timeout`` (checked by :func:`check_idle`) on ``clock``; None for none."""
    seconds = check_idle(idle_timeout)
    return None if seconds is None else Idle(seconds, clock)


def remaining(deadline: Deadline | None) -> float | None:
    """Seconds left until ``deadline`` (None: no deadline); TimeoutError once passed."""
    if deadline is None:
        return None
    left = deadline.at - deadline.clock.monotonic()
    if left <= 0:
        raise TimeoutError("streamcache: timeout passed")
    return left


def wait_limit(deadline: Deadline | None) -> float | None:
    """The real timeout of one kernel wait towards ``deadline`` (None: no deadline, no
    timeout): what is left on its clock, at most :data:`RECHECK`; 0 once it passed."""
    return None if deadline is None else deadline.limit()


def reading_on(deadline: Deadline | None, clock: Clock) -> float | None:
    """``deadline`` as a reading of ``clock.monotonic()`` (for :mod:`ipc`'s waits)."""
    return None if deadline is None else deadline.on(clock)
