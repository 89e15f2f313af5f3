"""StreamCache: the public API; index, filestore, pipe and producer put together
across processes.

The walk of one fetch, all downward: :meth:`StreamCache.fetch` -> the small-hit memo
(``disk/memo.py``) -> the lookup under the key's lock (``lookup.py``) -> a reader
(``pipe``) or a new producer (``producer``) -> the channel (``ipc``). The options are
checked in ``options.py``.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable

import ipc
from ipc.channel import Channel
from ipc.clock import SYSTEM, Clock, clock_of
from ipc.segment import DEFAULT_SLOTS, HEADER_BYTES, SLOT_BYTES, SegmentError

from . import config
from .base import CacheBase, check_create, check_dst, check_key, check_resume, check_start
from .deadline import Deadline, Idle, deadline_for, idle_for, remaining, wait_limit
from .disk.eviction import Cleaner, GCReport, collect
from .disk.filestore import (
    TREE,
    Finished,
    check_usable,
    make_private_dirs,
    prepare_dir,
    written_so_far,
)
from .disk.filesystem import check_cache_fs, check_shm
from .disk.index import Record
from .disk.memo import SmallHits
from .disk.store import LAYOUT, Store, channel_base, key_hash
from .entry.pipe import FileReader, PipeReader
from .entry.producer import Producers, check_not_creating
from .entry.resume import Takeover
from .entry.sink import write_all
from .entry.stream import EntryInfo, FetchResult, Stream
from .lookup import Found, Lookup
from .metrics import BYPASS, DEFAULT_REGISTRY, ERROR, HIT, MISS, DefaultRegistry, for_dir
from .null import NullCache, start_create
from .options import check_options

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from prometheus_client import CollectorRegistry

    from .entry.create_types import Create
    from .entry.stream import Source

__all__ = ["LAYOUT", "GCReport", "StreamCache", "channel_base", "key_hash", "prepare_dir"]


# fetch reads a finished entry up to this size whole, in one pread with its trailer.
_READ_WHOLE = 64 * 1024


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
        opts = check_options(
            max_age=max_age,
            window=window,
            max_bytes=max_bytes,
            liveness=liveness,
            cleanup_interval=cleanup_interval,
            reader_slots=reader_slots,
            key_preview=key_preview,
            allow_network_fs=allow_network_fs,
            stall_timeout=stall_timeout,
        )
        self.max_age = opts.max_age
        self.window = opts.window
        self.max_bytes = opts.max_bytes
        self.liveness = opts.liveness
        self.reader_slots = opts.reader_slots
        self.key_preview = opts.key_preview
        self.stall_timeout = opts.stall_timeout
        self.allow_network_fs = opts.allow_network_fs
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
        self._cleaner = Cleaner(self.gc, opts.cleanup_interval)
        self._running = Producers()
        self._lookup = Lookup(self._store, self._clock, opts, self._running)
        self._registry = registry
        self._seen = SmallHits(self._files, self._clock)
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
        resume: bool = False,
    ) -> Stream:
        try:
            check_start(start)
            idle = idle_for(idle_timeout, self._clock)
            h, deadline = self._begin(key, create, timeout)
            takeover = self._takeover(create, resume)
            source, created, bypassed = self._open(key, h, create, deadline, start, takeover)
        except Exception:
            self.metrics.count_fetch(ERROR)
            raise
        if bypassed:
            self.metrics.count_fetch(BYPASS)
        return self._stream(
            key, h, source, created, create, deadline, start, idle, takeover, outcome=not bypassed
        )

    def peek(self, key: str) -> EntryInfo | None:
        """The state of ``key``'s entry, or None: never creates, waits or counts."""
        check_key(key)
        h = key_hash(key)
        fin = self._lookup.finished(h)
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
        self._seen.forget(h)
        return self._store.invalidate(h)

    def fetch(
        self,
        key: str,
        dst: Any,
        create: Create,
        timeout: float | None = None,
        *,
        idle_timeout: float | None = None,
        resume: bool = False,
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
            takeover = self._takeover(create, resume)
            data = self._seen.get(h)
            if data is not None:
                write_all(dst, data, deadline)
                self.metrics.count_hit(len(data))
                return FetchResult(len(data), False)
            fin = self._lookup.finished(h, _READ_WHOLE, tagged=True)
            if fin is not None and fin.data is not None:  # small: one write, no reader
                self._seen.remember(h, fin)
                write_all(dst, fin.data, deadline)
                self.metrics.count_hit(fin.size)
                return FetchResult(fin.size, False)
            result, outcome = self._fetch(key, h, dst, create, deadline, idle, fin, takeover)
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
        takeover: Takeover | None = None,
    ) -> tuple[FetchResult, str]:
        """fetch beyond a small hit: a reader on ``fin``, the finished entry if there is
        one, or on the entry found or created under the key's lock, or create straight
        into ``dst`` (bypassing the cache); and the outcome."""
        if fin is not None:
            found = Found(FileReader(fin.fd, fin.size), False)
        else:
            inline_dst = dst if deadline is None and idle is None else None
            found = self._lookup.find_or_claim(key, h, create, deadline, inline_dst, 0, takeover)
        if found.bypass is not None:
            idle_timeout = None if idle is None else idle.seconds
            null = self._null.fetch(
                key, dst, create, remaining(deadline), idle_timeout=idle_timeout
            )
            return null, BYPASS
        if found.reader is None:
            self.metrics.count_served(found.written)
            return FetchResult(found.written, True), MISS
        reader, created = found.reader, found.created
        with self._stream(key, h, reader, created, create, deadline, 0, idle, takeover) as s:
            return FetchResult(s.copy_to(dst), created), MISS if created else HIT

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

    def _takeover(self, create: Create, resume: object) -> Takeover | None:
        """With ``resume``: how this call's reader carries its entry on if the producer
        dies (see :mod:`.entry.resume`)."""
        if not check_resume(resume):
            return None
        return Takeover(
            self._store,
            create,
            window=self.window,
            liveness=self.liveness,
            running=self._running,
            clock=self._clock,
        )

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
        takeover: Takeover | None = None,
        *,
        outcome: bool = False,
    ) -> Stream:
        """A Stream on ``source`` (with ``outcome``, counting the call's outcome when
        it is closed); one that attached to an entry in flight may reopen."""
        reopen = None
        if isinstance(source, PipeReader) and not created:
            reopen = functools.partial(self._reopen, key, h, create, deadline, start, takeover)
        return Stream(source, created, deadline, reopen, self.metrics, outcome, idle)

    def _reopen(
        self,
        key: str,
        h: str,
        create: Create,
        deadline: Deadline | None,
        start: int,
        takeover: Takeover | None,
    ) -> tuple[Source, bool]:
        source, created, _ = self._open(key, h, create, deadline, start, takeover)
        return source, created

    def _open(
        self,
        key: str,
        h: str,
        create: Create,
        deadline: Deadline | None,
        start: int,
        takeover: Takeover | None = None,
    ) -> tuple[Source, bool, bool]:
        """A reader on the entry of ``h`` from byte ``start``, whether this call
        created it (then its producer runs in a thread, or, bypassing the cache,
        straight into the reader), and whether it bypassed the cache."""
        hit = self._lookup.open_finished(h, start)
        if hit is not None:
            return hit, False, False
        found = self._lookup.find_or_claim(key, h, create, deadline, None, start, takeover)
        if found.bypass is not None:
            return start_create(create, start), True, True
        assert found.reader is not None
        return found.reader, found.created, False

    # -- fork ------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork: the child has no producers and no cleaner.
        self._running.after_fork_in_child()
        self._cleaner.after_fork()
        self._seen.after_fork_in_child()


_live_caches: weakref.WeakSet[StreamCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_live_caches):
        cache._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
