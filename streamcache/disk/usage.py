"""Disk usage of one cache directory, shared by every process on it: the running total
the ``max_bytes`` budget is enforced against, the eviction of the oldest finished
entries, and the "disk full" condition.

The shared state is one small file, ``<root>/locks/usage.lock`` (fixed little-endian
layout, never unpickled), read and rewritten under a flock on it. Like the other lock
files it is never deleted; what is planted in its place is removed, and bytes that are
not a state are taken for a fresh one (the next cleanup pass repairs the total). Invariants:

- ``total`` is the bytes of every file under ``entries/`` plus the bytes that the
  producers in flight have reserved for their data files. A producer reserves before
  each write, so its reservation exceeds its file's size by at most the write in
  progress; it reserves its trailer before sealing. A published entry's bytes stay
  counted (now under ``entries/``); a producer whose entry failed, or was evicted or
  replaced while in flight, returns everything it reserved. Nobody else subtracts the
  bytes of a data file in flight.
- Whoever unlinks or replaces a file under ``entries/`` subtracts its size, under the
  key's stripe lock.
- What escapes this (a producer killed mid-write, files removed by hand) is repaired
  by the cleanup pass, which walks the directory under the usage lock and sets the
  total to what it finds. (A write reserved but not yet made when the walk passes its
  file is missed then: at most one write per producer, until the next pass.)
- Lock order: a key's stripe lock, then the usage lock, never the other way round.
  The eviction of an entry takes its stripe lock with no other lock held.

The budget (only caches with ``max_bytes`` reserve; processes on one directory should
all use the same budget):

- A miss evicts the oldest finished entries (those that expire first) until the total
  is under the budget, then creates only if it is; otherwise it bypasses.
- A producer whose next write does not fit evicts finished entries too. If everything
  on disk is in flight, one producer at a time (the holder of the *overdraft*,
  recorded in the file) may write past the budget; the others wait until space is
  freed or the overdraft is. So the data on disk stays within ``max_bytes`` plus one
  entry. A wait in which nothing changes for :data:`STALL` seconds (a ``create`` that
  waits for another entry in flight, say) ends by writing past the budget, with a
  warning, rather than hang.

Disk full: ENOSPC, EFBIG or EDQUOT while an entry is set up or written marks the
directory full until ``now + backoff``; until then misses bypass. The first miss after
that probes: if the filesystem reports less than :data:`PROBE_ROOM` free, the mark moves
on by a back-off and the miss bypasses; else it creates, pushing the mark on by a
back-off so that the others keep bypassing meanwhile. Any entry published clears the
mark.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import threading
from collections.abc import Iterator

import ipc
from ipc.clock import SYSTEM, Clock
from ipc.tuples import NamedTuple

from ..log import log
from ..metrics import BUDGET, NULL, Metrics
from .filestore import Filestore, shard_entries
from .index import Index, LockFile

DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})

# Seconds a producer held back by the budget waits while nothing changes (no byte
# reserved or freed anywhere, the same overdraft holder) before it writes anyway.
STALL = 10.0
# How often a producer held back by the budget looks again.
_RECHECK = 0.005
# The longest the disk-full back-off gets.
MAX_BACKOFF = 10.0
# Free bytes a probe needs to see before it creates an entry on a disk found full.
PROBE_ROOM = 1 << 20

# magic, total, published, full_until, holder pid, holder start, holder tag
_LAYOUT = struct.Struct("<8sqQdqdQ")
_MAGIC = b"SCusage\x01"
_TOTAL = struct.Struct("<q")  # the total alone, at offset 8 (a reservation's fast path)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def disk_full(exc: BaseException) -> OSError:
    """What the writer handed to ``create`` raises for ``exc`` (an OSError for which
    :func:`is_disk_full`): an OSError of the same errno whose text says the disk is full,
    so the entry's CreateError says so in every process."""
    code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.ENOSPC
    err = OSError(code, f"the cache's disk is full ({os.strerror(code)}) writing the entry")
    err.__cause__ = exc
    return err


