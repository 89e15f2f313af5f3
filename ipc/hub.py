"""One thread per process that waits for many readers at once.

A reader that must not block its thread (an ``asyncio`` stream on an event loop)
hands its wait to the process's :func:`hub` and gets a :class:`concurrent.futures.Future`, which
the hub completes with the :class:`~ipc.wait.Wake` reason (an event loop awaits it
through ``asyncio.wrap_future``). However many readers wait, the process has one
hub thread, so they never fill a thread pool. On Linux 5.16 and newer the hub
sleeps on up to 127 channels' sequence words at once plus its own poke word (one
word per channel name: however many readers of one entry map its segment, a futex
on a shared mapping is keyed by the page, so any one mapping's word serves all)
(``futex_waitv``); elsewhere, or beyond 127 channels, it re-checks every
:data:`POLL` seconds.

Invariants:

- A watched reader's slot says "waiting" before the hub's check of its progress,
  and the hub reads a channel's sequence word before that check and sleeps on the
  value it read: a producer publishing after the check rings (it sees the flag) or
  has changed the word (the sleep returns at once). As in
  :meth:`ipc.channel.Channel.wait_for_progress`, a wake-up lost anyway costs at
  most one sleep, and no sleep lasts past a watch's liveness check or deadline.
- Liveness checks are shared per channel: of the watches on one channel (by name)
  whose check falls due, the hub hands the check to one (``CHECK``) and keeps the
  others asleep until that reader reports (:meth:`Hub.checked`) or one period
  passes. A report that the producer is alive stands for every watch of the channel
  at or past the bytes that check knew of, for one period from when it began; a
  report that it is not makes every watch of the channel check at once. So each
  watch still acts on a verdict at most one period old, and a thousand readers of
  one entry in a process cost one check per period, not a thousand (each check is
  a wake-up of its reader, a /proc read, and a new watch).
- The hub touches a watch's channel only under its lock, and :meth:`Hub.forget`
  takes that lock: once ``forget`` returns, the hub never touches that channel
  again, so its owner may unmap it. (The futex sleep runs outside the lock, on
  addresses that may be unmapped meanwhile: the kernel then fails the sleep or
  sleeps on unrelated memory, never past the next deadline.)
"""

from __future__ import annotations

import os
import threading

from ipc import futex
from ipc.channel import Channel, full_fence
from ipc.clock import SYSTEM
from ipc.segment import ReaderSlot
from ipc.wait import Waiter, Wake

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import concurrent.futures

    from ipc.clock import Clock

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


class _SharedCheck:
    """The latest liveness check of one channel's producer in this process, in the
    time of ``clock`` (the checking reader's)."""

    __slots__ = ("alive_at", "clock", "known", "started")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.started: float | None = None  # handed to a reader that has not reported
        self.alive_at: float | None = None  # when the latest check that found it alive began
        self.known = 0  # the bytes in the data file that check knew of


