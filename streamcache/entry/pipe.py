"""The pipe's reading side: many readers, in any process, of one producer's data file.

The producer (:mod:`writer`) appends to the entry's data file and publishes its
offset on the entry's channel; readers read the file up to that offset, each
publishing its position in its own slot (which back pressure counts). A waiting
reader checks the producer's liveness on its own absolute deadline
(:class:`ipc.wait.Waiter`) however often it is woken, and raises ``ProducerDied``
for a dead producer.

Invariants kept here:

- A reader never returns a byte at or past the entry's final size: beyond the
  published offset it trusts only :func:`filestore.written_so_far` (which never
  counts a trailer byte), and at "done" its position must equal the final size.
- A stall is declared by a waiting reader only (``stall_timeout``): one that has
  waited at one offset, its producer alive, for that long on its own clock, counted
  from when it first waited there (its own observation: no clock is shared between
  processes). It marks the segment under the key's lock (:meth:`Store.stalled`, whose
  docstring gives the order against the producer's publish); every reader that sees
  the mark raises :class:`ProducerStalled` at its next read, and the producer's next
  write does. A finished ("done") entry is never marked. A resumed entry's producer
  re-creating the bytes already on disk publishes how far it checked them
  (:meth:`ipc.segment.Segment.set_checked`): that is progress too, so a long prefix
  to re-check is never taken for a stall.
- A reader that keeps up with a fast producer takes several writes per wake-up: it
  sleeps until about the bytes the producer is expected to write in ``LINGER`` are
  published (its rate measured over at least :data:`_RATE_SPAN`; at most ``COALESCE``
  bytes, for at most ``LINGER``, see :mod:`ipc.channel`), rounded to a power of two
  whose next multiple it waits for (so readers wake together). Where that is under
  :data:`_MIN_COALESCE` (a slow producer: a few bytes now and then), or before it
  measured a rate (the first byte), it is woken by the next write, as a pipe's reader.
- The producer is alive only while its process runs and it holds its lock on the
  data file (:meth:`PipeReader._producer_locked`); the probe is two syscalls, made on
  each liveness check (once per ``liveness`` of waiting), never per read.
- A reader of a resumable entry (``takeover`` given: its call passed ``resume=True``)
  that finds the producer dead asks :class:`Takeover` first: one such reader, elected
  under the key's lock, becomes the producer (:mod:`resume`); the others, and any
  reader whose next check finds the successor alive and locked, keep waiting at their
  positions. Only when the entry cannot go on does the reader fail as before.
- This module calls nothing above it: what a reader needs from the cache (the store,
  to settle an entry whose producer died; the producer's own exception, when it ran
  in this process) is handed to it as objects.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import ipc
from ipc.channel import COALESCE, LINGER, Channel
from ipc.clock import SYSTEM, Clock
from ipc.hub import Watch, hub
from ipc.segment import FAILED_ABANDONED, ReaderSlot, Segment
from ipc.wait import Waiter, Wake

from ..deadline import Deadline, reading_on
from ..disk.filestore import written_so_far
from ..disk.index import Record
from ..disk.store import Store
from ..errors import (
    AllReadersLeft,
    CreateError,
    NotDeterministic,
    ProducerDied,
    ProducerStalled,
    SharedMemoryRemoved,
    describe,
)

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import concurrent.futures
    from typing import NoReturn, Protocol

CHUNK = 1 << 20  # a reader reads ahead at most this much
CREATOR_SLOT = 0  # the creating process's reader slot in its entry's segment
# A reader measures its producer's rate over at least this long before it changes how
# many bytes it waits for (one write tells too little) ...
_RATE_SPAN = 0.01
# ... and waits for the next write where LINGER brings fewer bytes than this.
_MIN_COALESCE = 256 << 10


class Outcome:
    """How the producer of an entry ended, as the process that ran it knows it: the
    producer sets ``error`` before it publishes the failure, so a reader in the same
    process can attach the original exception as the CreateError's ``__cause__``."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None


