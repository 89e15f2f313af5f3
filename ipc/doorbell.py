"""Doorbells: named POSIX semaphores used to wake a sleeper in another process.

A doorbell carries no data. A sleeper always re-checks the shared state it
waits on after every wake-up (a ring may be stale, or meant for another
sleeper), and every wait is timed, so a lost ring costs latency, never a hang.
"""

from __future__ import annotations

import time

import posix_ipc

_TIMED_WAITS: bool = posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED


class Doorbell:
    """A named semaphore. Create it with :meth:`create`, attach with :meth:`open`."""

    __slots__ = ("_sem", "name")

    def __init__(self, sem: posix_ipc.Semaphore, name: str) -> None:
        self._sem = sem
        self.name = name

    @classmethod
    def create(cls, name: str) -> Doorbell:
        """Create a new doorbell; fails with ``posix_ipc.ExistentialError`` if the name exists."""
        return cls(posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 0), name)

    @classmethod
    def open(cls, name: str) -> Doorbell:
        """Attach to an existing doorbell (``posix_ipc.ExistentialError`` if it is gone)."""
        return cls(posix_ipc.Semaphore(name, 0), name)

    def ring(self, times: int = 1) -> None:
        """Wake up to ``times`` sleepers."""
        for _ in range(times):
            self._sem.release()

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds pass; True when rung."""
        if not _TIMED_WAITS:
            return self._poll(timeout)
        try:
            self._sem.acquire(max(timeout, 0.0))
        except posix_ipc.BusyError:
            return False
        except posix_ipc.SignalError:
            # EINTR: a signal with a handler (gunicorn's SIGUSR1, SIGHUP, ...) arrived.
            # Report a wake-up; the caller re-checks the state, as after any ring.
            return True
        return True

    def _poll(self, timeout: float) -> bool:
        # Where sem_timedwait is missing (macOS), posix_ipc would wait forever for
        # any timeout > 0: try without blocking, backing off from 0.1 ms to 10 ms, for
        # pauses that add up to ``timeout``. The pauses are real sleeps and the time is
        # never read here: the caller derived ``timeout`` from its clock and reads that
        # clock again when this returns.
        left = max(timeout, 0.0)
        pause = 0.0001
        while True:
            try:
                self._sem.acquire(0)
                return True
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                pass
            if left <= 0:
                return False
            step = min(pause, left)
            time.sleep(step)
            left -= step
            pause = min(pause * 2, 0.01)

    def close(self) -> None:
        try:
            self._sem.close()
        except posix_ipc.Error:
            pass

    def unlink(self) -> None:
        unlink_semaphore(self.name)


def unlink_semaphore(name: str) -> bool:
    """Remove a semaphore's name (True if it existed); sleepers already attached keep
    working."""
    try:
        posix_ipc.unlink_semaphore(name)
    except posix_ipc.ExistentialError:
        return False
    except (posix_ipc.Error, OSError):
        return False  # a name we cannot unlink (another user's, a directory): not ours
    return True
