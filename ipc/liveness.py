"""Process identity and liveness.

A process is identified by ``(pid, start time)``. A pid alone is not enough:
after a crash the kernel may give the same pid to an unrelated process, and a
check on the pid alone would then wait forever for a dead producer. A zombie
(killed but not yet reaped by its parent) counts as dead.

The start time is seconds since boot on Linux, read from ``/proc/<pid>/stat``
(field 22, clock ticks). psutil's ``create_time`` adds the boot time derived
from the wall clock, which moves when the clock is stepped (NTP, a VM resume):
every recorded identity would then look dead at once. Elsewhere psutil's
``create_time`` is used (psutil is imported only there: it costs about 20 ms at
start-up, which every short-lived process would pay).

Start times count from boot, so after a reboot a new process can match a recorded
``(pid, start)``: what outlives a reboot (a record on disk) carries the boot's id too
(:func:`boot_tag`). And a pid names any process, not only one that produces: a
producer also holds an flock on its entry's data file for as long as it produces,
which the kernel releases when it dies and which no forged or stale record can fake
(:func:`lock_held`).
"""

from __future__ import annotations

import fcntl
import os
import sys

from ipc.tuples import NamedTuple

# Start times are computed the same way by every process on the host, so they
# match exactly; the tolerance only absorbs float rounding.
_START_TOLERANCE = 0.005
_PROC = sys.platform.startswith("linux") and os.path.exists("/proc/self/stat")
_TICKS = os.sysconf("SC_CLK_TCK") if _PROC else 100


class ProcessId(NamedTuple):
    pid: int
    start: float


def _proc_stat(pid: int) -> tuple[float, bool] | None:
    """(start seconds since boot, is zombie) from /proc, or None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ...": comm may hold spaces and parentheses; split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19]) / _TICKS, fields[0] in (b"Z", b"X")


def start_time(pid: int) -> float:
    """The start time of process ``pid`` in the form identities use (ProcessLookupError if none)."""
    if _PROC:
        stat = _proc_stat(pid)
        if stat is None:
            raise ProcessLookupError(pid)
        return stat[0]
    import psutil

    return psutil.Process(pid).create_time()


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
        ident = ProcessId(pid, start_time(pid))
        _current = ident
    return ident


def same_process(a: ProcessId, b: ProcessId) -> bool:
    """Whether two identities (recorded at different precisions) name one process."""
    return a.pid == b.pid and abs(a.start - b.start) <= _START_TOLERANCE


def is_alive(pid: int, start: float) -> bool:
    """True while the process ``pid`` that started at ``start`` is running."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return abs(current_process().start - start) <= _START_TOLERANCE
    if _PROC:
        stat = _proc_stat(pid)
        return stat is not None and abs(stat[0] - start) <= _START_TOLERANCE and not stat[1]
    import psutil

    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - start) > _START_TOLERANCE:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def boot_tag() -> str:
    """This boot's tag: the first 8 hex digits of ``/proc/sys/kernel/random/boot_id``
    (random per boot), or ``"0"`` where there is no boot id (macOS: kern.boottime moves
    with the wall clock, so it is not used; the kernel lock still tells a record from
    before a reboot, since no lock survives one)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            raw = f.read(64)
    except OSError:
        return "0"
    tag = raw.strip().replace(b"-", b"")[:8].decode("ascii", "replace").lower()
    return tag if len(tag) == 8 and all(c in "0123456789abcdef" for c in tag) else "0"


BOOT = boot_tag()


def lock_held(fd: int) -> bool:
    """Whether another open file description holds an exclusive flock on the file of
    ``fd`` (an ``fd`` of its own: a shared probe on the holder's own description would
    turn its lock into a shared one). Probes with a shared lock, released at once
    (two syscalls); where the file system refuses flock, answers True (nothing can be
    told, and the pid's check stands alone)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
