"""The lookup: under the key's lock, a reader on the entry of a key (finished, or in
flight), or a new entry whose producer this call runs; or neither, when a miss must
bypass the cache. :class:`StreamCache` calls it; nothing here is public API.
"""

from __future__ import annotations

import os

import ipc
from ipc.channel import Channel, unlink_channel
from ipc.clock import Clock
from ipc.segment import ReaderSlot, mapping_prepared, prepare_mapping
from ipc.tuples import NamedTuple

from .deadline import Deadline, remaining
from .disk.filestore import Finished, set_entry_info
from .disk.index import Record
from .disk.store import Store
from .disk.usage import is_disk_full
from .entry.feed import FedReader
from .entry.pipe import CREATOR_SLOT, FileReader, PipeReader
from .entry.producer import Producer, Producers
from .entry.resume import Takeover
from .log import log
from .options import CacheOptions

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from .entry.create_types import Create


class Found(NamedTuple):
    """What the lookup under the key's lock gave: a reader on the entry (``created``:
    this call made the entry, its producer runs in a thread), or no reader because
    this call created the entry inline and copied ``written`` bytes to its dst; or
    none because the miss must bypass the cache (``bypass``: why)."""

    reader: FileReader | PipeReader | None
    created: bool
    written: int = 0
    bypass: str | None = None


