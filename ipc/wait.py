"""The liveness-aware wait: when a waiter next checks on the other side.

A waiter (a reader waiting for bytes, a producer held back by its readers) sleeps on
a bell that the other side rings. Rings, handled signals (EINTR), other sleepers
leaving and spurious wake-ups all end a sleep early. If each wake-up restarted the
waiter's "check liveness after ``period`` of silence" timer, a steady drizzle of
wake-ups would postpone the check forever: a reader under gunicorn's SIGUSR1 never
noticed its killed producer, and 16 readers of a killed producer noticed one after
another as each one's exit rang the others awake.

Invariant kept here: ``next_check`` is an absolute time that moves only when a check
falls due (:meth:`Waiter.check_due`), never on a wake-up, and no sleep lasts past it
(:meth:`Waiter.sleep_limit`). So however often the waiter is woken, it checks the
other side at least every ``period`` seconds of waiting. Like trio's ParkingLot,
the one small object that owns the tricky part of the wait; the loops that use it are
in :mod:`ipc.channel`.
"""

from __future__ import annotations

import enum

from ipc.clock import SYSTEM, Clock


class Wake(enum.Enum):
    """Why a wait ended."""

    PROGRESS = "progress"  # what the waiter waits for may have happened: re-check it
    CHECK = "check"  # the liveness check fell due: check the other side, then wait again
    DEADLINE = "deadline"  # the caller's deadline passed


class Waiter:
    """The next-check deadline of one waiter (one reader, or one producer)."""

    __slots__ = ("clock", "next_check", "period")

    def __init__(self, period: float, clock: Clock = SYSTEM) -> None:
        if not period > 0:
            raise ValueError("period must be > 0")
        self.period = period
        self.clock = clock
        self.next_check = clock.monotonic() + period

    def check_due(self, now: float | None = None) -> bool:
        """True (and the next check scheduled) once ``next_check`` has passed; ``now``
        is a reading of ``clock.monotonic`` the caller already took, if any."""
        if now is None:
            now = self.clock.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + self.period
        return True

    def sleep_limit(self, now: float, deadline: float | None) -> float:
        """How long a sleep starting at ``now`` may last: until the next check or
        ``deadline``, whichever comes first. Callers take ``now`` once and ask
        :meth:`check_due` with it first, so a positive limit is never mistaken for a
        passed deadline (time moves between two readings of the clock)."""
        end = self.next_check if deadline is None else min(self.next_check, deadline)
        return end - now
