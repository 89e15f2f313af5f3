"""StreamCache: the index, filestore and pipe put together across processes."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import posix_ipc

import ipc
import ipc.naming
from ipc.naming import list_objects
from ipc.segment import (
    DEFAULT_SLOTS,
    MAX_SLOTS,
    SLOT_ACTIVE,
    SLOT_PID,
    SLOT_START,
    SLOT_WORDS,
    SegmentError,
)

from . import config
from .base import CacheBase, check_create, check_dst, check_key
from .deadline import deadline_for, remaining
from .errors import CreateError, describe
from .eviction import Cleaner
from .filestore import Filestore, Finished, entry_bytes, make_private_dirs
from .index import Index, Record
from .pipe import (
    CREATOR_SLOT,
    EntryIPC,
    FileReader,
    PipeReader,
    Tee,
    Writer,
    ring_all,
    unlink_entry_ipc,
)
from .sink import write_all
from .stream import FetchResult, Stream

LAYOUT = "v2"
# Seconds a segment without its header yet (its creator may be between shm_open and
# the header's magic), doorbells without a segment (a set being made) or a temp record
# are left alone by cleanup.
_ORPHAN_GRACE = 5.0

Create = Callable[[Any], object]


# fetch reads a finished entry up to this size whole, in one pread with its trailer.
_READ_WHOLE = 64 * 1024

_hashes: dict[str, str] = {}


def key_hash(key: str) -> str:
    """The key's sha256 in hex (remembered for the last few thousand keys: a hit costs
    about as much as hashing a key)."""
    h = _hashes.get(key)
    if h is None:
        h = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        if len(_hashes) >= 4096:
            _hashes.clear()
        if len(key) <= 1024:
            _hashes[key] = h
    return h


def prepare_dir(path: str) -> str:
    """Create the cache dir 0700 if missing; refuse one that others could tamper with."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"cache dir is not a directory: {path}")
    if st.st_uid != os.geteuid():
        raise ValueError(f"cache dir {path} is owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o022:
        raise ValueError(
            f"cache dir {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            "make it 0700"
        )
    return path


@dataclass
class GCReport:
    """What one cleanup pass did."""

    ran: bool = True
    expired: int = 0
    discarded: int = 0
    files_removed: int = 0
    ipc_removed: int = 0


class Producer:
    """Runs ``create`` for one entry and publishes the outcome.

    Two ways to run: :meth:`run` in a producer thread (``stream()``, and ``fetch``
    with a timeout, so the caller can leave while ``create`` goes on), or
    :meth:`run_inline` in the creating ``fetch``'s own thread, handing each write
    straight to ``dst`` (no thread, no re-reading the file). An inline entry gets
    its IPC objects only when another reader attaches (see :class:`Writer`).
    """

    def __init__(self, cache: StreamCache, rec: Record, entry: EntryIPC | None, fd: int) -> None:
        self._cache = cache
        self.rec = rec
        self._entry = entry
        self._fd = fd
        self.error: BaseException | None = None
        self._started = False  # set by whoever runs (or aborts) it, in its own thread
        self.thread: threading.Thread | None = None
        self._follower: Follower | None = None

    def start(self, create: Create) -> None:
        self.thread = threading.Thread(
            target=self.run, args=(create,), name=f"streamcache-producer-{self.rec.key[:8]}"
        )
        self.thread.start()

    def abort(self, error: BaseException) -> None:
        """Fail the entry if it never started running (a no-op once it has)."""
        if self.thread is None and not self._started:
            self._started = True
            self._finalize(Writer(self._fd, self._entry, 0, 1.0), error)

    def run(self, create: Create) -> None:
        cache = self._cache
        writer = Writer(self._fd, self._entry, cache.window, cache.liveness)
        error: BaseException | None = None
        try:
            create(writer)
            writer.finish()
        except BaseException as exc:  # a failing create fails the entry, never the process
            error = exc
        self._finalize(writer, error)

    def run_inline(self, create: Create, dst: Any) -> int:
        """Run ``create`` here, copying each write to ``dst``; return the bytes copied.

        If ``dst`` fails, the creator stops being a reader: ``create`` goes on for
        the entry's other readers (or gets BrokenPipeError if none is left), and the
        ``dst`` error is raised once it returns.
        """
        cache = self._cache
        error: BaseException | None = None
        tee: Tee | None = None
        writer: Writer | None = None
        try:
            self._started = True  # from here on every exit goes through _finalize
            tee = Tee(dst, functools.partial(self._hand_over, dst))
            writer = Writer(self._fd, None, cache.window, cache.liveness, tee, self._open_ipc)
            create(writer)
            writer.finish()
        except BaseException as exc:
            self._started = True
            error = exc
        if writer is None:
            writer = Writer(self._fd, None, 0, 1.0)
        self._finalize(writer, error)
        follower = self._follower
        if follower is not None:
            follower.join()  # it reads to the end the segment now shows
        # The creator's own dst failing comes first: the entry may have failed only
        # because of it (no other reader left).
        if tee is not None and tee.error is not None:
            raise tee.error
        if follower is not None and follower.error is not None:
            if not isinstance(follower.error, CreateError):
                raise follower.error
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise error
        if self.error is not None:  # create's, or one publishing the entry
            raise CreateError(describe(self.error)) from self.error
        assert tee is not None
        return tee.delivered + (follower.written if follower is not None else 0)

    def _hand_over(self, dst: Any, position: int) -> None:
        """Another reader attached: the creator's copy to ``dst`` continues from
        ``position`` in a thread that reads the file (from the creator's slot 0)."""
        self._follower = Follower(dst)
        try:
            entry = EntryIPC.open(self._cache._ipc_base(self.rec.file))
            try:
                fd = os.dup(self._fd)  # the file may be unlinked (evicted) by now
            except BaseException:
                entry.close()
                raise
        except Exception as exc:  # the creator loses its copy; the entry goes on
            self._follower.error = exc
            return
        reader = PipeReader(
            fd, entry, CREATOR_SLOT, self._cache.liveness, lambda: None, lambda: self.error
        )
        reader.position = position
        entry.seg.set_position(CREATOR_SLOT, position)
        self._follower.start(reader, f"streamcache-creator-{self.rec.key[:8]}")

    def _open_ipc(self) -> EntryIPC | None:
        """The entry's IPC objects, if a reader that attached made them."""
        try:
            return EntryIPC.open(self._cache._ipc_base(self.rec.file))
        except SegmentError:
            return None

    def _finalize(self, writer: Writer, error: BaseException | None) -> None:
        """Publish the outcome: the finished entry (or no entry) first, then the segment;
        unlink the IPC names. An inline creator stays a reader until the outcome is out,
        so no fetch takes the entry for abandoned meanwhile."""
        cache = self._cache
        writer.abandon()  # a thread left behind by create can write no more
        try:
            if error is None:
                cache._files.seal(self._fd, writer.offset, self.rec.expires)
        except BaseException as exc:
            error = error or exc
        try:
            os.close(self._fd)
        except OSError as exc:
            error = error or exc
        try:
            if error is None:
                try:
                    # Invariant: the entry is a finished file before the segment says
                    # "done", so a reader that saw the end finds a hit on its next fetch.
                    cache._publish(self.rec)
                except BaseException as exc:
                    error = exc
            if error is not None:
                self.error = error  # before fail(): a local reader attaches it as __cause__
                cache._drop_record(self.rec)
        finally:
            # Once the record is gone no reader attaches any more; one may have made
            # the IPC objects since this producer last looked (their name derives from
            # the data file's, so they are found even if the record was evicted).
            entry = writer.entry or self._open_ipc()
            if entry is not None:
                self._end_ipc(entry, writer.offset, error)
            else:  # none, or a partial set left by an attaching reader that died
                unlink_entry_ipc(cache._ipc_base(self.rec.file))
            cache._producer_done(self)

    def _end_ipc(self, entry: EntryIPC, offset: int, error: BaseException | None) -> None:
        """Publish the outcome in the segment, wake every reader, unlink the names."""
        seg = entry.seg
        try:
            if error is None:
                seg.finish(offset)
            else:
                # Whatever happened, readers must learn the entry failed: a reader
                # waits on a live producer process for as long as it says "writing".
                try:
                    text = describe(error)
                except BaseException:
                    text = "the producer failed"
                seg.fail(text)
            ring_all(entry)
        finally:
            unlink_entry_ipc(entry.base)
            entry.close()


class Follower:
    """The inline creator's copy to its ``dst`` once another reader attached: a thread
    of the creating process reading the file, like any reader."""

    def __init__(self, dst: Any) -> None:
        self._dst = dst
        self.written = 0
        self.error: Exception | None = None
        self._thread: threading.Thread | None = None

    def start(self, reader: PipeReader, name: str) -> None:
        self._thread = threading.Thread(target=self._run, args=(reader,), name=name)
        self._thread.start()

    def _run(self, reader: PipeReader) -> None:
        try:
            with Stream(reader, True, None) as s:
                self.written = s.copy_to(self._dst)
        except Exception as exc:  # dst failed (or the entry did: the producer says why)
            self.error = exc

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


class StreamCache(CacheBase):
    """A streaming cache on ``dir`` shared by every process and thread that opens it.

    ``liveness`` bounds how long a dead producer or reader goes unnoticed. ``clock``
    (epoch seconds) is injectable for tests. ``cleanup_interval`` is the period of
    the background cleanup loop in seconds (default ``min(max_age, 60)``, at least
    1 s); 0 runs no loop (call :meth:`gc` yourself). ``reader_slots`` is how many
    readers of one entry in flight publish their position (default 16384); readers
    beyond that still read everything but neither hold back nor keep alive the
    producer.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],
        *,
        max_age: config.Duration = config.DEFAULT_MAX_AGE,
        window: int = config.DEFAULT_WINDOW,
        max_bytes: int | None = None,
        liveness: config.Duration = config.DEFAULT_LIVENESS,
        clock: Callable[[], float] = time.time,
        cleanup_interval: float | None = None,
        reader_slots: int = DEFAULT_SLOTS,
    ) -> None:
        self.dir = prepare_dir(config.directory(dir))
        self.max_age = config.seconds(max_age, "max_age")
        self.window = config.nonnegative_int(window, "window")
        self.max_bytes = config.optional_budget(max_bytes, "max_bytes")
        self.liveness = config.seconds(liveness, "liveness", allow_zero=False)
        self.reader_slots = config.nonnegative_int(reader_slots, "reader_slots")
        if not 1 <= self.reader_slots <= MAX_SLOTS:
            raise ValueError(f"reader_slots must be in 1..{MAX_SLOTS}")
        self.root = os.path.join(self.dir, LAYOUT)
        make_private_dirs(self.root)
        self._index = Index(self.root)
        self._files = Filestore(self.root)
        self._prefix = ipc.prefix_for(self.dir)
        self._clock = clock
        if cleanup_interval is None:
            cleanup_interval = max(min(self.max_age, 60.0), 1.0)
        self._cleaner = Cleaner(self.gc, cleanup_interval)
        self._mutex = threading.Lock()
        self._producers: set[Producer] = set()
        _live_caches.add(self)

    def __repr__(self) -> str:
        return f"StreamCache({self.dir!r}, max_age={self.max_age})"

    # -- public API -----------------------------------------------------------------

    def stream(self, key: str, create: Create, timeout: float | None = None) -> Stream:
        h, deadline = self._begin(key, create, timeout)
        source, created = self._open(h, create, deadline)
        return self._stream(h, source, created, create, deadline)

    def fetch(
        self, key: str, dst: Any, create: Create, timeout: float | None = None
    ) -> FetchResult:
        """Find or create the entry of ``key`` and copy it to ``dst``.

        Without a timeout, the call that creates runs ``create`` in its own thread and
        hands each write straight to ``dst``; with one, ``create`` runs in a producer
        thread so that the call can return when the timeout passes.
        """
        check_dst(dst)
        h, deadline = self._begin(key, create, timeout)
        fin = self._finished(h, _READ_WHOLE)
        source: FileReader | PipeReader | None = None
        created = False
        if fin is not None and fin.data is not None:  # small: one write, no reader
            write_all(dst, fin.data, deadline)
            return FetchResult(fin.size, False)
        if fin is not None:
            source = FileReader(fin.fd, fin.size)
        elif deadline is None:
            source, written = self._find_or_create_inline(h, create, dst)
            if source is None:
                return FetchResult(written, True)
        else:
            source, created = self._find_or_claim_reader(h, create, deadline)
        with self._stream(h, source, created, create, deadline) as s:
            return FetchResult(s.copy_to(dst), created)

    def _begin(self, key: str, create: Create, timeout: float | None) -> tuple[str, float | None]:
        """Check a call's arguments; its key's hash and deadline."""
        check_key(key)
        check_create(create)
        deadline = deadline_for(timeout)
        self._cleaner.ensure_started()
        return key_hash(key), deadline

    def _stream(
        self,
        h: str,
        source: FileReader | PipeReader,
        created: bool,
        create: Create,
        deadline: float | None,
    ) -> Stream:
        """A Stream on ``source``; one that attached to an entry in flight may reopen."""
        reopen = None
        if isinstance(source, PipeReader) and not created:
            reopen = functools.partial(self._open, h, create, deadline)
        return Stream(source, created, deadline, reopen)

    def _open(
        self, h: str, create: Create, deadline: float | None
    ) -> tuple[FileReader | PipeReader, bool]:
        """A reader on the entry of ``h``, and whether this call created it (then its
        producer runs in a thread)."""
        hit = self._open_finished(h)
        if hit is not None:
            return hit, False
        return self._find_or_claim_reader(h, create, deadline)

    def _find_or_claim_reader(
        self, h: str, create: Create, deadline: float | None
    ) -> tuple[FileReader | PipeReader, bool]:
        """A reader on the entry of ``h``; if there is none, create it with its producer
        in a thread and a reader for the caller. Returns (reader, created)."""
        reader, started = self._find_or_claim(h, create, deadline, None)
        assert reader is not None
        return reader, started == -1

    def _find_or_create_inline(
        self, h: str, create: Create, dst: Any
    ) -> tuple[FileReader | PipeReader | None, int]:
        """A reader on the entry of ``h`` (and 0); if there is none, create it here,
        copying it to ``dst``: (None, bytes copied)."""
        return self._find_or_claim(h, create, None, dst)

    def _find_or_claim(
        self, h: str, create: Create, deadline: float | None, dst: Any
    ) -> tuple[FileReader | PipeReader | None, int]:
        """Under the key's lock: a reader on the entry, or a new entry of ours, whose
        producer runs in a thread (``dst`` None: the second value is -1) or here,
        copying to ``dst`` (returns None and the bytes copied)."""
        # A created entry is put here before its record is written, so that an
        # exception anywhere up to the producer's start (a signal handler's, say)
        # fails it instead of leaving a record that nobody will ever finish.
        pending: list[tuple[Producer, PipeReader | None]] = []
        try:
            with self._index.locked(h, remaining(deadline)):
                reader = self._lookup_locked(h)
                if reader is not None:
                    return reader, 0
                self._create_locked(h, pending, with_reader=dst is None)
            producer, reader = pending[0]
            if dst is not None:
                return None, producer.run_inline(create, dst)
            producer.start(create)
            return reader, -1
        except BaseException as exc:
            for producer, reader in pending:
                if reader is not None:
                    reader.close()
                producer.abort(exc)
            raise

    def stop(self) -> None:
        """End this process's background cleanup. fetch still works afterwards."""
        self._cleaner.stop()

    def gc(self) -> GCReport:
        """One cleanup pass (skipped if another process is running one)."""
        with self._index.cleanup_lock() as mine:
            if not mine:
                return GCReport(ran=False)
            return self._gc_locked()

    def wait_producers(self, timeout: float | None = None) -> bool:
        """Wait for this process's in-flight producers; True if none is left."""
        deadline = deadline_for(timeout)
        while True:
            with self._mutex:
                threads = [
                    p.thread
                    for p in self._producers
                    if p.thread is not None and p.thread.ident is not None
                ]
            if not threads:
                return True
            for t in threads:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                t.join(left)

    # -- lookup -----------------------------------------------------------------------

    def _finished(self, h: str, read_up_to: int = -1) -> Finished | None:
        """The finished, unexpired entry of ``h`` (read whole up to ``read_up_to``
        bytes); no lock needed: the file at the entry's name is complete and immutable."""
        fin = self._files.open_entry(h, read_up_to)
        if fin is not None and fin.expires <= self._clock():
            if fin.fd >= 0:
                os.close(fin.fd)
            return None
        return fin

    def _open_finished(self, h: str) -> FileReader | None:
        fin = self._finished(h)
        return None if fin is None else FileReader(fin.fd, fin.size)

    def _lookup_locked(self, h: str) -> FileReader | PipeReader | None:
        hit = self._open_finished(h)
        if hit is not None:
            return hit
        self._files.remove_entry(h)  # expired or not intact (if any): never served
        text = self._index.read_text(h)
        if text is None:
            return None  # (a non-record in its place is replaced when one is written)
        rec = Record.from_text(h, text)
        if rec is None:
            self._index.remove(h)  # garbage: never served
            return None
        if rec.expires <= self._clock():
            self._evict(rec)
            return None
        if not ipc.is_alive(rec.pid, rec.start):
            self._discard(rec)
            return None
        try:
            fd = self._files.open(rec.file)
        except FileNotFoundError:
            self._index.remove(h)
            return None
        try:
            entry = self._entry_ipc_locked(rec, fd)
        except BaseException:
            os.close(fd)
            raise
        seg = entry.seg
        if seg.state != ipc.STATE_WRITING or not self._has_live_reader(seg):
            # Failed, or every reader left so the producer is bound to fail: a
            # new fetch creates afresh instead of attaching.
            entry.close()
            os.close(fd)
            self._index.remove(h)
            return None
        slot = seg.claim_slot(ipc.current_process(), _is_dead)
        return PipeReader(fd, entry, slot, self.liveness, lambda: self._producer_died(rec, fd))

    def _entry_ipc_locked(self, rec: Record, fd: int) -> EntryIPC:
        """The IPC objects of ``rec``'s entry (data file open as ``fd``), made now if
        nobody else has read it yet (an entry created in a producer thread has them
        before its record exists)."""
        try:
            return EntryIPC.open(self._ipc_base(rec.file))
        except SegmentError as exc:
            cause = exc.__cause__
            if isinstance(cause, posix_ipc.Error) and not isinstance(
                cause, posix_ipc.ExistentialError
            ):
                raise  # out of descriptors, say: they may well exist; never replace them
            # An inline creator's entry, or a set an attaching process left half made.
            return self._make_ipc_locked(rec, entry_bytes(fd))

    def _make_ipc_locked(self, rec: Record, offset: int) -> EntryIPC:
        """The first reader to attach to an inline creator's entry makes its IPC objects,
        under the name derived from the data file's; the producer looks for them before
        its writes (at most every millisecond) and when it ends.

        The segment starts at ``offset``, the bytes already written (the kernel grows
        a file only over copied bytes), so they are readable at once, and with the
        creator in slot 0 (:data:`CREATOR_SLOT`); both before the producer can open it
        (it needs all three objects, the segment's magic written last). From then on
        the producer is the one writer of the progress word."""
        producer = ipc.ProcessId(rec.pid, rec.start)
        base = self._ipc_base(rec.file)
        args = (self._prefix, producer, self.reader_slots, base)
        try:
            return EntryIPC.create(*args, offset=offset, producer_reads=True)
        except posix_ipc.ExistentialError:
            # Left by an attaching process that died halfway: never trusted, replaced.
            unlink_entry_ipc(base)
            return EntryIPC.create(*args, offset=offset, producer_reads=True)

    def _create_locked(
        self, h: str, pending: list[tuple[Producer, PipeReader | None]], *, with_reader: bool
    ) -> None:
        """Create the entry of ``h`` and append its producer (and, ``with_reader``, the
        creator's reader) to ``pending``; the caller runs the producer."""
        me = ipc.current_process()
        name, wfd = self._files.create()
        rec = Record(h, name, me.pid, me.start, self._clock() + self.max_age)
        if not with_reader:  # inline: IPC objects only once another reader attaches
            producer = Producer(self, rec, None, wfd)
            with self._mutex:
                self._producers.add(producer)
            pending.append((producer, None))  # from here on, failures go through abort()
            self._index.write(rec)
            return
        try:
            entry = EntryIPC.create(self._prefix, me, self.reader_slots, self._ipc_base(name))
            try:
                mine = EntryIPC.open(entry.base)
                try:
                    rfd = self._files.open(name)
                except BaseException:
                    mine.close()
                    raise
            except BaseException:
                entry.close()
                unlink_entry_ipc(entry.base)
                raise
        except BaseException:
            os.close(wfd)
            self._files.remove(name)
            raise
        # The creator is the first reader; its slot is one that nobody else claimed.
        slot = entry.seg.claim_slot(me, _is_dead)
        assert slot == CREATOR_SLOT
        producer = Producer(self, rec, entry, wfd)
        reader = PipeReader(
            rfd,
            mine,
            slot,
            self.liveness,
            lambda: self._producer_died(rec, rfd),
            lambda: producer.error,
        )
        with self._mutex:
            self._producers.add(producer)
        pending.append((producer, reader))  # from here on, failures go through abort()
        self._index.write(rec)

    def _ipc_base(self, file: str) -> str:
        return ipc_base(self._prefix, file)

    @staticmethod
    def _has_live_reader(seg: ipc.Segment) -> bool:
        words = seg.slots()
        for i in range(0, len(words), SLOT_WORDS):
            if words[i + SLOT_ACTIVE] and ipc.is_alive(
                words[i + SLOT_PID], words[i + SLOT_START] / 1_000_000
            ):
                return True
        return False

    # -- changes to records -------------------------------------------------------------

    def _current(self, rec: Record) -> Record | None:
        """The key's record if it is still that of ``rec``'s entry."""
        cur = self._index.read(rec.key)
        return cur if cur is not None and cur.file == rec.file else None

    def _is_current(self, rec: Record) -> bool:
        return self._current(rec) is not None

    def _publish(self, rec: Record) -> Record | None:
        """Make the sealed data file of ``rec`` its key's finished entry; returns the
        record it replaced (None if the entry was evicted meanwhile)."""
        with self._index.locked(rec.key, None):
            cur = self._current(rec)
            if cur is not None:
                self._files.publish(rec.file, rec.key)
                self._index.remove(rec.key)
                return cur
        # Evicted (or replaced) while in flight: nobody will find this file again.
        self._files.remove(rec.file)
        return None

    def _drop_record(self, rec: Record) -> Record | None:
        """Drop the failed entry of ``rec``; returns its last record, if still there."""
        try:
            with self._index.locked(rec.key, None):
                cur = self._current(rec)
                if cur is not None:
                    self._index.remove(rec.key)
                return cur
        finally:
            self._files.remove(rec.file)

    def _producer_died(self, rec: Record, fd: int) -> int | None:
        """A reader (reading ``fd``) found the producer of ``rec`` dead: drop the entry,
        unless it was published just before the producer died (its data file is the
        finished entry, even if the record is still there). Returns its size, if so."""
        unlink_entry_ipc(self._ipc_base(rec.file))
        with self._index.locked(rec.key, None):
            current = self._is_current(rec)
            st = os.fstat(fd)
            if self._files.entry_identity(rec.key) == (st.st_dev, st.st_ino):
                if current:
                    self._index.remove(rec.key)  # killed between publish and this
                fin = self._files.open_entry(rec.key)
                if fin is not None:
                    os.close(fin.fd)
                    return fin.size
            elif current:
                self._index.remove(rec.key)
        self._files.remove(rec.file)
        return None

    def _evict(self, rec: Record) -> None:
        """Drop an expired or broken entry in flight (lock held). Its producer and
        readers keep their descriptors; the producer will find it gone when it ends."""
        self._index.remove(rec.key)
        self._files.remove(rec.file)

    def _discard(self, rec: Record) -> None:
        """Drop an entry whose producer is dead (lock held)."""
        self._evict(rec)
        unlink_entry_ipc(self._ipc_base(rec.file))

    def _producer_done(self, producer: Producer) -> None:
        with self._mutex:
            self._producers.discard(producer)

    # -- cleanup ---------------------------------------------------------------------

    def _gc_locked(self) -> GCReport:
        report = GCReport()
        now = self._clock()
        live_files: set[str] = set()
        live_ipc: set[str] = set()
        for h in list(self._index.keys()):
            rec = self._index.read(h)
            if rec is not None and rec.expires > now and ipc.is_alive(rec.pid, rec.start):
                live_files.add(rec.file)
                live_ipc.add(self._ipc_base(rec.file))
                continue
            with self._index.locked(h, None):
                rec = self._index.read(h)
                if rec is None:
                    self._index.remove(h)
                    report.discarded += 1
                elif rec.expires <= now:
                    self._evict(rec)
                    report.expired += 1
                elif not ipc.is_alive(rec.pid, rec.start):
                    self._discard(rec)
                    report.discarded += 1
                else:
                    live_files.add(rec.file)
                    live_ipc.add(self._ipc_base(rec.file))
        for h, st in list(self._files.entries()):
            if st.st_mtime_ns / 1e9 > now:
                continue
            if not _is_key_hash(h):
                with contextlib.suppress(OSError):
                    os.unlink(self._files.entry_path(h))  # foreign: never served
                continue
            with self._index.locked(h, None):
                # Re-checked under the lock: a new entry may have replaced it.
                fin = self._files.open_entry(h)
                if fin is not None:
                    os.close(fin.fd)
                if fin is None or fin.expires <= now:
                    if self._files.remove_entry(h):
                        report.expired += 1
        wall = time.time()
        for path in self._index.stray_temp_files():
            with contextlib.suppress(OSError):
                if os.lstat(path).st_mtime < wall - _ORPHAN_GRACE:
                    os.unlink(path)
        report.files_removed = self._files.sweep(now - self.max_age, live_files)
        report.ipc_removed = self._sweep_ipc(live_ipc, wall)
        return report

    def _sweep_ipc(self, live: set[str], wall: float) -> int:
        """Unlink IPC objects that no live entry owns (dead producers, finished entries)."""
        by_base: dict[str, list[ipc.ObjectName]] = {}
        for obj in list_objects(self._prefix):
            by_base.setdefault(obj.base, []).append(obj)
        removed = 0
        for base, objs in by_base.items():
            if base in live:
                continue
            seg_obj = next((o for o in objs if not o.is_semaphore and o.kind == "s"), None)
            if seg_obj is None and any(o.mtime > wall - _ORPHAN_GRACE for o in objs):
                continue  # doorbells of a set being made right now (or unmade)
            if seg_obj is not None:
                try:
                    seg = ipc.Segment.open(seg_obj.name)
                except SegmentError:
                    if seg_obj.mtime > wall - _ORPHAN_GRACE:
                        continue  # possibly being created right now
                else:
                    producer, state = seg.producer, seg.state
                    seg.close()
                    if state == ipc.STATE_WRITING and ipc.is_alive(producer.pid, producer.start):
                        continue  # in flight (perhaps expired): its producer unlinks it
            unlink_entry_ipc(base)
            removed += len(objs)
        return removed

    # -- fork ------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork: the child has no producers and no cleaner,
        # and must not inherit a lock some other thread held at the fork.
        self._mutex = threading.Lock()
        self._producers = set()
        self._cleaner.after_fork()


def ipc_base(prefix: str, file: str) -> str:
    """The base name of the IPC objects of the entry whose data file is ``file``: the
    file name's random part, so the producer can find objects that an attaching reader
    made even after the entry's record is gone."""
    return prefix + file[: ipc.naming.BASE_HEX]


def _is_key_hash(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _is_dead(pid: int, start: float) -> bool:
    return not ipc.is_alive(pid, start)


_live_caches: weakref.WeakSet[StreamCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_live_caches):
        cache._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
