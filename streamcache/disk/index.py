"""The on-disk index of entries in flight, guarded by striped file locks.

Layout under ``<root>``::

    index/<aa>/<sha256 of key>.rec    one record per entry in flight (a symlink to its text)
    locks/<aa>.lock                   256 lock stripes, chosen by the key hash
    locks/cleanup.lock                held by the one process running cleanup

A finished entry has no record: it is a file of the filestore found by name (see
filestore.py). Invariants:

- A record, and a finished entry's file, are only created, replaced or removed
  while the key's stripe lock is held, so the lookup, create and reader
  registration of one key form one critical section host-wide and a key has at
  most one producer.
- The locks are flock(2) locks, which the kernel releases when the holder dies,
  so a process killed inside a critical section never blocks anyone.
- Lock files are never deleted: a deleted lock file would let two processes lock
  different inodes of one path.
- Records are plain text (never pickle). A record that does not parse, or has
  another version, is garbage: ignored, and removed under the lock; so is anything
  else at a record's name (a file, FIFO or directory), and cleanup removes names
  that are not ours (:meth:`Index.garbage`).
- A lock file is opened with O_NOFOLLOW and O_NONBLOCK and must be a regular file:
  a directory, FIFO or symlink planted at its name is removed (it is no lock anyone
  holds) and the file made.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator

from ipc.clock import SYSTEM, Clock
from ipc.liveness import BOOT
from ipc.tuples import NamedTuple

from .filestore import (
    clear_non_regular,
    is_key_hash,
    make_private_dirs,
    producer_pid,
    remove_path,
    shard_entries,
)

RECORD_VERSION = 4
_LOCK_POLL = 0.001
_ABSENT = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class Record(NamedTuple):
    """What the index knows of one key's entry in flight.

    Stored as one short line of text, ``"<version> <file> <start> <expires> <boot>"``
    (the data file's name carries the producer's pid, see filestore.py; the times in
    milliseconds, base 36; the boot's tag, :data:`ipc.liveness.BOOT`): short enough (58 bytes
    at most, for the largest pid and a start time a year after boot) to live inside
    a symlink's inode on ext4, so writing and removing a record allocates and frees
    no data block. Version 3 records (no boot tag) are garbage to this version.

    The producer is (boot, pid, start): a record of another boot names no live
    process, whatever its pid and start time (they count from boot). And it is alive
    only while it holds the flock it took on its data file when it made it
    (:meth:`Store.producer_alive`).
    """

    key: str  # sha256 of the cache key, hex (the record's name; not stored)
    file: str  # data file name in the filestore (its random part names the IPC objects)
    pid: int  # producer process
    start: float  # producer start time
    expires: float  # epoch seconds: creation + the creating cache's max_age
    boot: str = BOOT  # the tag of the boot the producer ran in

    def to_text(self) -> str:
        return f"{RECORD_VERSION} {self.file} {_b36(self.start)} {_b36(self.expires)} {self.boot}"

    @classmethod
    def from_text(cls, key: str, text: str) -> Record | None:
        """The record of ``key`` in ``text``, or None if it is garbage."""
        parts = text.split(" ")
        if len(parts) != 5 or parts[0] != str(RECORD_VERSION):
            return None
        _, file, start, expires, boot = parts
        pid = producer_pid(file)
        start_s, expires_s = _from_b36(start), _from_b36(expires)
        if pid is None or start_s is None or expires_s is None:
            return None
        if not (1 <= len(boot) <= 8 and all(c in "0123456789abcdef" for c in boot)):
            return None
        return cls(key, file, pid, start_s, expires_s, boot)


def _b36(x: float) -> str:
    """Milliseconds of ``x`` seconds in base 36 (non-negative, finite)."""
    n = max(round(x * 1000), 0)
    digits = ""
    while True:
        n, d = divmod(n, 36)
        digits = _B36[d] + digits
        if not n:
            return digits


def _from_b36(token: str) -> float | None:
    """Seconds from :func:`_b36`'s text; None if it is not that (garbage, never trusted:
    no sign, no space or underscore, under 2**50 ms, some 35,000 years, so that it
    reads back to the same text)."""
    if not 1 <= len(token) <= 10 or not all(c in _B36 for c in token):
        return None
    ms = int(token, 36)
    return ms / 1000 if ms < 2**50 else None


class LockFile:
    """One lock file of this process (an index stripe, the usage file): an in-process
    gate in front of a flock on a descriptor kept open.

    Threads of one process queue on the gate, so only one of them at a time is in
    flock (and, with a timeout, polls it). The descriptor stays open for the life of
    the process: opening the file per acquire (as filelock does) costs about 70 us,
    a flock on an open descriptor about 1 us. After fork the child opens its own
    descriptor: flock locks belong to the open file description, which an inherited
    descriptor shares with the parent.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.gate = threading.Lock()
        self.fd = -1

    def _descriptor(self) -> int:
        if self.fd < 0:
            self.fd = _open_lock_file(self.path)
        return self.fd

    @contextlib.contextmanager
    def hold(self, timeout: float | None, clock: Clock = SYSTEM) -> Iterator[int]:
        """The lock held (the descriptor, for a caller that keeps state in the file)."""
        deadline = None if timeout is None else clock.monotonic() + max(timeout, 0.0)
        if not self.gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise TimeoutError(f"timed out waiting for the index lock {self.path}")
        try:
            fd = self._descriptor()
            if deadline is None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # sleeps in the kernel, wakes on release
            else:
                self._poll(fd, deadline, clock)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self.gate.release()

    def _poll(self, fd: int, deadline: float, clock: Clock) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if clock.monotonic() >= deadline:
                    raise TimeoutError(
                        f"timed out waiting for the index lock {self.path}"
                    ) from None
                clock.sleep(_LOCK_POLL)

    def after_fork_in_child(self) -> None:
        # A gate held by another thread at fork time would never be released here.
        self.gate = threading.Lock()
        if self.fd >= 0:
            os.close(self.fd)  # the parent's lock (if held) stays the parent's
            self.fd = -1


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _open_lock_file(path: str) -> int:
    """A descriptor on the lock file ``path``, made 0600 if missing. What is planted in
    its place (a directory, FIFO, socket or symlink) is removed first; a regular file
    is never removed (another process may hold a lock on it)."""
    for _ in range(3):
        try:
            fd = os.open(path, _LOCK_FLAGS, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            make_private_dirs(os.path.dirname(path))
            continue
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ELOOP, errno.ENXIO):
                raise
            clear_non_regular(path)
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)  # a FIFO: opened without blocking, never used as a lock
        clear_non_regular(path)
    raise OSError(errno.EEXIST, "cannot make a lock file in place of what is there", path)


