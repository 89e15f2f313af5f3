"""The index and the filestore of one cache directory, and the changes that touch both.

The producer (publishing or failing its entry), a reader that finds its producer dead,
the lookup and the cleanup pass all change a record and a file together; the order of
those changes is kept here, once, below all of them.

Invariants:

- Every change of a key's record or finished file happens under the key's stripe lock
  (``index.locked``), so the lookup, create and reader registration of one key form
  one critical section host-wide.
- A finished entry is in place (its file renamed to the entry's name) before its
  record goes, so a fetch never finds neither for an entry that finished.
- A failed or evicted entry's record goes first; its data file after, and its channel
  (segment and bells) after that, so no fetch attaches to what is being torn down.
- A data file becomes its key's finished entry only while the key's record still names
  it, checked under the key's lock (:meth:`Store.publish`). Eviction and
  :meth:`Store.invalidate` take the record away under that same lock, so whichever of
  them and the publish takes the lock second sees the other's change: an entry evicted
  or invalidated in flight is never published, and a publish never lands over a newer
  entry of the key.
- A stalled producer (:meth:`Store.stalled`) is declared by a waiting reader under the
  key's lock, in one step with taking its record away: so the declaration and the
  producer's publish are ordered by that lock. A stall declared first takes the record,
  and the publish then finds none (the producer fails instead, seeing the mark); a
  publish first leaves the entry finished, and no stall is declared. A finished entry
  is therefore never marked stalled, and a stalled one is never published.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import posix_ipc

import ipc
from ipc.channel import Channel, open_segment, unlink_channel
from ipc.clock import SYSTEM, Clock
from ipc.digest import sha256
from ipc.liveness import BOOT, same_process
from ipc.naming import BASE_HEX
from ipc.segment import SegmentError

from ..log import log
from ..metrics import DEAD_PRODUCER, EXPIRED, INVALIDATED, NULL, Metrics
from .filestore import Filestore, sealed_size, written_so_far
from .index import Index, Record
from .usage import MAX_BACKOFF, Usage

LAYOUT = "v2"
# Fresh random names tried for a new entry whose IPC names are taken (planted).
_NAME_TRIES = 3

_hashes: dict[str, str] = {}


def key_hash(key: str) -> str:
    """The key's sha256 in hex (remembered for the last few thousand keys: a hit costs
    about as much as hashing a key)."""
    h = _hashes.get(key)
    if h is None:
        h = sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        if len(_hashes) >= 4096:
            _hashes.clear()
        if len(key) <= 1024:
            _hashes[key] = h
    return h


def _same_entry(a: str, b: str) -> bool:
    """Whether data file names ``a`` and ``b`` are one entry's (the random part: a
    resumed entry's file is renamed for its new producer, see entry/resume.py)."""
    return a[:BASE_HEX] == b[:BASE_HEX]


def channel_base(prefix: str, file: str) -> str:
    """The base name of the channel of the entry whose data file is ``file``: the file
    name's random part, so the producer finds a channel that an attaching reader made
    even after the entry's record is gone."""
    return prefix + file[:BASE_HEX]


