"""A channel: one producer's shared-memory segment and the two bells around it.

Readers sleep on the readers' bell, which the producer rings after publishing
progress: on Linux a futex on the segment's sequence word (one ring wakes every
sleeper it names, each reader sleeping on its slot's bit, and a sleeper never misses
a change made after it looked, see :mod:`ipc.futex`); elsewhere the ``r`` semaphore,
rung once per sleeping reader. Wake-ups are coalesced: a reader may sleep until the
producer reaches an offset further on (see :data:`COALESCE`), and the producer rings
only once some sleeper's offset is reached (the protocol is in :mod:`ipc.segment`).
The producer sleeps on the writer's bell (the ``w`` semaphore), which a reader rings
after advancing while the producer waits.

Both waits are here, on one :class:`ipc.wait.Waiter` each, so both sides check the
other's liveness on their own absolute deadline however often they are woken.

Invariants:

- The bells are created first and the segment, its magic written last, after them;
  :func:`unlink_channel` removes the segment first. So a segment that opens always
  has its own bells beside it: :meth:`Channel.open` never pairs a segment with the
  bells of another set. Bells without a segment are a set being made or unmade.
- Wake-ups are Dekker-style: a sleeper stores "waiting", then re-loads the progress
  it waits on; the other side stores progress, then loads "waiting". A full fence
  sits between each store and the load after it (:func:`full_fence`). Every sleep is
  timed, so a wake-up lost anyway costs latency, never a hang.
- A reader sleeping until an offset beyond the next byte sleeps at most ``linger``
  seconds for it, then takes what has come (or, if nothing has, waits for any byte),
  and the producer rings every sleeper before it blocks on its readers: so coalescing
  delays bytes by at most ``linger``, and never leaves a producer and its readers
  waiting on each other.
"""

from __future__ import annotations

import threading

import posix_ipc

from ipc import futex
from ipc.doorbell import Doorbell, unlink_semaphore
from ipc.liveness import ProcessId
from ipc.naming import new_base, object_name
from ipc.segment import (
    DEFAULT_SLOTS,
    STATE_WRITING,
    Readers,
    ReaderSlot,
    Segment,
    SegmentError,
    unlink_segment,
)
from ipc.wait import Waiter, Wake

SEGMENT, READERS_BELL, WRITER_BELL = "s", "r", "w"
# An unslotted reader (beyond the segment's slots) is rung by nobody: it re-checks.
_UNSLOTTED_POLL = 0.005
# A reader that keeps up with a fast producer may sleep until up to this many more
# bytes are published (one wake-up for many writes) ...
COALESCE = 4 << 20
# ... but at most this long: it then takes what has come.
LINGER = 0.05

_fence_lock = threading.Lock()


def full_fence() -> None:
    """A full memory barrier between a store to shared memory and the next load.

    x86 may let a load pass an earlier store, and then both sides of a Dekker-style
    hand-off miss each other and a sleeper waits for its timeout. Taking an
    uncontended lock executes a locked instruction, a full fence on x86 (about 50 ns).
    Correctness never depends on it: every wait is timed.
    """
    _fence_lock.acquire()
    _fence_lock.release()


class ReadersBell:
    """What readers sleep on and the producer rings after publishing progress."""

    def __init__(self, bell: Doorbell, seg: Segment) -> None:
        self._bell = bell
        self._seg = seg

    def ring(self, times: int = 1, bits: int = futex.ALL_BITS) -> None:
        """Wake the readers that sleep on ``bits`` (with a futex), or ``times`` sleepers
        (with a semaphore)."""
        if futex.SUPPORTED:
            futex.wake(self._seg.seq_address, bits)
        else:
            self._bell.ring(times)

    def wait(self, seen: int, timeout: float, bits: int = futex.ALL_BITS) -> bool:
        """Sleep until rung (on one of ``bits``) or ``timeout`` passes (False); ``seen``
        is the segment's ``seq`` read before the caller last checked the progress."""
        if futex.SUPPORTED:
            return futex.wait(self._seg.seq_address, seen, timeout, bits)
        return self._bell.wait(timeout)

    def close(self) -> None:
        self._bell.close()