class Lookup:
    """The lookup of one cache: its store, clock and options, and its producers in
    flight (``running``)."""

    def __init__(self, store: Store, clock: Clock, opts: CacheOptions, running: Producers) -> None:
        self.store = store
        self.index = store.index
        self.files = store.files
        self.opts = opts
        self._clock = clock
        self._running = running

    def find_or_claim(
        self,
        key: str,
        h: str,
        create: Create,
        deadline: Deadline | None,
        dst: Any,
        start: int,
        takeover: Takeover | None = None,
    ) -> Found:
        """Under the key's lock: a reader on the entry (from byte ``start``), or a new
        entry of ours, whose producer runs in a thread (``dst`` None) or here, copying
        to ``dst``; or neither, when the miss must bypass the cache. A reader with
        ``takeover`` (the call's ``resume``) carries the entry on if its producer dies."""
        # A created entry is put here before its record is written, so that an
        # exception anywhere up to the producer's start (a signal handler's, say)
        # fails it instead of leaving a record that nobody will ever finish.
        pending: list[tuple[Producer, PipeReader | None]] = []
        self.store.usage.make_room()
        if not mapping_prepared() and (dst is None or self.index.read_text(h) is not None):
            # This call will likely map a segment under the key's lock: attach to the
            # entry in flight, or create one with a channel. A process's first mapping
            # imports ctypes (5-8 ms of CPU), and every other process looking the key up
            # meanwhile would wait for it: 16 processes attaching at once waited about
            # 15 such imports for the last one's first byte. (A hint read without the
            # lock: a wrong guess costs the import or leaves it to the lookup.)
            prepare_mapping()
        try:
            try:
                with self.index.locked(h, remaining(deadline)):
                    try:
                        reader = self._locked(h, start, takeover)
                    except _LeftToResume:
                        return _bypass("its entry's producer died; readers that may resume it wait")
                    if reader is not None:
                        return Found(reader, False)
                    bypass = self.store.usage.admit()
                    if bypass is not None:
                        return _bypass(bypass)
                    self._create_locked(key, h, pending, with_reader=dst is None, start=start)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                # No room for a lock, record or data file: nothing ran create yet.
                _abort(pending, exc)
                pending.clear()
                self.store.usage.mark_full()
                return _bypass("disk full")
            producer, reader = pending[0]
            if dst is not None:
                return Found(None, True, producer.run_inline(create, dst))
            producer.start(create)
            assert reader is not None
            return Found(reader, True)
        except BaseException as exc:
            _abort(pending, exc)
            raise

    def finished(self, h: str, read_up_to: int = -1, tagged: bool = False) -> Finished | None:
        """The finished, unexpired entry of ``h`` (read whole up to ``read_up_to``
        bytes, with its tag if ``tagged``); no lock needed: the file at the entry's
        name is complete and immutable."""
        fin = self.files.open_entry(h, read_up_to, tagged)
        if fin is not None and fin.expires <= self._clock.wall():
            if fin.fd >= 0:
                os.close(fin.fd)
            return None
        return fin

    def open_finished(self, h: str, start: int = 0) -> FileReader | None:
        fin = self.finished(h)
        return None if fin is None else FileReader(fin.fd, fin.size, start)

    def _locked(
        self, h: str, start: int, takeover: Takeover | None = None
    ) -> FileReader | PipeReader | None:
        """A reader on the entry of ``h`` from byte ``start``, or None if there is none
        to read (lock held)."""
        hit = self.open_finished(h, start)
        if hit is not None:
            return hit
        self.store.expire_finished(h)  # expired or not intact (if any): never served
        text = self.index.read_text(h)
        if text is None:
            return None  # (a non-record in its place is replaced when one is written)
        rec = Record.from_text(h, text)
        if rec is None:
            self.index.remove(h)  # garbage: never served
            return None
        if rec.expires <= self._clock.wall():
            self.store.evict(rec)
            return None
        if rec.boot != ipc.BOOT or not ipc.is_alive(rec.pid, rec.start):
            return self._dead(rec, start, takeover)
        try:
            fd = self.files.open(rec.file)
        except FileNotFoundError:  # gone, or not a file of ours (then it goes too)
            self.store.evict(rec)
            return None
        if not ipc.lock_held(fd):  # a live process, but not producing: see filestore.py
            os.close(fd)
            return self._dead(rec, start, takeover)
        try:
            channel = self.store.open_channel(rec, fd, self.opts.reader_slots)
        except BaseException:
            os.close(fd)
            raise
        if channel is None:  # its names are taken by objects not ours: create afresh
            os.close(fd)
            return None
        # Every announced byte written: the producer publishes it whole even with no
        # reader left (writer.EntryWriter), so a new fetch attaches to it.
        if not channel.seg.takes_new_readers():
            # Failed, or every reader left so the producer is bound to fail: a
            # new fetch creates afresh instead of attaching.
            channel.close()
            os.close(fd)
            self.index.remove(h)
            return None
        slot = channel.seg.claim_slot(ipc.current_process())
        if takeover is not None:
            channel.seg.mark_resumable()  # cleanup leaves it to us if the producer dies
        return self._reader(fd, channel, slot, rec, start, takeover)

    def _reader(
        self,
        fd: int,
        channel: Channel,
        slot: ReaderSlot | None,
        rec: Record,
        start: int,
        takeover: Takeover | None,
    ) -> PipeReader:
        return PipeReader(
            fd,
            channel,
            slot,
            self.opts.liveness,
            self.store,
            rec,
            clock=self._clock,
            start=start,
            stall_timeout=self.opts.stall_timeout,
            takeover=takeover,
        )

    def _dead(self, rec: Record, start: int, takeover: Takeover | None) -> PipeReader | None:
        """The entry of ``rec``, whose producer is dead (lock held): resumed by this
        call, which reads it from byte ``start``, if it passed ``resume`` and the entry
        has readers waiting (see :mod:`.entry.resume`); left to live readers that may
        resume it if this call did not pass ``resume`` or could not take it over
        (:class:`_LeftToResume`: this call bypasses the cache); else discarded."""
        if takeover is not None:
            reader = takeover.in_lookup(
                rec, lambda fd, ch, slot, new: self._reader(fd, ch, slot, new, start, takeover)
            )
            if reader is not None:
                return reader
        # A call with resume that could not take it over (its lock held a moment by a
        # reader's probe, say) leaves it to its readers too.
        if self.store.awaits_resume(rec):
            raise _LeftToResume
        self.store.discard(rec)
        return None

    def _create_locked(
        self,
        key: str,
        h: str,
        pending: list[tuple[Producer, PipeReader | None]],
        *,
        with_reader: bool,
        start: int = 0,
    ) -> None:
        """Create the entry of ``key`` (hash ``h``) and append its producer (and,
        ``with_reader``, the creator's reader) to ``pending``; the caller runs the
        producer."""
        me = ipc.current_process()
        name, wfd, channel = self.store.new_data_file(me, with_reader, self.opts.reader_slots)
        now = self._clock.wall()
        set_entry_info(wfd, name, now, key, self.opts.key_preview)
        rec = Record(h, name, me.pid, me.start, now + self.opts.max_age)
        options: dict[str, Any] = {
            "window": self.opts.window,
            "liveness": self.opts.liveness,
            "running": self._running,
            "clock": self._clock,
        }
        if not with_reader:  # inline: a channel only once another reader attaches
            producer = Producer(self.store, rec, None, wfd, **options)
            pending.append((producer, None))  # from here on, failures go through abort()
            self.index.write(rec)
            return
        assert channel is not None
        try:
            try:
                mine = Channel.open(channel.base)
                try:
                    rfd = self.files.open(name)
                except BaseException:
                    mine.close()
                    raise
            except BaseException:
                channel.close()
                unlink_channel(channel.base)
                raise
        except BaseException:
            os.close(wfd)
            self.files.remove(name)
            raise
        # The creator is the first reader; its slot is one that nobody else claimed.
        slot = mine.seg.claim_slot(me)
        assert slot is not None and slot.index == CREATOR_SLOT
        producer = Producer(self.store, rec, channel, wfd, **options)
        # Fed by the producer's writes in this process (see .entry.feed).
        reader = producer.feed = FedReader(
            rfd,
            mine,
            slot,
            self.opts.liveness,
            self.store,
            rec,
            producer.outcome,
            self._clock,
            start,
            self.opts.stall_timeout,
        )
        pending.append((producer, reader))  # from here on, failures go through abort()
        self.index.write(rec)


class _LeftToResume(Exception):
    """A call without ``resume`` found the key's entry dead while live readers that may
    resume it wait: discarding it would cut them off, and its record is theirs, so this
    call runs create straight into its caller (a bypass)."""


def _bypass(reason: str) -> Found:
    """A miss that runs create straight into its caller, with no cache entry: the budget
    is all taken by entries in flight, the disk is full, or the key's entry awaits
    resume (outcome "bypass")."""
    log.debug("streamcache: a miss bypasses the cache (%s)", reason)
    return Found(None, False, bypass=reason)


def _abort(pending: list[tuple[Producer, PipeReader | None]], exc: BaseException) -> None:
    """Fail the entries created by a lookup that did not get to run them."""
    for producer, reader in pending:
        if reader is not None:
            reader.close()
        producer.abort(exc)
