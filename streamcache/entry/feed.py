"""The creator's own reader of an entry whose producer runs in a thread of its process
(``stream()``, ``astream()``, and ``fetch`` with a timeout), fed by the producer's
writes in process: the counterpart of the inline creator's :class:`producer.Tee`.

The producer hands each write to :meth:`FedReader.put` after it lands in the data file
and before it publishes the offset; the creator's reads take those bytes from memory
instead of a ``pread`` of the file, and a creator that waits sleeps on a condition of
this process that the producer's next write notifies, not on the channel's futex. The
reader keeps everything else of a :class:`pipe.PipeReader` (slot 0, the failure, stall
and removal checks): other readers, in other processes, read the file as before.

Invariants:

- The feed holds the bytes ``[head, head + queued)`` of the entry, contiguous, with
  ``head <= position`` (the reader's; changed only under the feed's lock). A write
  that would leave a gap after them, or take the feed past :data:`_LIMIT` bytes (when
  it holds some already), is not kept: the reader reads those bytes from the file,
  where they are before the offset that covers them is published, and the feed takes
  writes again once the reader has caught up with them. Bytes before ``position``
  (a ``start`` past them, or read from the file meanwhile) are dropped unread.
- Back pressure is the channel's as for any reader: the creator counts at the
  position it consumed (its slot), never at what the feed holds. A creator that stops
  iterating holds at most :data:`_LIMIT` bytes (or one write) in memory and paces the
  producer only as a reader at its position does (``window``), never the others.
- Every check a read makes on the file's path comes first: a read is refused once the
  stream is closed, a stall is declared (``stall_timeout``, here or by a reader
  elsewhere) or the entry failed at this position, exactly as a file reader's. Bytes
  the feed holds were written before any failure was published, which covers them.
- A creator that waits on the condition is woken by the producer's next write (or the
  first one reaching the offset it coalesces up to, as a file reader would on the
  channel, at most ``LINGER`` later), by its end (:meth:`ended`, after the segment
  says done or failed) or by its own close; it wakes by itself for its liveness
  checks (a stall declared by a reader elsewhere, the channel's names removed) and its
  deadline (``timeout``, ``idle_timeout``). Where the feed dropped bytes it waits on
  the channel, as any reader.
- A rewind (resume) is never in this entry while its producer lives here: only a
  successor of a dead producer rewinds, and the creator's reader gets no takeover. The
  feed is still stopped if the segment counts one, and the file path decides.
- ``sendfile`` (a ``copy_to`` into a descriptor) and ``close`` stop the feed for good:
  the bytes go from the file without passing through this process.
"""

from __future__ import annotations

import threading
from collections import deque

from ipc.channel import LINGER, Channel
from ipc.clock import Clock
from ipc.segment import ReaderSlot

from ..deadline import Deadline, reading_on
from ..disk.index import Record
from ..disk.store import Store
from .pipe import Outcome, PipeReader

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable

# The bytes a feed holds for a creator that reads slower than its producer writes (a
# single write is held whatever its size: create's own bytes object, not a copy).
_LIMIT = 8 << 20