class Channel:
    """The segment and bells of one producer, as one process sees them.

    The producer's instance also remembers which readers it found dead (a dead
    reader's slot stays active until someone re-claims it), and how long
    :meth:`hold_back` has blocked in all (``held_back``, seconds).
    """

    def __init__(self, base: str, seg: Segment, readers: Doorbell, writer: Doorbell) -> None:
        self.base = base
        self.seg = seg
        self.readers_bell = ReadersBell(readers, seg)
        self.writer_bell = writer
        self._dead: set[tuple[int, int, int]] = set()
        # The producer's: set once it found the segment's name gone (or another's).
        self.removed = False
        self.held_back = 0.0
        self._rung: dict[int, int] = {}  # the producer's: slot -> offset it was rung for

    @classmethod
    def create(
        cls,
        prefix: str,
        producer: ProcessId,
        slots: int = DEFAULT_SLOTS,
        base: str | None = None,
        *,
        offset: int = 0,
        producer_reads: bool = False,
    ) -> Channel:
        """Create fresh objects (under ``base``, or a new random one under ``prefix``;
        a name that exists is an error, never opened). ``offset`` and
        ``producer_reads`` as for :meth:`ipc.Segment.create`."""
        base = base or new_base(prefix)
        rb = Doorbell.create(object_name(base, READERS_BELL))
        try:
            wb = Doorbell.create(object_name(base, WRITER_BELL))
            try:
                seg = Segment.create(
                    object_name(base, SEGMENT),
                    producer,
                    slots,
                    offset=offset,
                    producer_reads=producer_reads,
                )
            except BaseException:
                wb.close()
                wb.unlink()
                raise
        except BaseException:
            rb.close()
            rb.unlink()
            raise
        return cls(base, seg, rb, wb)

    @classmethod
    def open(cls, base: str) -> Channel:
        """Attach to a channel's objects (``ipc.SegmentError`` if they are gone)."""
        seg = Segment.open(object_name(base, SEGMENT))
        bells: list[Doorbell] = []
        try:
            for kind in (READERS_BELL, WRITER_BELL):
                bells.append(Doorbell.open(object_name(base, kind)))
        except posix_ipc.Error as exc:
            for bell in bells:
                bell.close()
            seg.close()
            raise SegmentError(f"doorbells of {base} are gone") from exc
        return cls(base, seg, bells[0], bells[1])

    def close(self) -> None:
        self.readers_bell.close()
        self.writer_bell.close()
        self.seg.close()  # last: a futex wait or wake may use its mapping until then

    # -- producer side ------------------------------------------------------------------

    def readers(self) -> Readers:
        """Live readers (less those found dead), their best position, how many wait."""
        return self.seg.scan(self._dead)

    def drop_dead_readers(self) -> None:
        """Stop counting readers whose process died; and notice (:attr:`removed`) if the
        segment's name no longer refers to it (a /dev/shm wipe)."""
        self._dead = self.seg.dead_readers()
        if not self.removed and not self.seg.still_named():
            self.removed = True

    def publish(self, offset: int, waiter: Waiter) -> Readers:
        """Publish ``offset``, wake the readers that wait for it (those whose offset it
        reaches); the readers after it."""
        self.seg.publish_offset(offset)
        full_fence()  # the offset is visible before we look at the waiting words
        if waiter.check_due():
            self.drop_dead_readers()
        readers = self.seg.scan(self._dead, offset, self._rung)
        if readers.due:
            self.readers_bell.ring(readers.waiting, readers.due)
        return readers

    def hold_back(
        self, offset: int, window: int, waiter: Waiter, readers: Readers | None = None
    ) -> int:
        """Back pressure: block while no live reader is within ``window`` bytes of
        ``offset``. Returns the live readers (0: none is left, stop producing).
        ``readers``: a scan taken since ``offset`` was published, if the caller has one.

        Readers found dead stop counting at the latest ``waiter.period`` after they
        died, however often this wait is woken (rings, signals, readers leaving)."""
        seg = self.seg
        while True:
            if readers is None:
                if waiter.check_due():
                    self.drop_dead_readers()
                readers = self.readers()
            live, best = readers.live, readers.best
            readers = None
            if live == 0 or offset - best <= window:
                return live
            # Invariant: set "waiting", then re-check; a reader advancing after our
            # check sees the flag and rings.
            seg.set_producer_waiting(True)
            full_fence()
            live, best, waiting, due, asleep = self.seg.scan(self._dead, offset, self._rung)
            if live and offset - best > window:
                if asleep | due:  # nothing comes until a reader moves: see ipc.segment
                    seg.bump()
                    self.readers_bell.ring(waiting, asleep | due)
                now = waiter.clock.monotonic()
                self.writer_bell.wait(max(waiter.sleep_limit(now, None), 0.0))
                self.held_back += waiter.clock.monotonic() - now
            seg.set_producer_waiting(False)

    def ring_all(self) -> None:
        """Wake every reader waiting on this channel (at least one ring: a reader may
        be about to wait)."""
        self.readers_bell.ring(max(self.seg.scan().waiting, 1))

    # -- reader side --------------------------------------------------------------------

    def wait_for_progress(
        self,
        slot: ReaderSlot | None,
        position: int,
        waiter: Waiter,
        deadline: float | None,
        until: int = 0,
        linger: float = LINGER,
    ) -> Wake:
        """Sleep until the producer passes ``position`` or leaves "writing" (PROGRESS),
        the liveness check of ``waiter`` falls due (CHECK), or ``deadline`` passes
        (DEADLINE). A wake-up that brings neither goes back to sleep for what is left
        until the next check, never for a fresh ``period``.

        ``until``: ask to be woken only once the producer reaches that offset (further
        than ``position + 1``: several writes in one wake-up), for at most ``linger``
        seconds; then any byte ends the wait. Any byte found on waking ends it too."""
        seg = self.seg
        clock = waiter.clock
        until = max(until, position + 1)
        patient = clock.monotonic() + linger if until > position + 1 else None
        while True:
            now = clock.monotonic()  # one reading for all decisions below
            wake = self.wake_for(slot, position, waiter, now, deadline)
            if wake is not None:
                return wake
            timeout = waiter.sleep_limit(now, deadline)  # > 0: neither has come
            if patient is not None:
                if now >= patient:  # nothing came while coalescing: any byte will do
                    until, patient = position + 1, None
                else:
                    timeout = min(timeout, patient - now)
            if slot is None:
                clock.sleep(min(timeout, _UNSLOTTED_POLL))
                return Wake.PROGRESS  # the caller re-checks (and may have been closed)
            # Invariant (ipc.segment): publish the offset waited for before the last
            # check of the offset, so a producer publishing after that check sees it.
            slot.set_waiting(until)
            full_fence()
            seen = seg.seq
            offset, state = seg.progress()
            if offset <= position and state == STATE_WRITING:
                self.readers_bell.wait(seen, timeout, slot.bit)
            slot.set_waiting(0)

    def wake_for(
        self,
        slot: ReaderSlot | None,
        position: int,
        waiter: Waiter,
        now: float,
        deadline: float | None,
    ) -> Wake | None:
        """Why a reader at ``position`` waiting on this channel should wake now (see
        :meth:`wait_for_progress`), or None if it should sleep on."""
        offset, state = self.seg.progress()
        if offset > position or state != STATE_WRITING or self.seg.stalled:
            return Wake.PROGRESS  # (stalled: a reader declared it, see Segment.mark_stalled)
        if slot is not None and not slot.held:
            return Wake.PROGRESS  # closed by another thread: the caller sees it
        if waiter.check_due(now):
            return Wake.CHECK
        if deadline is not None and now >= deadline:
            return Wake.DEADLINE
        return None

    def advanced(self) -> None:
        """A reader moved on (or left): wake the producer if it waits for readers."""
        full_fence()
        if self.seg.producer_waiting:
            self.writer_bell.ring()


def open_segment(base: str) -> Segment:
    """The segment of the channel ``base``, to read (``SegmentError`` if it is gone):
    neither bell is opened, nothing is created."""
    return Segment.open(object_name(base, SEGMENT))


def unlink_channel(base: str) -> int:
    """Remove a channel's names: the segment first, then the bells (see the module
    docstring). Mappings and bells already open keep working. Returns how many of the
    names existed."""
    removed = [
        unlink_segment(object_name(base, SEGMENT)),
        unlink_semaphore(object_name(base, READERS_BELL)),
        unlink_semaphore(object_name(base, WRITER_BELL)),
    ]
    return sum(removed)