class Store:
    """Records and files of the cache under ``root``; ``prefix`` names its IPC objects;
    ``usage`` keeps the running total of their bytes against ``max_bytes``."""

    def __init__(
        self,
        root: str,
        prefix: str,
        clock: Clock = SYSTEM,
        metrics: Metrics = NULL,
        *,
        max_bytes: int | None = None,
        max_age: float = MAX_BACKOFF,
    ) -> None:
        self.index = Index(root, clock)
        self.files = Filestore(root)
        self.prefix = prefix
        self.metrics = metrics  # evictions are counted here; the producer's writes too
        self.usage = Usage(root, self.index, self.files, clock, max_bytes, max_age, metrics)

    def channel_base(self, file: str) -> str:
        return channel_base(self.prefix, file)

    def current(self, rec: Record) -> Record | None:
        """The key's record if it is still that of ``rec``'s entry."""
        cur = self.index.read(rec.key)
        return cur if cur is not None and cur.file == rec.file else None

    def producer_alive(self, rec: Record, fd: int | None = None) -> bool:
        """Whether ``rec``'s producer is still producing: of this boot, its process
        (pid and start time) running, and its lock on the data file held. ``fd``: a
        descriptor of the data file opened by the caller (never the producer's own),
        else the file is opened here; a record whose file is gone is dead."""
        if rec.boot != BOOT or not ipc.is_alive(rec.pid, rec.start):
            return False
        if fd is not None:
            return ipc.lock_held(fd)
        try:
            fd = self.files.open(rec.file)
        except OSError:
            return False
        try:
            return ipc.lock_held(fd)
        finally:
            os.close(fd)

    def publish(self, rec: Record) -> Record | None:
        """Make the sealed data file of ``rec`` its key's finished entry; returns the
        record it replaced (None if the entry was evicted meanwhile)."""
        with self.index.locked(rec.key, None):
            cur = self.current(rec)
            if cur is not None:
                replaced = self.usage.entry_size(rec.key)
                self.files.publish(rec.file, rec.key)
                self.usage.forget(replaced)
                self.index.remove(rec.key)
                return cur
        # Evicted, invalidated (or replaced) while in flight: nobody will find this file
        # again.
        self.files.remove(rec.file)
        return None

    def drop(self, rec: Record) -> Record | None:
        """Drop the failed entry of ``rec``; returns its last record, if still there."""
        try:
            with self.index.locked(rec.key, None):
                cur = self.current(rec)
                if cur is not None:
                    self.index.remove(rec.key)
                return cur
        finally:
            self.files.remove(rec.file)

    def producer_died(self, rec: Record, fd: int, slot: int | None = None) -> int | Record | None:
        """A reader (reading ``fd``, in slot ``slot``) found the producer of ``rec`` dead:
        drop the entry, unless it was published just before the producer died (its data
        file is the finished entry, even if the record is still there): returns its
        size, if so. Returns a record instead when the entry is carried on: resumed
        meanwhile (its record names the same random part under another producer's
        name, see entry/resume.py: that record), or written by a live producer that
        holds its data file's lock (``rec``, if its record is gone: the producer ends
        the channel itself; unlinking it under them made its readers fail with
        SharedMemoryRemoved). The reader then waits again. One that other live
        readers may resume is left to them (they resume it, or the last of them drops
        it): a reader without ``resume`` that noticed first used to drop it under
        them."""
        with self.index.locked(rec.key, None):
            cur = self.index.read(rec.key)
            if cur is not None and cur.file != rec.file and _same_entry(cur.file, rec.file):
                return cur
            writing, stalled = self._segment_state(rec, fd)
            if writing:
                return cur if cur is not None and cur.file == rec.file else rec
            if cur is not None and cur.file == rec.file and self.awaits_resume(rec, slot):
                return None
            unlink_channel(self.channel_base(rec.file))
            is_current = cur is not None and cur.file == rec.file
            st = os.fstat(fd)
            if self.files.entry_identity(rec.key) == (st.st_dev, st.st_ino):
                if is_current:
                    self.index.remove(rec.key)  # killed between publish and this
                fin = self.files.open_entry(rec.key)
                if fin is not None:
                    os.close(fin.fd)
                    return fin.size
            elif (size := sealed_size(fd)) is not None and not stalled:
                # Killed after its seal: whole, though unpublished, or published and
                # then removed (invalidated, evicted). Its readers read it to the end.
                if is_current:
                    self.index.remove(rec.key)
                self.files.remove(rec.file)
                return size
            elif is_current:
                self.index.remove(rec.key)
                self.metrics.count_eviction(DEAD_PRODUCER)
                # Once per entry: only the reader that removes its record logs it.
                log.warning(
                    "streamcache: entry %s failed: its producer (pid %d) died",
                    rec.key[:16],
                    rec.pid,
                )
        self.files.remove(rec.file)
        return None

    def _segment_state(self, rec: Record, fd: int) -> tuple[bool, bool]:
        """Whether the entry of ``rec`` (data file open as ``fd``) is still being
        written (its segment says so and names a live process, which holds the data
        file's lock: a successor elected after the reader looked, say), and whether a
        reader declared it stalled."""
        try:
            seg = open_segment(self.channel_base(rec.file))
        except SegmentError:
            return False, False
        try:
            writing = seg.state == ipc.STATE_WRITING and seg.producer_alive()
            return writing and ipc.lock_held(fd), seg.stalled
        finally:
            seg.close()

    def awaits_resume(self, rec: Record, exclude: int | None = None) -> bool:
        """Whether the entry of ``rec``, its producer dead, is left to its readers: a
        reader that may resume it attached (its segment says so) and one is alive, other
        than the one in slot ``exclude`` (they resume it, or drop it, within their
        liveness)."""
        try:
            seg = open_segment(self.channel_base(rec.file))
        except SegmentError:
            return False
        try:
            return (
                seg.resumable
                and seg.state == ipc.STATE_WRITING
                and not seg.stalled
                and seg.has_live_reader(exclude)
            )
        finally:
            seg.close()

    def stalled(self, rec: Record, fd: int, mark: Callable[[], bool], pid: int) -> bool:
        """A waiting reader (reading ``fd``) found the live producer of ``rec`` silent for
        its stall_timeout. Under the key's lock, unless the entry was published meanwhile
        (then False: it is finished), ``mark`` the segment stalled and drop the entry's
        record and data file, as :meth:`invalidate` drops an entry in flight, so the next
        call creates afresh. Counted and logged once, by the reader whose ``mark`` set it.
        """
        with self.index.locked(rec.key, None):
            st = os.fstat(fd)
            if self.files.entry_identity(rec.key) == (st.st_dev, st.st_ino):
                return False
            first = mark()
            if self.current(rec) is not None:
                self.index.remove(rec.key)
        self.files.remove(rec.file)
        if first:
            self.metrics.count_stalled()
            log.warning(
                "streamcache: entry %s failed: its producer (pid %d) wrote nothing for "
                "stall_timeout while readers waited",
                rec.key[:16],
                pid,
            )
        return True

    def forget(self, rec: Record) -> None:
        """Drop the record of ``rec``'s entry, if it is still that entry's, so that no
        fetch attaches to it any more (its producer still ends it)."""
        with self.index.locked(rec.key, None):
            if self.current(rec) is not None:
                self.index.remove(rec.key)

    def evict(self, rec: Record) -> None:
        """Drop an expired or broken entry in flight (lock held). Its producer and
        readers keep their descriptors; the producer will find it gone when it ends."""
        self.index.remove(rec.key)
        self.files.remove(rec.file)
        self.metrics.count_eviction(EXPIRED)

    def discard(self, rec: Record) -> int:
        """Drop an entry whose producer is dead (lock held); returns how many of its
        IPC objects were still there (for the cleanup report)."""
        self.index.remove(rec.key)
        self.files.remove(rec.file)
        removed = unlink_channel(self.channel_base(rec.file))
        self.metrics.count_eviction(DEAD_PRODUCER)
        return removed

    def invalidate(self, key: str) -> bool:
        """Drop whatever ``key`` has, so that the next fetch of it, in any process,
        creates afresh; whether there was anything (takes the key's lock).

        The finished entry's file is unlinked (open readers keep their descriptors).
        An entry in flight loses its record and its data file, as an expired one
        does: its producer and readers go on with their descriptors and its channel,
        whose names stay until the producer ends it (a reader that finds them gone
        under a live producer takes /dev/shm for wiped and fails); the producer then
        finds its record gone and drops its file instead of publishing it. So its
        readers get every byte and a clean end, and nobody else ever sees the entry.
        """
        with self.index.locked(key, None):
            dropped = self.usage.remove_entry(key)
            text = self.index.read_text(key)
            if text is not None:
                rec = Record.from_text(key, text)
                self.index.remove(key)
                if rec is not None:
                    self.files.remove(rec.file)
                dropped = True
        if dropped:
            self.metrics.count_eviction(INVALIDATED)
        return dropped

    def expire_finished(self, key: str) -> bool:
        """Remove the finished entry of ``key`` (lock held; the caller found it expired
        or not intact); whether there was one."""
        removed = self.usage.remove_entry(key)
        if removed:
            self.metrics.count_eviction(EXPIRED)
        return removed

    # -- an entry's data file and channel ---------------------------------------------

    def new_data_file(
        self, me: ipc.ProcessId, with_channel: bool, slots: int
    ) -> tuple[str, int, Channel | None]:
        """A new data file (name, write descriptor) and, ``with_channel``, its channel
        with ``slots`` reader slots, owned by producer ``me``.
        Names taken in /dev/shm by objects that are not ours (planted: the random part
        of a name is never predictable) are never opened: the next random name is."""
        for attempt in range(_NAME_TRIES):
            name, wfd = self.files.create()
            if not with_channel:
                return name, wfd, None
            base = self.channel_base(name)
            try:
                return name, wfd, Channel.create(self.prefix, me, slots, base)
            except BaseException as exc:
                os.close(wfd)
                self.files.remove(name)
                if not isinstance(exc, posix_ipc.ExistentialError) or attempt + 1 == _NAME_TRIES:
                    raise
        raise AssertionError("unreachable")

    def open_channel(self, rec: Record, fd: int, slots: int) -> Channel | None:
        """The channel of ``rec``'s entry (data file open as ``fd``; lock held), made now
        with ``slots`` reader slots if nobody else has read it yet (an entry created in a
        producer thread has it before its record exists). None if its names are held by
        objects that are not ours."""
        try:
            channel = Channel.open(self.channel_base(rec.file))
        except SegmentError as exc:
            cause = exc.__cause__
            if isinstance(cause, posix_ipc.Error) and not isinstance(
                cause, (posix_ipc.ExistentialError, posix_ipc.PermissionsError)
            ):
                raise  # out of descriptors, say: they may well exist; never replace them
            # An inline creator's entry, a set an attaching process left half made, or
            # an object planted under its name (refused by Segment.open).
            return self._make_channel(rec, written_so_far(fd), slots)
        if same_process(channel.seg.producer, ipc.ProcessId(rec.pid, rec.start)):
            return channel
        # A well-formed segment that names another producer: planted, never trusted.
        channel.close()
        return self._make_channel(rec, written_so_far(fd), slots)

    def _make_channel(self, rec: Record, offset: int, slots: int) -> Channel | None:
        """The first reader to attach to an inline creator's entry makes its channel,
        under the name derived from the data file's; the producer looks for it before
        its writes (at most every millisecond) and when it ends.

        The segment starts at ``offset``, bytes surely written already, so they are
        readable at once, and with the creator in slot 0 (:data:`pipe.CREATOR_SLOT`); both
        before the producer can open it (it needs all three objects, the segment's
        magic written last). From then on the producer is the one writer of the
        progress word."""
        producer = ipc.ProcessId(rec.pid, rec.start)
        base = self.channel_base(rec.file)
        args = (self.prefix, producer, slots, base)
        try:
            return Channel.create(*args, offset=offset, producer_reads=True)
        except posix_ipc.ExistentialError:
            # Left by an attaching process that died halfway, or planted: never
            # trusted, replaced if we can unlink it.
            unlink_channel(base)
        try:
            return Channel.create(*args, offset=offset, producer_reads=True)
        except posix_ipc.ExistentialError:
            return None  # another user's objects (or a directory) under its names
