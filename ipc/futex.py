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
use semaphores instead. Each sleeper may name the bits it sleeps on (its reader slot's
bit) and a waker the bits it wakes (``FUTEX_WAIT_BITSET``/``FUTEX_WAKE_BITSET``), so a
producer wakes only the readers whose wait is over. :data:`counts` tallies this
process's calls (what ``tools/bench.py`` reports as wake-ups per GiB).
:func:`wait_any` sleeps on many words at once with ``futex_waitv`` (Linux 5.16 and
newer); where that is missing, :data:`WAITV_SUPPORTED` is False.
"""

from __future__ import annotations

import errno
import os
import sys
import time

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import ctypes

_SYSCALL_NUMBERS = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not FUTEX_PRIVATE): across processes
_FUTEX_WAIT_BITSET, _FUTEX_WAKE_BITSET = 9, 10
_WAKE_ALL = 0x7FFFFFFF
ALL_BITS = 0xFFFFFFFF  # every sleeper, whatever bits it sleeps on

_nr = _SYSCALL_NUMBERS.get(os.uname().machine.lower(), -1) if sys.platform == "linux" else -1
SUPPORTED = _nr >= 0
# futex_waitv: the same number on every architecture (the generic table).
_NR_WAITV = 449
_FUTEX2_SIZE_U32 = 0x02  # shared (not FUTEX2_PRIVATE)
_CLOCK_MONOTONIC = 1
WAITV_MAX = 128  # the kernel's limit of words in one futex_waitv

if TYPE_CHECKING:
    WAITV_SUPPORTED: bool  # probed at its first use, see __getattr__


class _Native:
    """The system call through ctypes, set up at the first call: importing ctypes costs
    a few milliseconds of start-up, which a process that never sleeps on a word (a
    command-line hit of a finished entry) should not pay."""

    def __init__(self) -> None:
        import ctypes

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class WaitV(ctypes.Structure):
            _fields_ = [
                ("val", ctypes.c_uint64),
                ("uaddr", ctypes.c_uint64),
                ("flags", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32),
            ]

        self.Timespec = Timespec
        self.WaitV = WaitV
        self.syscall = ctypes.CDLL(None, use_errno=True).syscall
        self.syscall.restype = ctypes.c_long

    def timespec(self, seconds: float) -> ctypes.Structure:
        return self.Timespec(int(seconds), int((seconds % 1.0) * 1e9))


_native: _Native | None = None


def _calls() -> _Native:
    global _native
    if _native is None:
        _native = _Native()  # two threads racing build two equal ones: harmless
    return _native


class Counts:
    """This process's futex calls: ``wakes`` wake calls made, ``woken`` sleepers they
    woke (as the kernel reports), ``waits`` sleeps begun. Plain counters (a count
    lost to a thread switch is harmless): for benchmarks and tests."""

    __slots__ = ("waits", "wakes", "woken")

    def __init__(self) -> None:
        self.wakes = self.woken = self.waits = 0


counts = Counts()


def wait(address: int, expected: int, timeout: float, bits: int = ALL_BITS) -> bool:
    """Sleep while the word at ``address`` holds ``expected``, at most ``timeout``
    seconds; ``bits``: woken only by a :func:`wake` naming one of them. False when the
    timeout passed; True otherwise (woken, the word already differed, or a signal
    arrived): the caller re-checks what it waits for."""
    import ctypes as c  # a dictionary lookup once loaded

    n = _native or _calls()
    timeout = max(timeout, 0.0)
    counts.waits += 1
    if bits == ALL_BITS:
        op = _FUTEX_WAIT
    else:  # FUTEX_WAIT_BITSET takes an absolute time on CLOCK_MONOTONIC
        op = _FUTEX_WAIT_BITSET
        timeout += time.clock_gettime(time.CLOCK_MONOTONIC)
    ts = n.timespec(timeout)
    r = n.syscall(
        c.c_long(_nr),
        c.c_void_p(address),
        c.c_long(op),
        c.c_long(expected & 0xFFFFFFFF),
        c.byref(ts),
        c.c_void_p(0),
        c.c_long(bits & ALL_BITS),
    )
    return r == 0 or c.get_errno() != errno.ETIMEDOUT


def wake(address: int, bits: int = ALL_BITS) -> None:
    """Wake every process and thread sleeping on the word at ``address`` on one of
    ``bits`` (a sleep without bits, such as :func:`wait_any`'s, matches any)."""
    import ctypes as c  # a dictionary lookup once loaded

    n = _native or _calls()
    r = n.syscall(
        c.c_long(_nr),
        c.c_void_p(address),
        c.c_long(_FUTEX_WAKE if bits == ALL_BITS else _FUTEX_WAKE_BITSET),
        c.c_long(_WAKE_ALL),
        c.c_void_p(0),
        c.c_void_p(0),
        c.c_long(bits & ALL_BITS),
    )
    counts.wakes += 1
    counts.woken += max(r, 0)


def wait_any(words: list[tuple[int, int]], deadline: float) -> int | None:
    """Sleep while every word (address, expected value) holds its value, until
    ``deadline`` on the kernel's CLOCK_MONOTONIC (``ipc.clock.SYSTEM.monotonic()``), at
    most :data:`WAITV_MAX` words. Returns the index of the word that was woken, or
    None: the timeout passed, a word already differed, a signal arrived, or a word's
    memory is gone. The caller re-checks."""
    import ctypes as c  # a dictionary lookup once loaded

    n = _native or _calls()
    waiters = (n.WaitV * len(words))()
    for w, (address, expected) in zip(waiters, words, strict=True):
        w.val = expected & 0xFFFFFFFF
        w.uaddr = address
        w.flags = _FUTEX2_SIZE_U32
    ts = n.timespec(max(deadline, 0.0))
    r = n.syscall(
        c.c_long(_NR_WAITV),
        c.byref(waiters),
        c.c_uint(len(words)),
        c.c_uint(0),
        c.byref(ts),
        c.c_int(_CLOCK_MONOTONIC),
    )
    return r if r >= 0 else None


def _probe_waitv() -> bool:
    """Whether this kernel has futex_waitv: a wait on a word that differs from the
    expected value fails at once with EAGAIN where it exists, ENOSYS where not."""
    if not SUPPORTED:
        return False
    import ctypes as c

    n = _calls()
    word = c.c_uint32(1)
    waiters = (n.WaitV * 1)()
    waiters[0].val, waiters[0].uaddr = 0, c.addressof(word)
    waiters[0].flags = _FUTEX2_SIZE_U32
    ts = n.timespec(0.0)
    r = n.syscall(
        c.c_long(_NR_WAITV),
        c.byref(waiters),
        c.c_uint(1),
        c.c_uint(0),
        c.byref(ts),
        c.c_int(_CLOCK_MONOTONIC),
    )
    return r >= 0 or c.get_errno() in (errno.EAGAIN, errno.ETIMEDOUT)


def __getattr__(name: str) -> object:
    """:data:`WAITV_SUPPORTED`, probed at its first use (the probe needs ctypes)."""
    if name == "WAITV_SUPPORTED":
        supported = _probe_waitv()
        globals()[name] = supported
        return supported
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