if TYPE_CHECKING:  # a Protocol, for type checkers only

    class Takeover(Protocol):
        """What a reader of a resumable entry (``resume=True``) calls when it finds the
        producer dead: the entry's record once a live producer writes it again (one
        reader is elected to, see :mod:`resume`), or None: the reader fails as without."""

        def __call__(self, rec: Record, fd: int, seg: Segment) -> Record | None: ...


class _Reader:
    """The copy step shared by both readers: ``pread`` or ``sendfile`` of what
    :meth:`_available` reports, from the reader's own position.

    ``close`` is safe while another thread of this process is inside ``read`` (an
    ``astream`` cancelled mid-wait closes from a second thread): it gives up the
    reader's place at once, but the descriptor and mappings are released by
    whichever of the two finishes last, so the reading thread never touches an
    unmapped semaphore or a reused descriptor.
    """

    _SHORT = "the entry's data file is shorter than published"

    def __init__(self, fd: int, start: int = 0) -> None:
        self._fd = fd
        self.start = start
        self.position = start
        self._guard = threading.Lock()  # protects _busy, _closed and _released
        self._busy = 0
        self._closed = False
        self._released = False

    @property
    def fd(self) -> int:
        """The data file's descriptor (valid until the reader is released)."""
        return self._fd

    @property
    def size(self) -> int | None:
        """The entry's final size: once finished, or as its create announced it."""
        raise NotImplementedError

    @property
    def produced(self) -> int:
        """Bytes of the entry written so far."""
        raise NotImplementedError

    def finished_size(self) -> int | None:
        """The entry's size if it is finished now (its data file complete), else None."""
        raise NotImplementedError

    def _available(self, deadline: Deadline | None) -> int:
        """Bytes readable now (waiting for some if needed); 0 at the end."""
        raise NotImplementedError

    def _ready(self) -> int | None:
        """Bytes readable now (0 at the end), or None: the reader must wait."""
        raise NotImplementedError

    def read(self, n: int, deadline: Deadline | None) -> bytes:
        """Up to ``n`` (at most CHUNK) bytes; b"" at the end of a finished entry."""
        if n <= 0:
            return b""
        self._enter()
        try:
            while (data := self._take(n, self._available(deadline))) is None:
                pass  # rewound to this reader's position: wait for the new bytes
            return data
        finally:
            self._exit()

    def read_nowait(self, n: int) -> bytes | None:
        """As :meth:`read`, but None instead of waiting (then :meth:`watch`)."""
        if n <= 0:
            return b""
        self._enter()
        try:
            while True:
                avail = self._ready()
                if avail is None:
                    return None
                data = self._take(n, avail)
                if data is not None:
                    return data
        finally:
            self._exit()

    def _take(self, n: int, avail: int) -> bytes | None:
        """Up to ``n`` of the ``avail`` bytes; None if the entry was rewound to this
        reader's position meanwhile (nothing of what the pread got is the entry's)."""
        if not avail:
            return b""
        data = os.pread(self._fd, min(avail, n, CHUNK), self.position)
        at = self._rewound()
        if at is not None:
            # Only bytes before the rewind are surely the same in both runs of create.
            if self.position > at:
                raise self._diverged(at)
            data = data[: at - self.position]
            if not data:
                return None
        if not data:
            raise CreateError(self._SHORT)
        self._advance(len(data))
        return data

    def _rewound(self) -> int | None:
        """The byte a rewind of a resumed entry went back to, if one happened since this
        reader last asked (see :meth:`ipc.segment.Segment.rewind`), else None."""
        return None

    def _diverged(self, at: int) -> CreateError:
        raise NotImplementedError

    def watch(self, deadline: Deadline | None) -> concurrent.futures.Future[Wake]:
        """After :meth:`read_nowait` gave None: a future completed (by the process's
        one waiting thread) with the reason to try again; then :meth:`end_watch`
        and :meth:`after_wake`."""
        import concurrent.futures  # here: it costs start-up, and only astream waits

        done: concurrent.futures.Future[Wake] = concurrent.futures.Future()
        done.set_result(Wake.PROGRESS)
        return done

    def end_watch(self) -> None:
        """End the wait :meth:`watch` began (idempotent)."""

    def after_wake(self, wake: Wake) -> None:
        """Act on the reason a wait ended: the deadline, or a liveness check."""
        if wake is Wake.DEADLINE:
            raise TimeoutError("timed out waiting for the producer")

    def sendfile(
        self,
        out_fd: int,
        deadline: Deadline | None,
        wait_writable: Callable[[], None],
        limit: int | None = None,
    ) -> int:
        """Move every byte available now (at most ``limit``) to ``out_fd`` with
        os.sendfile, none through this process; how many (0 at the end). The kernel
        moves at most what ``out_fd`` takes without blocking plus what it waits for (a
        pipe: its capacity, 64 KiB by default), so this loops without returning, and
        the reader's place advances after each call (the producer's back pressure
        counts it)."""
        self._enter()
        try:
            while (sent := self._send(out_fd, deadline, wait_writable, limit)) is None:
                pass  # rewound to this reader's position: wait for the new bytes
            return sent
        finally:
            self._exit()

    def _send(
        self,
        out_fd: int,
        deadline: Deadline | None,
        wait_writable: Callable[[], None],
        limit: int | None,
    ) -> int | None:
        avail = self._available(deadline)
        if not avail:
            return 0
        fd, begin = self._fd, self.position
        end = begin + (avail if limit is None else min(avail, limit))
        while self.position < end:
            try:
                n = os.sendfile(out_fd, fd, self.position, end - self.position)
            except BlockingIOError:
                wait_writable()
                continue
            except OSError:
                if self.position == begin:
                    raise
                break  # what went out is counted; the next call raises it again
            at = self._rewound()
            if at is not None:
                if self.position + n > at:  # some of what went out was the old run's
                    raise self._diverged(at)
                self._advance(n)  # all of it before the rewind: the same in both runs
                return (self.position - begin) or None
            if not n:
                raise CreateError(self._SHORT)
            self._advance(n)
        return self.position - begin

    def _advance(self, n: int) -> None:
        self.position += n

    def _enter(self) -> None:
        with self._guard:
            if self._closed:
                raise ValueError("I/O operation on a closed stream")
            self._busy += 1

    def _exit(self) -> None:
        with self._guard:
            self._busy -= 1
            release = self._closed and not self._busy and not self._released
            self._released = self._released or release
        if release:
            self._release()

    def close(self) -> None:
        with self._guard:
            if self._closed:
                return
            self._closed = True
            # The close counts as a user until its _leave is done, so a read ending
            # meanwhile cannot release (unmap) what _leave still touches.
            self._busy += 1
        try:
            self._leave()
        finally:
            self._exit()

    def _leave(self) -> None:
        """Give up this reader's place (mappings still valid)."""

    def _release(self) -> None:
        os.close(self._fd)


