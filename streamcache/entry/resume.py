"""Resuming an entry whose producer died (``resume=True``: create is deterministic).

A reader that finds its producer dead (:meth:`pipe.PipeReader._check_producer`) and
whose call passed ``resume=True`` asks its :class:`Takeover` to carry the entry on
instead of failing. Under the key's index lock, one such reader is elected (the first
to take the lock while the entry's producer is still dead); it becomes the entry's
producer, in a thread of its process, and re-runs create: the bytes create gives up
to the data file's length (everything the dead producer wrote, so every reader's
position and the published offset too) are compared with those in the file and not
written again; the rest is appended to the same file and published on the same
channel. Readers keep their descriptors, slots and positions: they never see the seam.

Invariants (cross-process):

- **Who may take over.** Only a reader of the entry, under the key's lock, while the
  key's record still names the entry's data file (its random part: the name's pid
  changes with the producer), the segment still says "writing" and not stalled, and
  the record's producer is not producing (:meth:`Store.producer_alive`: of this boot,
  its pid running and the data file's flock held). A producer that ended has
  published its outcome before letting go of its lock (producer.py), so "writing"
  with the lock free means dead. Every other reader that finds the producer dead
  comes here too, finds the successor alive under the same lock, and goes back to
  waiting: so there is one producer at a time, host-wide.
- **How the identity changes hands**, all inside that critical section and in this
  order: the successor takes the data file's exclusive flock on a descriptor of its
  own (:meth:`Filestore.take_over`: impossible while any descriptor of the dead
  producer's lives), renames the file to a name carrying its own pid (same random
  part, so the same channel), names itself producer in the segment
  (:meth:`ipc.segment.Segment.take_over`), publishes the file's length as the offset,
  and rewrites the record (this boot, its pid and start time, the old expiry). A
  producer killed while sealing (after the entry's last byte, before it was
  published) left a file that is taken over the same way, its trailer cut off first
  (the entry is rewound to its end, for readers that took trailer bytes for data in
  between: see :meth:`Filestore.take_over`); the re-run then checks every byte. A
  reader's liveness check that sees the new pid therefore also finds the lock held;
  one that sees the old pid finds it dead, comes here, and waits for the lock.
- **Never spliced.** The successor appends nothing until create has given every byte
  already in the file and each was equal. If create gives byte D differently (or ends
  at D, short of them), the entry is *rewound* to D (:meth:`ipc.segment.Segment.rewind`:
  the segment says so before the file is truncated): every reader that had read past
  D fails with :class:`NotDeterministic` (a CreateError), and every other reader goes
  on with the new run's bytes from D, which are then appended and published. So no
  reader ever gets bytes of one run after bytes of the other that differ from them;
  the entry finishes with the new run's bytes only. Create announcing another size
  fails the entry for every reader (their Content-Length may be out already).
- A call with ``resume`` whose lookup finds the producer dead (before any reader
  noticed) takes the entry over there, in the same critical section
  (:meth:`Takeover.in_lookup`), if the entry has a channel that still takes readers
  (nobody waiting means nothing to carry on: it is discarded and created afresh).
- Cleanup leaves a dead producer's entry whose segment is marked resumable (a reader
  with ``resume`` attached, word 13) while a reader is alive in it: its readers resume
  it or drop it within their liveness (``Store.awaits_resume``). A reader that drops
  an entry (``Store.producer_died``) first checks, under the key's lock, that it was
  not resumed meanwhile, so it never unlinks a successor's channel.
- Without ``resume`` a reader has no Takeover and behaves as before: ProducerDied.
  A reader without it that finds the successor alive keeps reading.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import ipc
from ipc.channel import Channel
from ipc.clock import SYSTEM, Clock
from ipc.liveness import same_process
from ipc.naming import BASE_HEX
from ipc.segment import ReaderSlot, Segment, SegmentError

from ..disk.index import Record
from ..disk.store import Store
from ..errors import CreateError, NotDeterministic
from ..log import log
from .pipe import CHUNK, PipeReader
from .producer import Producer, Producers, Tee
from .writer import EntryWriter

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from .create_types import Create

# Attempts (a millisecond apart) at the data file's flock: readers' probes hold it
# shared for two syscalls each ...
_LOCK_TRIES = 200
# ... and liveness checks on which a reader finds it taken before it gives up (a
# descriptor of the dead producer's may live on in a child it forked).
_BUSY_CHECKS = 5

# How the lookup makes its reader of an entry it resumes: (data file descriptor,
# channel, slot, the entry's new record) -> the reader.
MakeReader = Callable[[int, Channel, ReaderSlot | None, Record], PipeReader]


class Takeover:
    """A resumable reader's way to carry its entry on (see the module docstring):
    ``create`` is the reader's own call's, the options those of its cache."""

    def __init__(
        self,
        store: Store,
        create: Create,
        *,
        window: int,
        liveness: float,
        running: Producers,
        clock: Clock = SYSTEM,
    ) -> None:
        self._store = store
        self._create = create
        self._busy = 0  # liveness checks that found the dead producer's file locked
        self._options: dict[str, Any] = {
            "window": window,
            "liveness": liveness,
            "running": running,
            "clock": clock,
        }

    def __call__(self, rec: Record, fd: int, seg: Segment) -> Record | None:
        """For a reader of ``rec``'s entry (data file open as ``fd``, segment ``seg``)
        that found its producer dead: the entry's record once a live producer writes
        it (this reader's, newly elected, or another's), or None if it cannot go on
        (gone from the index, or its data file cannot be taken over): the reader
        then fails as without resume."""
        store = self._store
        with store.index.locked(rec.key, None):
            cur = store.index.read(rec.key)
            if cur is None or cur.file[:BASE_HEX] != rec.file[:BASE_HEX]:
                return None  # finished, failed, evicted or replaced meanwhile
            if seg.state != ipc.STATE_WRITING or seg.stalled:
                return cur  # ended: the reader reads how
            if store.producer_alive(cur, fd):
                return cur  # taken over already (or never dead)
            try:
                producer = self._elect(cur, fd, seg)
            except BlockingIOError:
                self._busy += 1
                return cur if self._busy < _BUSY_CHECKS else None  # again next check
        if producer is None:
            return None
        self._start(producer, cur)
        return producer.rec

    def in_lookup(self, rec: Record, make_reader: MakeReader) -> PipeReader | None:
        """For a call with ``resume`` whose lookup (key's lock held) found ``rec``'s
        producer dead: a reader of the entry, which this call now produces, or None if
        it cannot go on (no channel, so no reader is waiting; ended; every reader
        left): the lookup then discards it as without resume."""
        store = self._store
        try:
            fd = store.files.open(rec.file)
        except FileNotFoundError:
            return None
        try:
            channel = Channel.open(store.channel_base(rec.file))
        except SegmentError:
            os.close(fd)
            return None
        seg = channel.seg
        producer = None
        slot = None
        try:
            if (
                same_process(seg.producer, ipc.ProcessId(rec.pid, rec.start))
                and not seg.stalled
                and seg.takes_new_readers()
            ):
                slot = seg.claim_slot(ipc.current_process())
                with contextlib.suppress(BlockingIOError):
                    producer = self._elect(rec, fd, seg)
            if producer is None:
                if slot is not None:
                    slot.release()
                channel.close()
                os.close(fd)
                return None
            seg.mark_resumable()
            reader = make_reader(fd, channel, slot, producer.rec)
        except BaseException:
            if producer is not None:
                producer.abort(CreateError("the entry could not be resumed"))
            raise
        self._start(producer, rec)
        return reader

    def _elect(self, cur: Record, fd: int, seg: Segment) -> ResumedProducer | None:
        """Become the producer of ``cur``'s entry (key's lock held, its producer dead):
        the steps and their order are the module docstring's."""
        store = self._store
        try:
            channel = Channel.open(store.channel_base(cur.file))
        except SegmentError:
            return None  # its names are gone (wiped): it fails as without resume
        if channel.seg.inode != seg.inode:
            channel.close()
            return None
        try:
            taken = store.files.take_over(cur.file, fd, _LOCK_TRIES)
        except BaseException:
            channel.close()
            raise
        if taken is None:
            channel.close()
            return None
        name, wfd, cut = taken
        me = ipc.current_process()
        new = Record(cur.key, name, me.pid, me.start, cur.expires)
        dead = channel.seg.producer
        try:
            prefix = os.fstat(wfd).st_size
            channel.seg.take_over(me)
            if cut:
                channel.seg.rewind(prefix)  # its dead producer's trailer: never data
            elif prefix > channel.seg.offset:
                channel.seg.publish_offset(prefix)  # all of it is the entry's
            store.index.write(new)
            return ResumedProducer(store, new, channel, wfd, prefix, **self._options)
        except BaseException:
            # (A signal handler's exception, say.) Undone, so the entry is still its
            # dead producer's, under its record's name, for the next reader to take
            # over; else it named a live process that holds no lock, and a data file
            # nobody could find.
            with contextlib.suppress(OSError):
                if store.index.read(cur.key) != new:
                    channel.seg.take_over(dead)
                    os.rename(store.files.path(name), store.files.path(cur.file))
            channel.close()
            os.close(wfd)
            raise

    def _start(self, producer: ResumedProducer, dead: Record) -> None:
        """Run the elected producer in its thread. Anything raised before it runs (a
        signal handler's exception, say) fails the entry, which would otherwise name
        a live producer, holding its lock, that never writes."""
        try:
            log.info(
                "streamcache: entry %s resumed by pid %d after %d bytes (its producer, pid "
                "%d, died)",
                producer.rec.key[:16],
                producer.rec.pid,
                producer.prefix,
                dead.pid,
            )
            assert producer.channel is not None
            producer.channel.ring_all()  # readers waiting on the old offset: there is more
            producer.start(self._create)
        except BaseException as exc:
            producer.abort(CreateError(f"the entry could not be resumed: {exc!r}"))
            raise