class State:
    """The shared state, as read under the lock (assign to change it)."""

    def __init__(
        self,
        total: int = 0,
        published: int = 0,
        full_until: float = 0.0,
        holder_pid: int = 0,
        holder_start: float = 0.0,
        holder_tag: int = 0,
    ) -> None:
        self.total = total  # bytes (see the module docstring)
        self.published = published  # entries published (eviction walks again when it grows)
        self.full_until = full_until  # wall time until which misses bypass (0: not full)
        self.holder_pid = holder_pid  # the producer allowed past the budget (0: none)
        self.holder_start = holder_start
        self.holder_tag = holder_tag

    def pack(self) -> bytes:
        return _LAYOUT.pack(
            _MAGIC,
            self.total,
            self.published,
            self.full_until,
            self.holder_pid,
            self.holder_start,
            self.holder_tag,
        )

    @classmethod
    def unpack(cls, data: bytes) -> State:
        """The state in ``data``; a fresh one if it is not a state (repaired by gc)."""
        if len(data) != _LAYOUT.size:
            return cls()
        magic, *fields = _LAYOUT.unpack(data)
        if magic != _MAGIC:
            return cls()
        state = cls(*fields)
        if not (0 <= state.full_until < float("inf")):
            state.full_until = 0.0
        return state


class Holder(NamedTuple):
    """A producer in flight, as the overdraft names it."""

    pid: int
    start: float
    tag: int  # from its data file's random part


def holder_for(file: str) -> Holder:
    me = ipc.current_process()
    try:
        tag = int(file[:16], 16)
    except ValueError:
        tag = 0
    return Holder(me.pid, me.start, tag)


class _SharedFile(LockFile):
    """The usage file as this process holds it (see :class:`index.LockFile`); its state
    is read and rewritten while the lock is held."""

    @contextlib.contextmanager
    def locked(self) -> Iterator[State]:
        with self.hold(None) as fd:
            before = os.pread(fd, _LAYOUT.size, 0)
            state = State.unpack(before)
            yield state
            after = state.pack()
            if after != before:
                os.pwrite(fd, after, 0)

    def add(self, n: int, limit: int) -> bool:
        """Add ``n`` to the total if it stays within ``limit``; False (nothing changed)
        if it would not, or the file holds no state yet. The path of every write of a
        cache with a budget: one flock, one pread, one pwrite of the total alone."""
        with self.hold(None) as fd:
            data = os.pread(fd, _LAYOUT.size, 0)
            if len(data) != _LAYOUT.size or data[:8] != _MAGIC:
                return False
            total = _TOTAL.unpack_from(data, 8)[0] + n
            if total > limit:
                return False
            os.pwrite(fd, _TOTAL.pack(total), 8)
            return True


_files: dict[str, _SharedFile] = {}
_files_lock = threading.Lock()


def _shared(path: str) -> _SharedFile:
    with _files_lock:
        return _files.setdefault(path, _SharedFile(path))


def _reset_in_child() -> None:
    global _files_lock
    _files_lock = threading.Lock()
    for f in _files.values():
        f.after_fork_in_child()


os.register_at_fork(after_in_child=_reset_in_child)


class _Candidate:
    __slots__ = ("expires", "ino", "key")

    def __init__(self, key: str, ino: int, expires: int) -> None:
        self.key = key
        self.ino = ino
        self.expires = expires


