"""Futex waits on a 32-bit word of shared memory: a broadcast doorbell (Linux).

A named semaphore wakes one sleeper per post, so when several readers sleep on
one semaphore a reader that goes back to sleep quickly (a thread of the
producer's own process) can take a post meant for another process, which then
sleeps until the next write. A futex has no count to steal: the producer changes
a sequence word and wakes every sleeper on it, and ``FUTEX_WAIT`` refuses to
sleep once the word differs from what the sleeper last saw, so a wake-up between
the sleeper's check and its sleep is never lost.

Where the futex system call is not available (not Linux, or an architecture
whose system call number is not listed) :data:`SUPPORTED` is False and callers
use semaphores instead.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import sys

_SYSCALL_NUMBERS = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not FUTEX_PRIVATE): across processes
_WAKE_ALL = 0x7FFFFFFF

_nr = _SYSCALL_NUMBERS.get(platform.machine().lower(), -1) if sys.platform == "linux" else -1
SUPPORTED = _nr >= 0
if SUPPORTED:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def wait(address: int, expected: int, timeout: float) -> bool:
    """Sleep while the word at ``address`` holds ``expected``, at most ``timeout``
    seconds. False when the timeout passed; True otherwise (woken, the word already
    differed, or a signal arrived): the caller re-checks what it waits for."""
    timeout = max(timeout, 0.0)
    ts = _Timespec(int(timeout), int((timeout % 1.0) * 1e9))
    r = _syscall(
        ctypes.c_long(_nr),
        ctypes.c_void_p(address),
        ctypes.c_long(_FUTEX_WAIT),
        ctypes.c_long(expected & 0xFFFFFFFF),
        ctypes.byref(ts),
        ctypes.c_void_p(0),
        ctypes.c_long(0),
    )
    return r == 0 or ctypes.get_errno() != errno.ETIMEDOUT


def wake(address: int) -> None:
    """Wake every process and thread sleeping on the word at ``address``."""
    _syscall(
        ctypes.c_long(_nr),
        ctypes.c_void_p(address),
        ctypes.c_long(_FUTEX_WAKE),
        ctypes.c_long(_WAKE_ALL),
        ctypes.c_void_p(0),
        ctypes.c_void_p(0),
        ctypes.c_long(0),
    )
