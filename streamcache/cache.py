"""StreamCache: the public API and the lookup; index, filestore, pipe and producer
put together across processes.

The walk of one fetch, all downward: :meth:`StreamCache.fetch` -> the lookup under
the key's lock (:meth:`StreamCache._lookup_locked`) -> a reader (``pipe``) or a new
producer (``producer``) -> the channel (``ipc``).
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import ipc
from ipc.channel import Channel, unlink_channel
from ipc.clock import SYSTEM, Clock, clock_of
from ipc.segment import DEFAULT_SLOTS, HEADER_BYTES, MAX_SLOTS, SLOT_BYTES, SegmentError

from . import config
from .base import (
    CacheBase,
    check_create,
    check_dst,
    check_key,
    check_start,
)
from .deadline import Deadline, Idle, deadline_for, idle_for, remaining, wait_limit
from .disk.eviction import Cleaner, GCReport, collect
from .disk.filestore import (
    MAX_KEY_PREVIEW,
    TREE,
    Finished,
    check_usable,
    make_private_dirs,
    prepare_dir,
    set_entry_info,
    written_so_far,
)
from .disk.filesystem import check_cache_fs, check_shm
from .disk.index import Record
from .disk.store import LAYOUT, Store, channel_base, key_hash
from .disk.usage import is_disk_full
from .entry.creator import Create
from .entry.pipe import CREATOR_SLOT, FileReader, PipeReader
from .entry.producer import Producer, Producers, check_not_creating
from .entry.sink import write_all
from .entry.stream import EntryInfo, FetchResult, Source, Stream
from .log import log
from .metrics import BYPASS, DEFAULT_REGISTRY, ERROR, HIT, MISS, DefaultRegistry, for_dir
from .null import NullCache, start_create

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["LAYOUT", "GCReport", "StreamCache", "channel_base", "key_hash", "prepare_dir"]


# fetch reads a finished entry up to this size whole, in one pread with its trailer.
_READ_WHOLE = 64 * 1024
# The bytes of the small entries a cache keeps after serving them (see _seen_hit).
_SEEN_BYTES = 1024 * 1024


class Found(NamedTuple):
    """What the lookup under the key's lock gave: a reader on the entry (``created``:
    this call made the entry, its producer runs in a thread), or no reader because
    this call created the entry inline and copied ``written`` bytes to its dst; or
    none because the miss must bypass the cache (``bypass``: why)."""

    reader: FileReader | PipeReader | None
    created: bool
    written: int = 0
    bypass: str | None = None


class StreamCache(CacheBase):
    """A streaming cache on ``dir`` shared by every process and thread that opens it.

    ``liveness`` bounds how long a dead producer or reader goes unnoticed. ``clock``
    (an :class:`ipc.Clock`, or a function giving epoch seconds) is injectable for
    tests. ``cleanup_interval`` is the period of the background cleanup loop in
    seconds (default ``min(max_age, 60)``, at least 1 s); 0 runs no loop (call
    :meth:`gc` yourself). ``reader_slots`` is how many readers of one entry in flight
    publish their position (default 16384); readers beyond that still read
    everything but neither hold back nor keep alive the producer. ``registry`` is the
    prometheus_client registry its metrics go to (see :mod:`streamcache.metrics`;
    the default: prometheus_client's REGISTRY; None: no metrics, and prometheus_client
    is not imported). ``key_preview``: store the first that many characters of each
    new entry's key with its data file (with its creation time, in an extended
    attribute where the file system has them), for ``streamcache stats``; 0 (the
    default) stores none, as keys may be secret. A ``dir`` on a network or cluster file
    system is refused (:class:`UnsupportedFilesystem`, see :mod:`.disk.filesystem`)
    unless ``allow_network_fs`` is True, and then one producer per key holds per host
    only; so is a /dev/shm that cannot hold an entry's shared memory.
    ``stall_timeout``: an entry whose producer, alive, writes nothing for that long
    while a reader of this cache waits for it fails for every reader with
    :class:`ProducerStalled` and leaves the index (noticed on the waiting reader's
    liveness check, so within ``stall_timeout`` plus ``liveness``); None (the
    default): readers wait for as long as the producer lives.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],
        *,
        max_age: config.Duration = config.DEFAULT_MAX_AGE,
        window: int = config.DEFAULT_WINDOW,
        max_bytes: int | None = None,
        liveness: config.Duration = config.DEFAULT_LIVENESS,
        clock: Clock | Callable[[], float] = SYSTEM,
        cleanup_interval: float | None = None,
        reader_slots: int = DEFAULT_SLOTS,
        registry: CollectorRegistry | DefaultRegistry | None = DEFAULT_REGISTRY,
        key_preview: int = 0,
        allow_network_fs: bool = False,
        stall_timeout: config.Duration | None = None,
    ) -> None:
        # Every argument is checked before anything touches the disk.
        path = config.directory(dir)
        self.max_age = config.seconds(max_age, "max_age")
        self.window = config.nonnegative_int(window, "window")
        self.max_bytes = config.optional_budget(max_bytes, "max_bytes")
        self.liveness = config.seconds(liveness, "liveness", allow_zero=False)
        self.reader_slots = config.nonnegative_int(reader_slots, "reader_slots")
        if not 1 <= self.reader_slots <= MAX_SLOTS:
            raise ValueError(f"reader_slots must be in 1..{MAX_SLOTS}")
        self.key_preview = config.nonnegative_int(key_preview, "key_preview")
        if self.key_preview > MAX_KEY_PREVIEW:
            raise ValueError(f"key_preview must be in 0..{MAX_KEY_PREVIEW}")
        if cleanup_interval is not None:
            cleanup_interval = config.seconds(cleanup_interval, "cleanup_interval")
        self.stall_timeout = (
            None
            if stall_timeout is None
            else config.seconds(stall_timeout, "stall_timeout", allow_zero=False)
        )
        if not isinstance(allow_network_fs, bool):
            raise TypeError(
                f"allow_network_fs must be a bool, not {type(allow_network_fs).__name__}"
            )
        self.allow_network_fs = allow_network_fs
        # Before the directory is made: a refused one is left as it was.
        check_cache_fs(path, allow_network_fs)
        check_shm(HEADER_BYTES + self.reader_slots * SLOT_BYTES)
        self._clock = clock_of(clock)
        self.metrics = for_dir(path, registry, self._clock)
        self.dir = prepare_dir(path)
        self.root = os.path.join(self.dir, LAYOUT)
        make_private_dirs(self.root)
        tree = [self.root, *(os.path.join(self.root, d) for d in TREE)]
        check_usable(self.dir, tree, [os.path.join(self.root, "locks", "usage.lock")])
        self._store = Store(
            self.root,
            ipc.prefix_for(self.dir),
            self._clock,
            self.metrics,
            max_bytes=self.max_bytes,
            max_age=self.max_age,
        )
        self._index = self._store.index
        self._files = self._store.files
        if cleanup_interval is None:
            cleanup_interval = max(min(self.max_age, 60.0), 1.0)
        self._cleaner = Cleaner(self.gc, cleanup_interval)
        self._running = Producers()
        self._registry = registry
        # Small entries served lately, by key hash: (tag, expiry, bytes), oldest first.
        self._seen: dict[str, tuple[bytes, float, bytes]] = {}
        self._seen_bytes = 0
        self._seen_lock = threading.Lock()
        self._null = NullCache(clock=self._clock)  # what a miss that bypasses runs
        _live_caches.add(self)
        self.metrics.set_enabled(self.max_age)

    def __repr__(self) -> str:
        return f"StreamCache({self.dir!r}, max_age={self.max_age})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled, a cache is its directory and options: unpickled in another process
        (a ``spawn`` Pool's initializer, say) it opens the same directory with the same
        options. Nothing of this process's state (producers, cleanup) goes with it."""
        return functools.partial(type(self), **self._options()), (self.dir,)

    def _options(self) -> dict[str, Any]:
        """The keyword arguments that open this cache again (``dir`` aside)."""
        registry = self._registry
        if registry is not None and registry is not DEFAULT_REGISTRY:
            from prometheus_client import REGISTRY

            if registry is not REGISTRY:
                raise TypeError(
                    "a StreamCache with a metrics registry of its own cannot be pickled: "
                    "a registry belongs to one process"
                )
            registry = DEFAULT_REGISTRY
        return {
            "max_age": self.max_age,
            "window": self.window,
            "max_bytes": self.max_bytes,
            "liveness": self.liveness,
            "clock": self._clock,
            "cleanup_interval": self._cleaner.interval,
            "reader_slots": self.reader_slots,
            "registry": registry,
            "key_preview": self.key_preview,
            "allow_network_fs": self.allow_network_fs,
            "stall_timeout": self.stall_timeout,
        }

    # -- public API -----------------------------------------------------------------

    def stream(
        self,
        key: str,
        create: Create,
        timeout: float | None = None,
        *,
        start: int = 0,
        idle_timeout: float | None = None,
    ) -> Stream:
        try:
            check_start(start)
            idle = idle_for(idle_timeout, self._clock)
            h, deadline = self._begin(key, create, timeout)
            source, created, bypassed = self._open(key, h, create, deadline, start)
        except Exception:
            self.metrics.count_fetch(ERROR)
            raise
        if bypassed:
            self.metrics.count_fetch(BYPASS)
        return self._stream(
            key, h, source, created, create, deadline, start, idle, outcome=not bypassed
        )

    def peek(self, key: str) -> EntryInfo | None:
        """The state of ``key``'s entry, or None: never creates, waits or counts."""
        check_key(key)
        h = key_hash(key)
        fin = self._finished(h)
        if fin is not None:
            os.close(fin.fd)
            return EntryInfo(fin.size, fin.size, True)
        text = self._index.read_text(h)
        rec = None if text is None else Record.from_text(h, text)
        if rec is None or rec.expires <= self._clock.wall():
            return None
        if not self._store.producer_alive(rec):
            return None
        try:
            channel = Channel.open(self._store.channel_base(rec.file))
        except SegmentError:  # an inline creator's entry nobody else reads yet
            try:
                fd = self._files.open(rec.file)
            except OSError:
                return None
            try:
                return EntryInfo(None, written_so_far(fd), False)
            finally:
                os.close(fd)
        try:
            offset, state = channel.seg.progress()
            if state == ipc.STATE_FAILED:
                return None
            if state == ipc.STATE_DONE:
                return EntryInfo(offset, offset, True)
            return EntryInfo(channel.seg.announced_size, offset, False)
        finally:
            channel.close()

    def invalidate(self, key: str) -> bool:
        """Drop the entry of ``key``: the next call for it, in any process, creates
        afresh. A finished entry is removed (open readers keep reading it); an entry in
        flight goes on for its current readers but is never published (see
        :meth:`Store.invalidate`). Whether anything was dropped."""
        check_key(key)
        h = key_hash(key)
        self._forget(h)
        return self._store.invalidate(h)

    def fetch(
        self,
        key: str,
        dst: Any,
        create: Create,
        timeout: float | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> FetchResult:
        """Find or create the entry of ``key`` and copy it to ``dst``.

        Without a timeout (or idle_timeout), the call that creates runs ``create`` in
        its own thread and hands each write straight to ``dst``; with one, ``create``
        runs in a producer thread so that the call can return when the timeout passes.
        """
        try:
            check_dst(dst)
            idle = None if idle_timeout is None else idle_for(idle_timeout, self._clock)
            h, deadline = self._begin(key, create, timeout)
            data = self._seen_hit(h)
            if data is not None:
                write_all(dst, data, deadline)
                self.metrics.count_hit(len(data))
                return FetchResult(len(data), False)
            fin = self._finished(h, _READ_WHOLE, tagged=True)
            if fin is not None and fin.data is not None:  # small: one write, no reader
                self._remember(h, fin)
                write_all(dst, fin.data, deadline)
                self.metrics.count_hit(fin.size)
                return FetchResult(fin.size, False)
            result, outcome = self._fetch(key, h, dst, create, deadline, idle, fin)
        except Exception:
            self.metrics.count_fetch(ERROR)
            raise
        self.metrics.count_fetch(outcome)
        return result

    def _fetch(
        self,
        key: str,
        h: str,
        dst: Any,
        create: Create,
        deadline: Deadline | None,
        idle: Idle | None,
        fin: Finished | None,
    ) -> tuple[FetchResult, str]:
        """fetch beyond a small hit: a reader on ``fin``, the finished entry if there is
        one, or on the entry found or created under the key's lock, or create straight
        into ``dst`` (bypassing the cache); and the outcome."""
        if fin is not None:
            found = Found(FileReader(fin.fd, fin.size), False)
        else:
            inline_dst = dst if deadline is None and idle is None else None
            found = self._find_or_claim(key, h, create, deadline, inline_dst, 0)
        if found.bypass is not None:
            idle_timeout = None if idle is None else idle.seconds
            null = self._null.fetch(
                key, dst, create, remaining(deadline), idle_timeout=idle_timeout
            )
            return null, BYPASS
        if found.reader is None:
            self.metrics.count_served(found.written)
            return FetchResult(found.written, True), MISS
        with self._stream(key, h, found.reader, found.created, create, deadline, 0, idle) as s:
            return FetchResult(s.copy_to(dst), found.created), MISS if found.created else HIT

    def stop(self) -> None:
        """End this process's background cleanup. fetch still works afterwards."""
        self._cleaner.stop()
        self.metrics.flush()

    def gc(self) -> GCReport:
        """One cleanup pass (skipped if another process is running one)."""
        with self._index.cleanup_lock() as mine:
            if not mine:
                return GCReport(ran=False)
            report = collect(self._store, self._clock, self.max_age)
        self.metrics.set_usage(report.entries, report.disk_bytes)
        self.metrics.flush()
        return report

    def wait_producers(self, timeout: float | None = None) -> bool:
        """Wait for this process's in-flight producers; True if none is left."""
        deadline = deadline_for(timeout, self._clock)
        while True:
            threads = [t for t in self._running.threads() if t.ident is not None]
            if not threads:
                return True
            for t in threads:
                if deadline is not None and deadline.passed():
                    return False
                t.join(wait_limit(deadline))

    # -- the calls' common steps ------------------------------------------------------

    def _begin(
        self, key: str, create: Create, timeout: float | None
    ) -> tuple[str, Deadline | None]:
        """Check a call's arguments; its key's hash and deadline."""
        check_key(key)
        check_create(create)
        deadline = None if timeout is None else deadline_for(timeout, self._clock)
        h = key_hash(key)
        check_not_creating(self._index.root, h)
        self._cleaner.ensure_started()
        return h, deadline

    def _stream(
        self,
        key: str,
        h: str,
        source: Source,
        created: bool,
        create: Create,
        deadline: Deadline | None,
        start: int,
        idle: Idle | None = None,
        *,
        outcome: bool = False,
    ) -> Stream:
        """A Stream on ``source`` (with ``outcome``, counting the call's outcome when
        it is closed); one that attached to an entry in flight may reopen."""
        reopen = None
        if isinstance(source, PipeReader) and not created:
            reopen = functools.partial(self._reopen, key, h, create, deadline, start)
        return Stream(source, created, deadline, reopen, self.metrics, outcome, idle)

    def _reopen(
        self, key: str, h: str, create: Create, deadline: Deadline | None, start: int
    ) -> tuple[Source, bool]:
        source, created, _ = self._open(key, h, create, deadline, start)
        return source, created

    def _open(
        self, key: str, h: str, create: Create, deadline: Deadline | None, start: int
    ) -> tuple[Source, bool, bool]:
        """A reader on the entry of ``h`` from byte ``start``, whether this call
        created it (then its producer runs in a thread, or, bypassing the cache,
        straight into the reader), and whether it bypassed the cache."""
        hit = self._open_finished(h, start)
        if hit is not None:
            return hit, False, False
        found = self._find_or_claim(key, h, create, deadline, None, start)
        if found.bypass is not None:
            return start_create(create, start), True, True
        assert found.reader is not None
        return found.reader, found.created, False

    def _find_or_claim(
        self, key: str, h: str, create: Create, deadline: Deadline | None, dst: Any, start: int
    ) -> Found:
        """Under the key's lock: a reader on the entry (from byte ``start``), or a new
        entry of ours, whose producer runs in a thread (``dst`` None) or here, copying
        to ``dst``; or neither, when the miss must bypass the cache."""
        # A created entry is put here before its record is written, so that an
        # exception anywhere up to the producer's start (a signal handler's, say)
        # fails it instead of leaving a record that nobody will ever finish.
        pending: list[tuple[Producer, PipeReader | None]] = []
        self._store.usage.make_room()
        try:
            try:
                with self._index.locked(h, remaining(deadline)):
                    reader = self._lookup_locked(h, start)
                    if reader is not None:
                        return Found(reader, False)
                    bypass = self._store.usage.admit()
                    if bypass is not None:
                        return _bypass(bypass)
                    self._create_locked(key, h, pending, with_reader=dst is None, start=start)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                # No room for a lock, record or data file: nothing ran create yet.
                _abort(pending, exc)
                pending.clear()
                self._store.usage.mark_full()
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

    # -- lookup -----------------------------------------------------------------------

    def _seen_hit(self, h: str) -> bytes | None:
        """The bytes of ``h``'s small finished entry if this cache served it before and
        the file at the entry's name is still that one, unexpired: one getxattr, no
        open. A data file's name is never used twice and a finished entry's bytes and
        mtime never change (filestore.py), so the tag that names the file stands for
        the bytes whose trailer was checked when they were read."""
        seen = self._seen.get(h)
        if seen is None:
            return None
        tag, expires, data = seen
        if expires > self._clock.wall() and self._files.entry_tag(h) == tag:
            return data
        self._forget(h)  # replaced, removed or expired: the lookup decides
        return None

    def _remember(self, h: str, fin: Finished) -> None:
        """Keep the small entry ``fin`` just read, if its file has a tag; the oldest
        kept go beyond :data:`_SEEN_BYTES`."""
        if fin.tag is None or fin.data is None:
            return
        with self._seen_lock:
            old = self._seen.pop(h, None)
            if old is not None:
                self._seen_bytes -= len(old[2])
            self._seen[h] = (fin.tag, fin.expires, fin.data)
            self._seen_bytes += len(fin.data)
            while self._seen_bytes > _SEEN_BYTES:
                gone = self._seen.pop(next(iter(self._seen)))
                self._seen_bytes -= len(gone[2])

    def _forget(self, h: str) -> None:
        with self._seen_lock:
            old = self._seen.pop(h, None)
            if old is not None:
                self._seen_bytes -= len(old[2])

    def _finished(self, h: str, read_up_to: int = -1, tagged: bool = False) -> Finished | None:
        """The finished, unexpired entry of ``h`` (read whole up to ``read_up_to``
        bytes, with its tag if ``tagged``); no lock needed: the file at the entry's
        name is complete and immutable."""
        fin = self._files.open_entry(h, read_up_to, tagged)
        if fin is not None and fin.expires <= self._clock.wall():
            if fin.fd >= 0:
                os.close(fin.fd)
            return None
        return fin

    def _open_finished(self, h: str, start: int = 0) -> FileReader | None:
        fin = self._finished(h)
        return None if fin is None else FileReader(fin.fd, fin.size, start)

    def _lookup_locked(self, h: str, start: int) -> FileReader | PipeReader | None:
        """A reader on the entry of ``h`` from byte ``start``, or None if there is none
        to read (lock held)."""
        hit = self._open_finished(h, start)
        if hit is not None:
            return hit
        self._store.expire_finished(h)  # expired or not intact (if any): never served
        text = self._index.read_text(h)
        if text is None:
            return None  # (a non-record in its place is replaced when one is written)
        rec = Record.from_text(h, text)
        if rec is None:
            self._index.remove(h)  # garbage: never served
            return None
        if rec.expires <= self._clock.wall():
            self._store.evict(rec)
            return None
        if rec.boot != ipc.BOOT or not ipc.is_alive(rec.pid, rec.start):
            self._store.discard(rec)
            return None
        try:
            fd = self._files.open(rec.file)
        except FileNotFoundError:  # gone, or not a file of ours (then it goes too)
            self._store.evict(rec)
            return None
        if not ipc.lock_held(fd):  # a live process, but not producing: see filestore.py
            os.close(fd)
            self._store.discard(rec)
            return None
        try:
            channel = self._store.open_channel(rec, fd, self.reader_slots)
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
            self._index.remove(h)
            return None
        slot = channel.seg.claim_slot(ipc.current_process())
        return PipeReader(
            fd,
            channel,
            slot,
            self.liveness,
            self._store,
            rec,
            clock=self._clock,
            start=start,
            stall_timeout=self.stall_timeout,
        )

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
        name, wfd, channel = self._store.new_data_file(me, with_reader, self.reader_slots)
        now = self._clock.wall()
        set_entry_info(wfd, name, now, key, self.key_preview)
        rec = Record(h, name, me.pid, me.start, now + self.max_age)
        options: dict[str, Any] = {
            "window": self.window,
            "liveness": self.liveness,
            "running": self._running,
            "clock": self._clock,
        }
        if not with_reader:  # inline: a channel only once another reader attaches
            producer = Producer(self._store, rec, None, wfd, **options)
            pending.append((producer, None))  # from here on, failures go through abort()
            self._index.write(rec)
            return
        assert channel is not None
        try:
            try:
                mine = Channel.open(channel.base)
                try:
                    rfd = self._files.open(name)
                except BaseException:
                    mine.close()
                    raise
            except BaseException:
                channel.close()
                unlink_channel(channel.base)
                raise
        except BaseException:
            os.close(wfd)
            self._files.remove(name)
            raise
        # The creator is the first reader; its slot is one that nobody else claimed.
        slot = mine.seg.claim_slot(me)
        assert slot is not None and slot.index == CREATOR_SLOT
        producer = Producer(self._store, rec, channel, wfd, **options)
        reader = PipeReader(
            rfd,
            mine,
            slot,
            self.liveness,
            self._store,
            rec,
            producer.outcome,
            self._clock,
            start,
            self.stall_timeout,
        )
        pending.append((producer, reader))  # from here on, failures go through abort()
        self._index.write(rec)

    # -- fork ------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork: the child has no producers and no cleaner.
        self._running.after_fork_in_child()
        self._cleaner.after_fork()
        self._seen_lock = threading.Lock()  # another thread may have held it


def _bypass(reason: str) -> Found:
    """A miss that runs create straight into its caller, with no cache entry: the budget
    is all taken by entries in flight, or the disk is full (outcome "bypass")."""
    log.debug("streamcache: a miss bypasses the cache (%s)", reason)
    return Found(None, False, bypass=reason)


def _abort(pending: list[tuple[Producer, PipeReader | None]], exc: BaseException) -> None:
    """Fail the entries created by a lookup that did not get to run them."""
    for producer, reader in pending:
        if reader is not None:
            reader.close()
        producer.abort(exc)


_live_caches: weakref.WeakSet[StreamCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_live_caches):
        cache._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
