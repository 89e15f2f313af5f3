"""Process identity and liveness.

A process is identified by ``(pid, start time)``. A pid alone is not enough:
after a crash the kernel may give the same pid to an unrelated process, and a
check on the pid alone would then wait forever for a dead producer. A zombie
(killed but not yet reaped by its parent) counts as dead.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import psutil

# Start times are computed the same way by every process on the host (boot time
# plus clock ticks), so they match exactly; the tolerance only absorbs float
# rounding.
_START_TOLERANCE = 0.05


class ProcessId(NamedTuple):
    pid: int
    start: float


_current: ProcessId | None = None


def _reset_after_fork() -> None:
    global _current
    _current = None


os.register_at_fork(after_in_child=_reset_after_fork)


def current_process() -> ProcessId:
    """This process's identity (cached; reset in a forked child)."""
    global _current
    ident = _current
    if ident is None or ident.pid != os.getpid():
        pid = os.getpid()
        ident = ProcessId(pid, psutil.Process(pid).create_time())
        _current = ident
    return ident


def is_alive(pid: int, start: float) -> bool:
    """True while the process ``pid`` that started at ``start`` is running."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return abs(current_process().start - start) <= _START_TOLERANCE
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - start) > _START_TOLERANCE:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
