"""One thread per process that waits for many readers at once.

A reader that must not block its thread (an ``asyncio`` stream on an event loop)
hands its wait to the process's :func:`hub` and gets a :class:`concurrent.futures.Future`, which
the hub completes with the :class:`~ipc.wait.Wake` reason (an event loop awaits it
through ``asyncio.wrap_future``). However many readers wait, the process has one
hub thread, so they never fill a thread pool. On Linux 5.16 and newer the hub
sleeps on up to 127 channels' sequence words at once plus its own poke word
(``futex_waitv``); elsewhere, or beyond 127 channels, it re-checks every
:data:`POLL` seconds.

Invariants:

- A watched reader's slot says "waiting" before the hub's check of its progress,
  and the hub reads a channel's sequence word before that check and sleeps on the
  value it read: a producer publishing after the check rings (it sees the flag) or
  has changed the word (the sleep returns at once). As in
  :meth:`ipc.channel.Channel.wait_for_progress`, a wake-up lost anyway costs at
  most one sleep, and no sleep lasts past a watch's liveness check or deadline.
- The hub touches a watch's channel only under its lock, and :meth:`Hub.forget`
  takes that lock: once ``forget`` returns, the hub never touches that channel
  again, so its owner may unmap it. (The futex sleep runs outside the lock, on
  addresses that may be unmapped meanwhile: the kernel then fails the sleep or
  sleeps on unrelated memory, never past the next deadline.)
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import TYPE_CHECKING

from ipc import futex
from ipc.channel import Channel, full_fence
from ipc.clock import SYSTEM
from ipc.segment import ReaderSlot
from ipc.wait import Waiter, Wake

if TYPE_CHECKING:
    import concurrent.futures

POLL = 0.002  # re-check period without futex_waitv (or beyond its word limit)
_UNSLOTTED_POLL = 0.005  # an unslotted reader is rung by nobody: it re-checks
_IDLE = 3600.0  # nothing to watch: sleep until poked
# The clock of the hub's own sleeps: the kernel's (futex_waitv's absolute timeout and
# Event.wait run on it). Each watch's checks and deadline are read on its waiter's
# clock; only the time left until them is carried over to this one.
_KERNEL = SYSTEM


class Watch:
    """One reader's wait: until its channel's producer passes ``position`` (or ends),
    its liveness check falls due, or ``deadline`` passes."""

    __slots__ = ("channel", "deadline", "future", "position", "slot", "waiter")

    def __init__(
        self,
        channel: Channel,
        slot: ReaderSlot | None,
        position: int,
        waiter: Waiter,
        deadline: float | None,
    ) -> None:
        self.channel = channel
        self.slot = slot
        self.position = position
        self.waiter = waiter
        self.deadline = deadline
        # Imported here, not at the top: concurrent.futures imports logging, a cost at
        # start-up of every process, and only a waiting AsyncStream needs it.
        import concurrent.futures

        self.future: concurrent.futures.Future[Wake] = concurrent.futures.Future()


class Hub:
    """The process's waiting thread, started on the first :meth:`watch`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[Watch, None] = {}  # insertion-ordered set
        self._new: list[Watch] = []  # watched since the hub last looked
        self._poke = ctypes.c_uint32(0)
        self._poke_address = ctypes.addressof(self._poke)
        self._poked = threading.Event()  # the poke where futex_waitv is missing
        self._thread: threading.Thread | None = None

    def watch(
        self,
        channel: Channel,
        slot: ReaderSlot | None,
        position: int,
        waiter: Waiter,
        deadline: float | None,
    ) -> Watch:
        """Start waiting for a reader; its ``future`` completes with the reason to wake.
        Every watch must end with :meth:`forget`."""
        w = Watch(channel, slot, position, waiter, deadline)
        if slot is not None:
            slot.set_waiting(True)  # before the hub's check: see the module docstring
            full_fence()
        with self._lock:
            self._watches[w] = None
            self._new.append(w)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="streamcache-wait-hub", daemon=True
                )
                self._thread.start()
        self._wake_thread()
        return w

    def forget(self, w: Watch) -> None:
        """End a watch (idempotent). Afterwards the hub never touches its channel; a
        watch still pending completes with PROGRESS, so its awaiter re-checks."""
        with self._lock:
            self._watches.pop(w, None)
        if w.slot is not None:
            w.slot.set_waiting(False)
        complete(w.future, Wake.PROGRESS)

    @property
    def watching(self) -> int:
        with self._lock:
            return len(self._watches)

    def _wake_thread(self) -> None:
        self._poke.value = (self._poke.value + 1) & 0xFFFFFFFF
        if futex.WAITV_SUPPORTED:
            futex.wake(self._poke_address)
        else:
            self._poked.set()

    def _run(self) -> None:
        only_new = False
        words: dict[int, int] = {}  # sequence word address -> value seen
        until = _KERNEL.monotonic() + _IDLE  # the soonest check or deadline (kernel time)
        while True:
            seen_poke = self._poke.value
            self._poked.clear()
            ready: list[tuple[Watch, Wake | BaseException]] = []
            with self._lock:
                if not only_new:
                    words, until = {}, _KERNEL.monotonic() + _IDLE
                    candidates = list(self._watches)
                else:
                    candidates = self._new
                self._new = []
                kernel_now = _KERNEL.monotonic()
                nows: dict[int, float] = {}  # one reading of each watch's clock per pass
                for w in candidates:
                    if w not in self._watches:
                        continue  # forgotten meanwhile
                    clock = w.waiter.clock
                    now = nows.get(id(clock))
                    if now is None:
                        now = nows[id(clock)] = clock.monotonic()
                    try:
                        seq = w.channel.seg.seq  # before the check: see the docstring
                        wake = w.channel.wake_for(w.slot, w.position, w.waiter, now, w.deadline)
                    except Exception as exc:  # the segment went away under a bug: report it
                        ready.append((w, exc))
                        del self._watches[w]
                        continue
                    if wake is not None:
                        ready.append((w, wake))
                        del self._watches[w]
                        continue
                    limit = w.waiter.sleep_limit(now, w.deadline)
                    if w.slot is None:
                        limit = min(limit, _UNSLOTTED_POLL)
                    until = min(until, kernel_now + limit)
                    words.setdefault(w.channel.seg.seq_address, seq)
            for w, outcome in ready:
                complete(w.future, outcome)
            only_new = self._sleep(seen_poke, words, until)

    def _sleep(self, seen_poke: int, words: dict[int, int], until: float) -> bool:
        """Sleep until poked, rung, or ``until``; True if only a poke (new watches)
        woke it, so the existing watches need no re-check."""
        if not futex.WAITV_SUPPORTED:
            if words:
                until = min(until, _KERNEL.monotonic() + POLL)
            self._poked.wait(max(until - _KERNEL.monotonic(), 0.0))
            return False
        listed = list(words.items())
        if len(listed) >= futex.WAITV_MAX:
            listed = listed[: futex.WAITV_MAX - 1]
            until = min(until, _KERNEL.monotonic() + POLL)
        woken = futex.wait_any([(self._poke_address, seen_poke), *listed], until)
        return woken == 0


def complete(future: concurrent.futures.Future[Wake], outcome: Wake | BaseException) -> None:
    """Complete ``future`` with ``outcome`` (a result, or an exception to raise), unless
    it is done already (completed, or cancelled by a waiter that gave up)."""
    import concurrent.futures  # loaded already: ``future`` is one

    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        pass  # completed or cancelled already


_hub = Hub()


def hub() -> Hub:
    """This process's hub."""
    return _hub


def _after_fork_in_child() -> None:
    # The hub thread does not survive fork; the child starts its own when needed.
    global _hub
    _hub = Hub()


os.register_at_fork(after_in_child=_after_fork_in_child)
