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

import ctypes
import errno
import os
import sys
import time

_SYSCALL_NUMBERS = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not FUTEX_PRIVATE): across processes
_FUTEX_WAIT_BITSET, _FUTEX_WAKE_BITSET = 9, 10
_WAKE_ALL = 0x7FFFFFFF
ALL_BITS = 0xFFFFFFFF  # every sleeper, whatever bits it sleeps on

_nr = _SYSCALL_NUMBERS.get(os.uname().machine.lower(), -1) if sys.platform == "linux" else -1
SUPPORTED = _nr >= 0
if SUPPORTED:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
# futex_waitv: the same number on every architecture (the generic table).
_NR_WAITV = 449
_FUTEX2_SIZE_U32 = 0x02  # shared (not FUTEX2_PRIVATE)
_CLOCK_MONOTONIC = 1
WAITV_MAX = 128  # the kernel's limit of words in one futex_waitv


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


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
    timeout = max(timeout, 0.0)
    counts.waits += 1
    if bits == ALL_BITS:
        op = _FUTEX_WAIT
    else:  # FUTEX_WAIT_BITSET takes an absolute time on CLOCK_MONOTONIC
        op = _FUTEX_WAIT_BITSET
        timeout += time.clock_gettime(time.CLOCK_MONOTONIC)
    ts = _Timespec(int(timeout), int((timeout % 1.0) * 1e9))
    r = _syscall(
        ctypes.c_long(_nr),
        ctypes.c_void_p(address),
        ctypes.c_long(op),
        ctypes.c_long(expected & 0xFFFFFFFF),
        ctypes.byref(ts),
        ctypes.c_void_p(0),
        ctypes.c_long(bits & ALL_BITS),
    )
    return r == 0 or ctypes.get_errno() != errno.ETIMEDOUT


def wake(address: int, bits: int = ALL_BITS) -> None:
    """Wake every process and thread sleeping on the word at ``address`` on one of
    ``bits`` (a sleep without bits, such as :func:`wait_any`'s, matches any)."""
    r = _syscall(
        ctypes.c_long(_nr),
        ctypes.c_void_p(address),
        ctypes.c_long(_FUTEX_WAKE if bits == ALL_BITS else _FUTEX_WAKE_BITSET),
        ctypes.c_long(_WAKE_ALL),
        ctypes.c_void_p(0),
        ctypes.c_void_p(0),
        ctypes.c_long(bits & ALL_BITS),
    )
    counts.wakes += 1
    counts.woken += max(r, 0)


class _WaitV(ctypes.Structure):
    _fields_ = [
        ("val", ctypes.c_uint64),
        ("uaddr", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


def wait_any(words: list[tuple[int, int]], deadline: float) -> int | None:
    """Sleep while every word (address, expected value) holds its value, until
    ``deadline`` on the kernel's CLOCK_MONOTONIC (``ipc.clock.SYSTEM.monotonic()``), at
    most :data:`WAITV_MAX` words. Returns the index of the word that was woken, or
    None: the timeout passed, a word already differed, a signal arrived, or a word's
    memory is gone. The caller re-checks."""
    waiters = (_WaitV * len(words))()
    for w, (address, expected) in zip(waiters, words, strict=True):
        w.val = expected & 0xFFFFFFFF
        w.uaddr = address
        w.flags = _FUTEX2_SIZE_U32
    deadline = max(deadline, 0.0)
    ts = _Timespec(int(deadline), int((deadline % 1.0) * 1e9))
    r = _syscall(
        ctypes.c_long(_NR_WAITV),
        ctypes.byref(waiters),
        ctypes.c_uint(len(words)),
        ctypes.c_uint(0),
        ctypes.byref(ts),
        ctypes.c_int(_CLOCK_MONOTONIC),
    )
    return r if r >= 0 else None


def _probe_waitv() -> bool:
    """Whether this kernel has futex_waitv: a wait on a word that differs from the
    expected value fails at once with EAGAIN where it exists, ENOSYS where not."""
    if not SUPPORTED:
        return False
    word = ctypes.c_uint32(1)
    waiters = (_WaitV * 1)()
    waiters[0].val, waiters[0].uaddr = 0, ctypes.addressof(word)
    waiters[0].flags = _FUTEX2_SIZE_U32
    ts = _Timespec(0, 0)
    r = _syscall(
        ctypes.c_long(_NR_WAITV),
        ctypes.byref(waiters),
        ctypes.c_uint(1),
        ctypes.c_uint(0),
        ctypes.byref(ts),
        ctypes.c_int(_CLOCK_MONOTONIC),
    )
    return r >= 0 or ctypes.get_errno() in (errno.EAGAIN, errno.ETIMEDOUT)


WAITV_SUPPORTED = _probe_waitv()