class Hub:
    """The process's waiting thread, started on the first :meth:`watch`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[Watch, None] = {}  # insertion-ordered set
        self._checks: dict[str, _SharedCheck] = {}  # by channel name
        self.checks_handed_out = 0  # CHECK wakes delivered (a benchmark reads it)
        self._recheck_all = False  # a full pass is due (see checked and forget)
        # The words the hub sleeps on: channel name -> (the watch whose mapping of the
        # channel's sequence word it uses, the value seen). Under the lock.
        self._words: dict[str, tuple[Watch, int]] = {}
        self._new: list[Watch] = []  # watched since the hub last looked
        import ctypes  # here: only a process that waits needs it

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
            slot.set_waiting(position + 1)  # before the hub's check: see the docstring
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
            word = self._words.get(w.channel.base)
            repick = word is not None and word[0] is w
            if repick:  # its owner may unmap it: sleep on another watch's mapping
                del self._words[w.channel.base]
                self._recheck_all = True
        if repick:
            self._wake_thread()
        if w.slot is not None:
            w.slot.set_waiting(0)
        complete(w.future, Wake.PROGRESS)

    def checked(
        self, channel: Channel, clock: Clock, began: float, alive: bool, known: int = 0
    ) -> None:
        """A reader's report of the liveness check it began at ``began`` (on ``clock``):
        whether the channel's producer was alive, and the bytes of the data file the
        check knew of. Every reader whose check the hub hands out should report it;
        one that does not only delays the others' checks by one period."""
        with self._lock:
            shared = self._checks.get(channel.base)
            if shared is not None and shared.clock is clock:
                shared.started = None
                if alive:
                    if shared.alive_at is None or began > shared.alive_at:
                        shared.alive_at, shared.known = began, known
                    return
                shared.alive_at = None
            elif alive:
                return  # a check the hub did not hand out: nobody waits for it
            for w in self._watches:  # a rare event: every watch of the channel checks now
                if w.channel.base == channel.base:
                    w.waiter.next_check = min(w.waiter.next_check, began)
            self._recheck_all = True
        self._wake_thread()

    def _shares_check(self, w: Watch, now: float) -> bool:
        """For a watch whose check just fell due: True (and its next check moved) if
        another reader's check stands for it, or is under way; False if this watch's
        reader is to check (and the channel's check is then under way). Under the lock."""
        waiter = w.waiter
        shared = self._checks.get(w.channel.base)
        if shared is None or shared.clock is not waiter.clock:
            shared = self._checks[w.channel.base] = _SharedCheck(waiter.clock)
        alive_at = shared.alive_at
        if alive_at is not None and now < alive_at + waiter.period and shared.known <= w.position:
            waiter.next_check = alive_at + waiter.period
            return True
        if shared.started is not None and now < shared.started + waiter.period:
            waiter.next_check = shared.started + waiter.period  # unless it reports first
            return True
        shared.started = now
        self.checks_handed_out += 1
        return False

    def _align_check(self, w: Watch) -> None:
        """Move a watch's next check to the one its channel's latest verdict allows,
        when that is later: the watches of one channel then fall due together, and
        one pass of the hub serves them all. Under the lock."""
        shared = self._checks.get(w.channel.base)
        if shared is None or shared.alive_at is None or shared.clock is not w.waiter.clock:
            return
        if shared.known <= w.position:
            w.waiter.next_check = max(w.waiter.next_check, shared.alive_at + w.waiter.period)

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
        until = _KERNEL.monotonic() + _IDLE  # the soonest check or deadline (kernel time)
        while True:
            seen_poke = self._poke.value
            self._poked.clear()
            ready: list[tuple[Watch, Wake | BaseException]] = []
            with self._lock:
                if self._recheck_all:
                    only_new, self._recheck_all = False, False
                if not only_new:
                    self._words, until = {}, _KERNEL.monotonic() + _IDLE
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
                    if wake is Wake.CHECK and self._shares_check(w, now):
                        wake = None
                    elif wake is None:
                        self._align_check(w)
                    if wake is not None:
                        ready.append((w, wake))
                        del self._watches[w]
                        continue
                    limit = w.waiter.sleep_limit(now, w.deadline)
                    if w.slot is None:
                        limit = min(limit, _UNSLOTTED_POLL)
                    until = min(until, kernel_now + limit)
                    self._words.setdefault(w.channel.base, (w, seq))
                if not only_new:  # forget the checks of channels nobody watches
                    watched = {w.channel.base for w in self._watches}
                    for base in [b for b in self._checks if b not in watched]:
                        del self._checks[base]
                words = [(o.channel.seg.seq_address, seq) for o, seq in self._words.values()]
            for w, outcome in ready:
                complete(w.future, outcome)
            only_new = self._sleep(seen_poke, words, until)

    def _sleep(self, seen_poke: int, words: list[tuple[int, int]], until: float) -> bool:
        """Sleep until poked, rung, or ``until``; True if only a poke (new watches)
        woke it, so the existing watches need no re-check."""
        if not futex.WAITV_SUPPORTED:
            if words:
                until = min(until, _KERNEL.monotonic() + POLL)
            self._poked.wait(max(until - _KERNEL.monotonic(), 0.0))
            return False
        listed = words
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


_hub: Hub | None = None
_hub_lock = threading.Lock()


def hub() -> Hub:
    """This process's hub, made at the first call (a process that never waits on a
    channel does without it, and without the ctypes it needs)."""
    global _hub
    made = _hub
    if made is None:
        with _hub_lock:
            made = _hub
            if made is None:
                made = _hub = Hub()
    return made


def _after_fork_in_child() -> None:
    # The hub thread does not survive fork; the child makes its own when needed.
    global _hub, _hub_lock
    _hub = None
    _hub_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