_stripes: dict[str, LockFile] = {}
_stripes_lock = threading.Lock()


def _stripe(path: str) -> LockFile:
    stripe = _stripes.get(path)
    if stripe is None:
        with _stripes_lock:
            stripe = _stripes.setdefault(path, LockFile(path))
    return stripe


def _reset_stripes_in_child() -> None:
    global _stripes_lock
    _stripes_lock = threading.Lock()
    for stripe in _stripes.values():
        stripe.after_fork_in_child()


os.register_at_fork(after_in_child=_reset_stripes_in_child)


class Index:
    """Reads and writes records under ``root``; ``clock`` times the lock waits."""

    def __init__(self, root: str, clock: Clock = SYSTEM) -> None:
        self.root = root
        self._clock = clock
        self.records_dir = os.path.join(root, "index")
        self.locks_dir = os.path.join(root, "locks")

    def record_path(self, key: str) -> str:
        return f"{self.records_dir}/{key[:2]}/{key}.rec"

    def locked(self, key: str, timeout: float | None) -> contextlib.AbstractContextManager[int]:
        """Hold the lock stripe of ``key`` (``TimeoutError`` after ``timeout`` seconds)."""
        return _stripe(f"{self.locks_dir}/{key[:2]}.lock").hold(timeout, self._clock)

    @contextlib.contextmanager
    def cleanup_lock(self) -> Iterator[bool]:
        """Try to become the one process running cleanup; yields False if another is
        (in this process or another)."""
        stripe = _stripe(os.path.join(self.locks_dir, "cleanup.lock"))
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(stripe.hold(0.0, self._clock))
            except TimeoutError:
                yield False
                return
            yield True

    def read(self, key: str) -> Record | None:
        """The record of ``key``, or None if absent or garbage.

        Other errors (out of descriptors, I/O) propagate: taking them for "absent"
        would let a caller replace a live entry and start a second producer.
        """
        text = self.read_text(key)
        return None if text is None else Record.from_text(key, text)

    def write(self, rec: Record) -> None:
        """Publish ``rec`` (lock held; any old record of the key is replaced).

        A record is a symbolic link whose target is its text: one atomic
        ``symlink`` call creates it complete (no temp file, no rename), and one
        ``readlink`` reads it. It is never followed.
        """
        path = self.record_path(rec.key)
        text = rec.to_text()
        try:
            os.symlink(text, path)
        except (FileNotFoundError, NotADirectoryError):
            make_private_dirs(os.path.dirname(path))
            os.symlink(text, path)
        except FileExistsError:
            # Replaced atomically: the producer reads its record without the lock.
            tmp = f"{path}.{os.urandom(4).hex()}.tmp"
            os.symlink(text, tmp)
            try:
                try:
                    os.replace(tmp, path)
                except IsADirectoryError:  # a directory planted at the record's name
                    remove_path(path)
                    os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def read_text(self, key: str) -> str | None:
        """The raw text of ``key``'s record (None if absent or not a record)."""
        try:
            return os.readlink(self.record_path(key))
        except OSError as exc:
            if exc.errno in _ABSENT or exc.errno == errno.EINVAL:
                return None
            raise

    def remove(self, key: str) -> None:
        """Drop the record of ``key``, or whatever is in its place. Lock held."""
        remove_path(self.record_path(key))

    def keys(self) -> Iterator[str]:
        """Every key with a record (valid or not)."""
        for entry in shard_entries(self.records_dir):
            if _is_record_name(entry):
                yield entry.name[:-4]

    def stray_temp_files(self) -> Iterator[str]:
        """Paths of temp records left by a process that died before its rename."""
        for entry in shard_entries(self.records_dir):
            if _is_temp_name(entry):
                yield entry.path

    def garbage(self) -> Iterator[str]:
        """Paths under index/ that are neither records nor temp records: foreign names,
        names in the wrong shard, non-directories where shards go."""
        try:
            items = list(os.scandir(self.records_dir))
        except OSError:
            items = []
        for item in items:
            if not item.is_dir(follow_symlinks=False):
                yield item.path
        for entry in shard_entries(self.records_dir):
            if not (_is_record_name(entry) or _is_temp_name(entry)):
                yield entry.path


def _is_record_name(entry: os.DirEntry[str]) -> bool:
    """``<sha256 hex>.rec`` in the shard of its first two digits."""
    name = entry.name
    return (
        len(name) == 68
        and name.endswith(".rec")
        and is_key_hash(name[:64])
        and os.path.basename(os.path.dirname(entry.path)) == name[:2]
    )


def _is_temp_name(entry: os.DirEntry[str]) -> bool:
    """``<sha256 hex>.rec.<8 hex>.tmp`` (see :meth:`Index.write`)."""
    name = entry.name
    return len(name) == 81 and name.endswith(".tmp") and is_key_hash(name[:64])