class ResumedProducer(Producer):
    """The producer of a resumed entry: its writer checks the first ``prefix`` bytes."""

    def __init__(
        self,
        store: Store,
        rec: Record,
        channel: Channel,
        fd: int,
        prefix: int,
        **options: Any,
    ) -> None:
        super().__init__(store, rec, channel, fd, **options)
        self.channel = channel
        self.prefix = prefix

    def _writer(self, tee: Tee | None = None) -> EntryWriter:
        writer = ResumingWriter(
            self._fd,
            self._channel,
            self._window,
            self._liveness,
            None,
            self._store.channel_base(self.rec.file),
            self._clock,
            self._store.metrics,
            self._account,
        )
        writer.resume_at(self.prefix)
        return writer


class ResumingWriter(EntryWriter):
    """An EntryWriter that starts at byte ``prefix`` of a file already holding that
    many bytes: create's first ``prefix`` bytes are compared with them, not written."""

    _prefix = 0
    _checked = 0  # bytes of the prefix create has given (and found equal)

    def resume_at(self, prefix: int) -> None:
        self._prefix = prefix
        self.offset = self._counted = prefix

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._checked >= self._prefix:
            return super().write(data)
        if self._closed:
            raise ValueError("write to a closed streamcache writer")
        if isinstance(data, str):
            raise TypeError("write() needs bytes, not str")
        self.check_stalled()
        view = memoryview(data).cast("B")
        take = min(len(view), self._prefix - self._checked)
        same = self._compare(view[:take])
        if same < take:
            self._rewind()
        if same < len(view):
            super().write(view[same:])
        return len(view)

    def _compare(self, view: memoryview) -> int:
        """How many of ``view``'s bytes equal the file's at the bytes checked so far
        (all of them, or up to the first that differs); counted as checked."""
        done = 0
        while done < len(view):
            old = os.pread(self._fd, min(len(view) - done, CHUNK), self._checked + done)
            new = view[done : done + len(old)]
            if not old:
                break  # the file ends here (it never does before the prefix's end)
            if old != new:
                done += next(i for i, b in enumerate(old) if b != new[i])
                break
            done += len(old)
        self._checked += done
        if self.channel is not None:
            self.channel.seg.set_checked(self._checked)  # readers' stall clocks: progress
        return done

    def _rewind(self) -> None:
        """Create gave byte ``_checked`` differently from the dead producer's run: the
        entry goes back to it (readers past it fail, the others read on from the new
        run), and from here the writer appends. Order: the segment first, then the
        file (see :meth:`ipc.segment.Segment.rewind`)."""
        at = self._checked
        log.warning(
            "streamcache: a resumed entry's create is not deterministic: it gave byte %d "
            "differently; readers past it fail, the others go on with the new bytes",
            at,
        )
        if self.channel is not None:
            self.channel.seg.rewind(at)
        os.ftruncate(self._fd, at)
        os.lseek(self._fd, at, os.SEEK_SET)
        self._prefix = self.offset = self._counted = at
        if self.channel is not None:
            self.channel.ring_all()  # readers waiting past it: they fail now

    def set_size(self, size: int) -> int:
        before = None if self.channel is None else self.channel.seg.announced_size
        if before is not None and before != size:
            self._not_deterministic(f"it announced {size} bytes, not {before}")
        return super().set_size(size)

    def close(self) -> None:
        if not self._closed and self._checked < self._prefix:
            self._rewind()  # it ended short: the entry ends there
        super().close()

    def _not_deterministic(self, why: str) -> None:
        raise NotDeterministic(
            f"create is not deterministic: re-run to carry on the entry after its producer "
            f"died, {why} (the dead producer had written {self._prefix} bytes)"
        )