class PipeReader(_Reader):
    """Reads an entry that is still being written, from byte ``start``.

    ``slot`` is None for a reader beyond the segment's slot capacity: it still reads
    everything, but does not count for back pressure, and re-checks every few
    milliseconds instead of sleeping on the bell. ``store`` and ``rec`` settle the
    entry if its producer dies; ``outcome`` is the producer's, when it runs in this
    process.
    """

    def __init__(
        self,
        fd: int,
        channel: Channel,
        slot: ReaderSlot | None,
        liveness: float,
        store: Store | None,
        rec: Record | None,
        outcome: Outcome | None = None,
        clock: Clock = SYSTEM,
        start: int = 0,
        stall_timeout: float | None = None,
        takeover: Takeover | None = None,
    ) -> None:
        super().__init__(fd, start)
        self._stall_timeout = stall_timeout
        self._takeover = takeover
        # (offset, when on the waiter's clock): where this reader first waited, silently
        # (offset, bytes a successor re-checked), and when this reader first waited at it
        self._quiet: tuple[tuple[int, int], float] | None = None
        if slot is not None and start:
            slot.set_position(start)  # back pressure counts it from there
        self._channel = channel
        self._seg = channel.seg
        self._slot = slot
        self._waiter = Waiter(liveness, clock)
        self._store = store
        self._rec = rec
        self._outcome = outcome
        self._final: int | None = None  # the recorded size, once found after a death
        self._in_file = 0  # bytes surely in the data file beyond the published offset
        self._watch: Watch | None = None  # an asynchronous wait in progress
        self._waits_on_hub = False  # its checks' verdicts are shared (see _report_check)
        self._producer_gone = False  # found dead by a liveness check
        self._rewinds = channel.seg.rewinds  # the rewinds this reader knows of
        self._divergence: NotDeterministic | None = None  # once it read a rewound byte
        # Wait for the next multiple of this many bytes (0: for the next write).
        self._ahead = 0
        self._mark: tuple[float, int] | None = None  # (time, offset) the rate is measured from

    @property
    def size(self) -> int | None:
        if self._final is not None:
            return self._final
        offset, state = self._seg.progress()
        if state == ipc.STATE_DONE:
            return offset
        return self._seg.announced_size

    @property
    def produced(self) -> int:
        if self._final is not None:
            return self._final
        offset, state = self._seg.progress()
        return offset if state == ipc.STATE_DONE else max(offset, self._in_file)

    def finished_size(self) -> int | None:
        if self._final is not None:
            return self._final
        offset, state = self._seg.progress()
        return offset if state == ipc.STATE_DONE else None

    def _available(self, deadline: Deadline | None) -> int:
        while True:
            avail = self._ready()
            if avail is not None:
                return avail
            clock = self._waiter.clock
            if self._mark is None:
                self._mark = (clock.monotonic(), self.position)
            wake = self._channel.wait_for_progress(
                self._slot,
                self.position,
                self._waiter,
                reading_on(deadline, clock),
                (self.position // self._ahead + 1) * self._ahead if self._ahead else 0,
            )
            if wake is Wake.PROGRESS:
                self._measure(clock.monotonic())
            self.after_wake(wake)

    def _measure(self, now: float) -> None:
        """After a wait: how many bytes the next ones wait for, from the producer's rate
        since the last measurement (at least _RATE_SPAN ago)."""
        assert self._mark is not None
        since, offset = self._mark
        if now - since < _RATE_SPAN:
            return
        produced = self._seg.offset
        ahead = min(int((produced - offset) * LINGER / (now - since)), COALESCE)
        # A power of two, and the next multiple of it is waited for: readers of one
        # producer measure about the same rate, so they wait for the same offsets and
        # one ring wakes them all.
        self._ahead = 1 << (ahead.bit_length() - 1) if ahead >= _MIN_COALESCE else 0
        self._mark = (now, produced)

    def _ready(self) -> int | None:
        if self._closed:
            raise ValueError("I/O operation on a closed stream")
        at = self._rewound()
        if (at is not None and self.position > at) or self._divergence is not None:
            raise self._diverged(at or 0)
        if self._final is not None:
            offset, state = self._final, ipc.STATE_DONE
        else:
            offset, state = self._seg.progress()
            if state != ipc.STATE_DONE and self._seg.stalled:
                raise self._stalled()
            if state == ipc.STATE_WRITING:
                offset = max(offset, self._in_file)
        if offset > self.position:
            return offset - self.position
        if state == ipc.STATE_DONE:
            if offset < self.position == self.start:
                return 0  # started past the end: nothing to read
            if offset != self.position:
                raise CreateError(
                    f"the entry ended at {offset} bytes, but this reader is at "
                    f"{self.position}: its data file does not match its record"
                )
            return 0
        if state == ipc.STATE_FAILED:
            raise self._failure()
        if self._producer_gone:
            # Caught up with what a dead producer wrote: settle now, not a period later.
            self._check_producer()
            return self._ready()
        if self._stall_timeout is not None:
            mark = (offset, self._seg.checked)
            if self._quiet is None or self._quiet[0] != mark:
                self._quiet = (mark, self._waiter.clock.monotonic())  # silence starts here
        return None

    def watch(self, deadline: Deadline | None) -> concurrent.futures.Future[Wake]:
        self.end_watch()
        self._waits_on_hub = True
        at = reading_on(deadline, self._waiter.clock)
        self._watch = hub().watch(self._channel, self._slot, self.position, self._waiter, at)
        return self._watch.future

    def end_watch(self) -> None:
        w, self._watch = self._watch, None
        if w is not None:
            hub().forget(w)

    def after_wake(self, wake: Wake) -> None:
        super().after_wake(wake)
        if wake is Wake.CHECK:
            self._check_producer()

    def _check_producer(self) -> None:
        """The liveness check, due every ``liveness`` seconds of waiting."""
        # Bytes in the file count too: an inline producer publishes only once it has
        # found the channel (the kernel grows a file only over copied bytes, and the
        # producer never rewrites).
        began = self._waiter.clock.monotonic()
        self._in_file = max(self._in_file, written_so_far(self._fd))
        if self._seg.state != ipc.STATE_WRITING:
            self._report_check(began, alive=True)
            return  # it ended (and may have let go of its lock since): _ready reads how
        if not self._producer_gone and self._seg.producer_alive() and self._producer_locked():
            if self._in_file > self.position:
                self._report_check(began, alive=True)
                return
            if self._seg.still_named() or self._seg.state != ipc.STATE_WRITING:
                self._report_check(began, alive=True)
                self._check_stall()
                return  # (the producer says how it ended before it unlinks the names)
            self._report_check(began, alive=False)
            if self._seg.stalled:
                raise self._stalled()  # (its names may go before its producer ends it)
            self._removed()
        if not self._producer_gone and self._takeover is not None and self._rec is not None:
            rec = self._takeover(self._rec, self._fd, self._seg)
            if rec is not None:  # a live producer carries the entry on: wait for it
                self._rec = rec
                self._report_check(began, alive=True)
                return
        # Dead: the bytes it wrote but never published are read first (they are
        # data: the file is still 0600); once caught up, _ready comes back here.
        if not self._producer_gone:
            self._report_check(began, alive=False)
        self._producer_gone = True
        if self._in_file > self.position:
            return
        if self._store is not None and self._rec is not None:
            slot = None if self._slot is None else self._slot.index
            found = self._store.producer_died(self._rec, self._fd, slot)
            if isinstance(found, Record):  # carried on (resumed): wait for its producer
                self._rec = found
                self._producer_gone = False
                return
            self._final = found
        if self._final is None:
            pid = self._seg.producer.pid
            if self._seg.producer_alive():  # a stale or forged record, or one it let go
                raise ProducerDied(
                    f"the process named as the entry's producer (pid {pid}) holds no lock "
                    "on its data file: it is not producing the entry"
                )
            raise ProducerDied(f"the producing process (pid {pid}) died before finishing the entry")

    def _rewound(self) -> int | None:
        count = self._seg.rewinds
        if count == self._rewinds:
            return None
        # Rewound more than once since this reader last looked: it cannot tell to where
        # each went, so it takes its start (whatever it read may be the old run's).
        at = self._seg.rewound_at if count == self._rewinds + 1 else self.start
        self._rewinds = count
        self._in_file = min(self._in_file, at)
        return at

    def _diverged(self, at: int) -> NotDeterministic:
        """The error of a reader that read bytes of a resumed entry from before a rewind
        to ``at``: those bytes are not the entry's any more. Raised by every later read."""
        if self._divergence is None:
            self._divergence = NotDeterministic(
                f"create is not deterministic: re-run to carry on the entry after its "
                f"producer died, it gave byte {at} differently, and this reader had read "
                f"past it (to byte {self.position})"
            )
        return self._divergence

    def _report_check(self, began: float, alive: bool) -> None:
        """Share a check's verdict with this process's other waiting readers of the
        channel (see :mod:`ipc.hub`): only waits on the hub read it."""
        if self._waits_on_hub:
            hub().checked(self._channel, self._waiter.clock, began, alive, self._in_file)

    def _check_stall(self) -> None:
        """With ``stall_timeout``: declare the live producer stalled once this reader
        has waited at one offset for that long (see the module docstring)."""
        quiet = self._quiet
        if self._stall_timeout is None or quiet is None:
            return
        offset, state = self._seg.progress()
        if (
            state != ipc.STATE_WRITING
            or (max(offset, self._in_file), self._seg.checked) != quiet[0]
        ):
            return  # (progress: the next wait starts a new silence)
        if self._waiter.clock.monotonic() - quiet[1] < self._stall_timeout:
            return
        if self._store is not None and self._rec is not None:
            if not self._store.stalled(
                self._rec, self._fd, self._seg.mark_stalled, self._seg.producer.pid
            ):
                return  # finished meanwhile: "done" follows
        else:
            self._seg.mark_stalled()
        self._channel.ring_all()  # the other readers here and elsewhere: see the mark
        raise self._stalled()

    def _stalled(self) -> ProducerStalled:
        pid = self._seg.producer.pid
        return ProducerStalled(
            f"the producing process (pid {pid}) stalled: it wrote nothing for the cache's "
            "stall_timeout while readers waited"
        )

    def _producer_locked(self) -> bool:
        """Whether the producer still holds its lock on the data file (see
        filestore.py): a live pid alone may be any process (a forged or stale record).
        A reader in the producer's own process (``outcome`` given) skips the probe:
        its descriptor may share the producer's open file description (the inline
        creator's follower), on which a probe would give the lock away."""
        return self._outcome is not None or ipc.lock_held(self._fd)

    def _removed(self) -> NoReturn:
        """The segment's name is gone while its live producer still writes: /dev/shm
        was wiped. The entry's record goes, so the next fetch creates afresh (the
        producer fails the entry itself once it notices)."""
        if self._store is not None and self._rec is not None:
            self._store.forget(self._rec)
        raise CreateError(
            describe(
                SharedMemoryRemoved("the entry's shared memory was removed while it was written")
            )
        )

    def _advance(self, n: int) -> None:
        self.position += n
        if self._slot is not None:
            self._slot.set_position(self.position)
            self._channel.advanced()

    def _failure(self) -> CreateError:
        text = self._seg.error
        err: CreateError = (
            AllReadersLeft(text)
            if self._seg.failure_code == FAILED_ABANDONED
            else CreateError(text)
        )
        err.__cause__ = self._outcome.error if self._outcome is not None else None
        return err

    def _leave(self) -> None:
        self.end_watch()  # the hub lets go of the channel before it is unmapped
        if self._slot is not None and self._slot.release():
            # The producer may be waiting on us; let it re-count its readers.
            self._channel.advanced()
        # Wake our own thread if it sleeps in read() (a spurious wake-up for others).
        self._channel.readers_bell.ring()

    def _release(self) -> None:
        self._channel.close()
        os.close(self._fd)


class FileReader(_Reader):
    """Reads a finished entry of known size; takes no slot (the entry is immutable)."""

    _SHORT = "the entry's data file is shorter than its recorded size"

    def __init__(self, fd: int, size: int, start: int = 0) -> None:
        super().__init__(fd, start)
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    @property
    def produced(self) -> int:
        return self._size

    def finished_size(self) -> int:
        return self._size

    def _available(self, deadline: Deadline | None) -> int:
        return max(self._size - self.position, 0)

    def _ready(self) -> int:
        return max(self._size - self.position, 0)