class FedReader(PipeReader):
    """The creator's reader: a :class:`PipeReader` that takes the producer's writes
    from memory while it keeps up (see the module docstring)."""

    def __init__(
        self,
        fd: int,
        channel: Channel,
        slot: ReaderSlot | None,
        liveness: float,
        store: Store,
        rec: Record,
        outcome: Outcome,
        clock: Clock,
        start: int,
        stall_timeout: float | None,
    ) -> None:
        super().__init__(
            fd, channel, slot, liveness, store, rec, outcome, clock, start, stall_timeout
        )
        self._feed_lock = threading.Lock()
        self._fed = threading.Condition(self._feed_lock)
        self._chunks: deque[bytes] = deque()
        self._head = 0  # the entry's offset of the first byte of _chunks[0]
        self._queued = 0  # bytes in _chunks
        self._written = 0  # the producer's offset after the last write it handed over
        self._ended = False  # the producer published the entry's outcome
        self._off = False  # fed no more (closed, or sending from the file)
        self._sleeping = False  # the reader waits on _fed ...
        self._until = 0  # ... for a write that reaches this offset

    # -- the producer's side (its thread) -------------------------------------------------

    def put(self, data: bytes, end: int) -> None:
        """The producer wrote ``data``, the entry's bytes up to ``end``; it publishes
        ``end`` next."""
        begin = end - len(data)
        with self._feed_lock:
            self._written = end
            kept = False
            if not self._off:
                tail = self._head + self._queued if self._chunks else self.position
                if begin <= tail < end and (
                    not self._chunks or self._queued + end - tail <= _LIMIT
                ):
                    if begin < tail:
                        data = data[tail - begin :]
                    if not self._chunks:
                        self._head = tail
                    self._chunks.append(data)
                    self._queued += len(data)
                    kept = True
            if self._sleeping and (end >= self._until or not kept):
                self._fed.notify()

    def ended(self) -> None:
        """The producer published the entry's outcome in the segment."""
        with self._feed_lock:
            self._ended = True
            self._fed.notify()

    # -- the creator's side ---------------------------------------------------------------

    def read(self, n: int, deadline: Deadline | None) -> bytes:
        if n <= 0:
            return b""
        self._enter()
        try:
            while True:
                avail = self._ready()  # first: closed, stalled, failed here, rewound
                data = self._from_feed(n)
                if data is not None:
                    return data
                if avail is None:
                    self._wait(deadline)
                elif not avail:
                    return b""
                elif (data := self._take(n, avail)) is not None:  # bytes the feed dropped
                    return data
        finally:
            self._exit()

    def read_nowait(self, n: int) -> bytes | None:
        if n <= 0:
            return b""
        self._enter()
        try:
            while True:
                avail = self._ready()
                data = self._from_feed(n)
                if data is not None:
                    return data
                if avail is None:
                    return None  # astream: then watch(), on the channel (its publish follows)
                if not avail:
                    return b""
                if (data := self._take(n, avail)) is not None:
                    return data
        finally:
            self._exit()

    def sendfile(
        self,
        out_fd: int,
        deadline: Deadline | None,
        wait_writable: Callable[[], None],
        limit: int | None = None,
    ) -> int:
        self._stop_feed()
        return super().sendfile(out_fd, deadline, wait_writable, limit)

    def _from_feed(self, n: int) -> bytes | None:
        """Up to ``n`` bytes at the reader's position from the feed, or None."""
        if self._seg.rewinds != self._rewinds:
            self._stop_feed()  # the file's path reads how (see the module docstring)
            return None
        with self._feed_lock:
            chunks = self._chunks
            while chunks:
                first = chunks[0]
                skip = self.position - self._head
                if skip >= len(first):  # read from the file meanwhile, or before start
                    chunks.popleft()
                    self._head += len(first)
                    self._queued -= len(first)
                    continue
                data = first if not skip and len(first) <= n else first[skip : skip + n]
                if skip + len(data) == len(first):
                    chunks.popleft()
                    self._head += len(first)
                    self._queued -= len(first)
                self.position += len(data)
                break
            else:
                return None
        self._counted()
        return data

    def _wait(self, deadline: Deadline | None) -> None:
        """Wait for the producer's next write (nothing is published past the position),
        on the feed's condition; or on the channel if the feed dropped bytes."""
        clock = self._waiter.clock
        until_dl = reading_on(deadline, clock)
        now = clock.monotonic()
        wake = self._channel.wake_for(self._slot, self.position, self._waiter, now, until_dl)
        if wake is not None:
            self.after_wake(wake)  # the liveness check (stall, removal), or the deadline
            return
        if self._mark is None:
            self._mark = (now, self.position)
        timeout = self._waiter.sleep_limit(now, until_dl)
        with self._feed_lock:
            if self._ended or self._chunks:
                return
            if self._off or self._written > self.position:
                behind = True  # bytes the feed dropped: their publish follows
            else:
                behind = False
                ahead = self._ahead
                self._until = (self.position // ahead + 1) * ahead if ahead else 0
                if self._until > self.position + 1:
                    timeout = min(timeout, LINGER)  # then any byte will do
                self._sleeping = True
                try:
                    self._fed.wait(timeout)
                finally:
                    self._sleeping = False
                    self._until = 0
        if behind:
            self._available(deadline)
        else:
            self._measure(clock.monotonic())

    def _advance(self, n: int) -> None:
        with self._feed_lock:
            self.position += n
        self._counted()

    def _counted(self) -> None:
        """The reader's slot follows its position (the producer's back pressure)."""
        if self._slot is not None:
            self._slot.set_position(self.position)
            self._channel.advanced()

    def _stop_feed(self) -> None:
        with self._feed_lock:
            self._off = True
            self._chunks.clear()
            self._queued = 0
            self._fed.notify()

    def _leave(self) -> None:
        self._stop_feed()  # a read waiting on the condition sees the close
        super()._leave()