class Usage:
    """The disk usage of the cache under ``root`` and the budget ``max_bytes`` (None:
    no budget; then producers reserve nothing). ``max_age`` bounds the disk-full back-off."""

    def __init__(
        self,
        root: str,
        index: Index,
        files: Filestore,
        clock: Clock = SYSTEM,
        max_bytes: int | None = None,
        max_age: float = MAX_BACKOFF,
        metrics: Metrics = NULL,
    ) -> None:
        self._metrics = metrics
        self._root = root
        self._file = _shared(os.path.join(index.locks_dir, "usage.lock"))
        self._index = index
        self._files = files
        self._clock = clock
        self.max_bytes = max_bytes
        self.backoff = min(max_age, MAX_BACKOFF)
        # Finished entries seen by the last walk, the one that expires first last.
        self._candidates: list[_Candidate] = []
        self._walked_at = -1  # ``published`` when the candidates were listed
        self._lock = threading.Lock()
        self._local_full_until = 0.0  # in case the state cannot be written (a full disk)

    # -- reading ------------------------------------------------------------------------

    def state(self) -> State:
        with self._file.locked() as st:
            return State(**vars(st))

    def total(self) -> int:
        return self.state().total

    # -- a miss ------------------------------------------------------------------------

    def make_room(self) -> None:
        """Before a miss takes its key's lock: evict the oldest finished entries until
        the total is under the budget (no lock held here)."""
        if self.max_bytes is None:
            return
        over = self.total() - self.max_bytes
        if over >= 0:
            self.evict_oldest(over + 1)

    def admit(self) -> str | None:
        """Why a miss must bypass now, or None if it may create (under the key's lock).
        The first miss after a disk-full back-off is the probe."""
        now = self._clock.wall()
        if self._local_full_until > now:
            return "disk full"
        try:
            with self._file.locked() as st:
                if st.full_until > now:
                    return "disk full"
                if self.max_bytes is not None and st.total >= self.max_bytes:
                    return "over budget"
                if st.full_until:
                    # This miss probes; the others bypass meanwhile.
                    st.full_until = now + self.backoff
                    if self._free() < PROBE_ROOM:
                        return "disk full"
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._local_full_until = now + self.backoff
            return "disk full"
        return None

    def _free(self) -> int:
        """Bytes the filesystem says are free for us (unknown: as if enough)."""
        try:
            vfs = os.statvfs(self._root)
        except OSError:
            return PROBE_ROOM
        return vfs.f_bavail * vfs.f_frsize

    def mark_full(self) -> None:
        """The disk was found full: misses bypass for a back-off."""
        until = self._clock.wall() + self.backoff
        self._local_full_until = until
        with contextlib.suppress(OSError):  # a state that cannot be written: local only
            with self._file.locked() as st:
                st.full_until = max(st.full_until, until)
        # INFO: the entry that found it full has its WARNING line already.
        log.info("streamcache: the cache's disk is full; misses bypass the cache for a while")

    # -- a producer --------------------------------------------------------------------

    def reserve(self, n: int, me: Holder, *, force: bool = False) -> None:
        """Count ``n`` more bytes of the entry in flight of ``me`` before they are
        written; waits while the budget is taken by entries in flight (see the module
        docstring). ``force``: count them without waiting (its trailer)."""
        if self.max_bytes is None or n <= 0:
            return
        budget = self.max_bytes
        if not force and self._file.add(n, budget):
            return
        seen: tuple[int, int, int] | None = None
        changed_at = self._clock.monotonic()
        while True:
            with self._file.locked() as st:
                mine = (st.holder_pid, st.holder_start, st.holder_tag) == (
                    me.pid,
                    me.start,
                    me.tag,
                )
                if force or mine or st.total + n <= budget:
                    st.total += n
                    return
                over = st.total + n - budget
            if self.evict_oldest(over):
                continue
            with self._file.locked() as st:
                if st.total + n <= budget:
                    st.total += n
                    return
                if st.holder_pid == 0 or not ipc.is_alive(st.holder_pid, st.holder_start):
                    st.holder_pid, st.holder_start, st.holder_tag = me.pid, me.start, me.tag
                    st.total += n
                    return
                now = self._clock.monotonic()
                snapshot = (st.total, st.holder_pid, st.holder_tag)
                if snapshot != seen:
                    seen, changed_at = snapshot, now
                elif now - changed_at >= STALL:
                    st.total += n
                    log.warning(
                        "streamcache: a producer waited %.0f s for disk budget while "
                        "nothing changed; writing past max_bytes=%d",
                        STALL,
                        budget,
                    )
                    return
            self._clock.sleep(_RECHECK)

    def end(self, me: Holder, reserved: int, kept: bool) -> None:
        """A producer ended: ``kept`` (its bytes are now a finished entry) or not (they
        were unlinked: give back what it reserved). It gives up the overdraft."""
        with self._file.locked() as st:
            if not kept:
                st.total = max(st.total - reserved, 0)
            else:
                st.published += 1
                st.full_until = 0.0  # an entry was written whole: the disk has room
                self._local_full_until = 0.0
            if (st.holder_pid, st.holder_start, st.holder_tag) == (me.pid, me.start, me.tag):
                st.holder_pid, st.holder_start, st.holder_tag = 0, 0.0, 0

    # -- finished entries --------------------------------------------------------------

    def forget(self, size: int) -> None:
        """A file of ``size`` bytes under entries/ was unlinked or replaced."""
        if size > 0:
            with self._file.locked() as st:
                st.total = max(st.total - size, 0)

    def remove_entry(self, key: str) -> bool:
        """Unlink the finished entry of ``key`` and forget its bytes (key's lock held)."""
        size = self.entry_size(key)
        if not self._files.remove_entry(key):
            return False
        self.forget(size)
        return True

    def entry_size(self, key: str) -> int:
        """Bytes of the finished entry file of ``key`` (0 if none)."""
        try:
            st = os.lstat(self._files.entry_path(key))
        except OSError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def evict_oldest(self, need: int) -> bool:
        """Evict finished entries, those that expire first first, until ``need`` bytes
        are freed or none is left; True if any was evicted."""
        freed = 0
        while freed < need:
            cand = self._next_candidate()
            if cand is None:
                break
            freed += self._evict(cand)
        return freed > 0

    def _next_candidate(self) -> _Candidate | None:
        with self._lock:
            if not self._candidates:
                published = self.state().published
                if published == self._walked_at:
                    return None  # nothing finished since the last walk
                self._walked_at = published
                found = [
                    _Candidate(key, st.st_ino, st.st_mtime_ns)
                    for key, st in self._files.entries()
                    if stat.S_ISREG(st.st_mode) and _is_key_hash(key)
                ]
                found.sort(key=lambda c: c.expires, reverse=True)
                self._candidates = found
            return self._candidates.pop() if self._candidates else None

    def _evict(self, cand: _Candidate) -> int:
        with self._index.locked(cand.key, None):
            try:
                st = os.lstat(self._files.entry_path(cand.key))
            except OSError:
                return 0  # gone already
            if st.st_ino != cand.ino or not self._files.remove_entry(cand.key):
                return 0  # replaced by a newer entry
            self.forget(st.st_size)
        self._metrics.count_eviction(BUDGET)
        log.debug("streamcache: evicted entry %s (%d bytes) for the budget", cand.key, st.st_size)
        return st.st_size

    # -- cleanup -----------------------------------------------------------------------

    def repair(self) -> int:
        """Set the total to the bytes the directory holds (cleanup pass); returns it.
        Holds the usage lock for the walk: nothing is reserved or freed meanwhile."""
        with self._file.locked() as st:
            total = 0
            for root in (self._files.entries_dir, self._files.data_dir):
                for entry in shard_entries(root):
                    with contextlib.suppress(OSError):
                        est = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(est.st_mode):
                            total += est.st_size
            st.total = total
            if st.holder_pid and not ipc.is_alive(st.holder_pid, st.holder_start):
                st.holder_pid, st.holder_start, st.holder_tag = 0, 0.0, 0
            return total


class Account:
    """One producer's reservations (its writer reserves, its end settles them)."""

    def __init__(self, usage: Usage, file: str) -> None:
        self.usage = usage
        self.holder = holder_for(file)
        self.reserved = 0

    def reserve(self, n: int, *, force: bool = False) -> None:
        self.usage.reserve(n, self.holder, force=force)
        if self.usage.max_bytes is not None:
            self.reserved += n

    def end(self, kept: bool) -> None:
        self.usage.end(self.holder, self.reserved, kept)


def _is_key_hash(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
