"""The on-disk index: one record per key, guarded by striped file locks.

Layout under ``<root>``::

    index/<aa>/<sha256 of key>.json   one record per key (written temp-then-rename)
    locks/<aa>.lock                   256 lock stripes, chosen by the key hash
    locks/cleanup.lock                held by the one process running cleanup

Invariants:

- A record is only created, replaced or removed while its stripe's lock is held,
  so the lookup, create and reader registration of one key form one critical
  section host-wide and a key has at most one producer. A finished record may be
  read without the lock: it is immutable, and replaced atomically by rename.
- The locks are flock(2) locks, which the kernel releases when the holder dies,
  so a process killed inside a critical section never blocks anyone.
- Lock files are never deleted: a deleted lock file would let two processes lock
  different inodes of one path.
- Records are plain JSON (never pickle). A record that does not parse, or has
  another version, is garbage: ignored, and removed under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import filelock

from .filestore import make_private_dirs

RECORD_VERSION = 1
WRITING = "writing"
DONE = "done"
_LOCK_POLL = 0.001
_ABSENT = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}


@dataclass(frozen=True)
class Record:
    """What the index knows of one key's entry."""

    key: str  # sha256 of the cache key, hex
    file: str  # data file name in the filestore
    ipc: str  # base name of the entry's segment and doorbells ("" once finished)
    pid: int  # producer process
    start: float  # producer start time
    created: float  # epoch seconds
    expires: float  # created + the creating cache's max_age
    state: str  # WRITING or DONE
    size: int  # final size once DONE, else 0

    def to_json(self) -> bytes:
        return json.dumps({"v": RECORD_VERSION, **asdict(self)}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Record | None:
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict) or obj.pop("v", None) != RECORD_VERSION:
                return None
            rec = cls(**obj)
        except (ValueError, TypeError):
            return None
        types_ok = (
            isinstance(rec.key, str)
            and isinstance(rec.file, str)
            and isinstance(rec.ipc, str)
            and isinstance(rec.pid, int)
            and isinstance(rec.start, (int, float))
            and isinstance(rec.created, (int, float))
            and isinstance(rec.expires, (int, float))
            and rec.state in (WRITING, DONE)
            and isinstance(rec.size, int)
            and "/" not in rec.file
            and rec.file not in ("", ".", "..")
        )
        return rec if types_ok else None


_gates: dict[str, threading.Lock] = {}
_gates_lock = threading.Lock()


def _thread_gate(path: str) -> threading.Lock:
    """The in-process lock in front of the file lock at ``path`` (one per path)."""
    gate = _gates.get(path)
    if gate is None:
        with _gates_lock:
            gate = _gates.setdefault(path, threading.Lock())
    return gate


def _reset_gates_in_child() -> None:
    # A gate held by another thread at fork time would never be released in the child.
    global _gates_lock
    _gates_lock = threading.Lock()
    for path in list(_gates):
        _gates[path] = threading.Lock()


os.register_at_fork(after_in_child=_reset_gates_in_child)


class Index:
    """Reads and writes records under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.records_dir = os.path.join(root, "index")
        self.locks_dir = os.path.join(root, "locks")

    def record_path(self, key: str) -> str:
        return os.path.join(self.records_dir, key[:2], key + ".json")

    @contextlib.contextmanager
    def locked(self, key: str, timeout: float | None) -> Iterator[None]:
        """Hold the lock stripe of ``key`` (``TimeoutError`` after ``timeout`` seconds)."""
        with self._lock(os.path.join(self.locks_dir, key[:2] + ".lock"), timeout):
            yield

    @contextlib.contextmanager
    def cleanup_lock(self) -> Iterator[bool]:
        """Try to become the one process running cleanup; yields False if another is."""
        try:
            with self._lock(os.path.join(self.locks_dir, "cleanup.lock"), 0):
                yield True
        except TimeoutError:
            yield False

    @contextlib.contextmanager
    def _lock(self, path: str, timeout: float | None) -> Iterator[None]:
        # Threads of one process queue on an in-process lock first, so only one of
        # them at a time polls the file lock (filelock retries a non-blocking flock
        # every _LOCK_POLL seconds; hundreds of polling threads would starve the
        # holder of CPU).
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        gate = _thread_gate(path)
        if not gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise TimeoutError(f"timed out waiting for the index lock {path}")
        try:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            # A new lock object per use: nothing is shared between threads or
            # inherited across fork.
            lock = filelock.UnixFileLock(
                path,
                timeout=-1 if left is None else left,
                mode=0o600,
                thread_local=False,
                poll_interval=_LOCK_POLL,
                preserve_lock_file=True,
            )
            if not os.path.isdir(self.locks_dir):
                make_private_dirs(self.locks_dir)  # filelock would use the umask's mode
            try:
                lock.acquire()
            except filelock.Timeout as exc:
                raise TimeoutError(f"timed out waiting for the index lock {path}") from exc
            try:
                yield
            finally:
                lock.release()
        finally:
            gate.release()

    def read(self, key: str) -> Record | None:
        """The record of ``key``, or None if absent or garbage.

        Other errors (out of descriptors, I/O) propagate: taking them for "absent"
        would let a caller replace a live entry and start a second producer.
        """
        try:
            fd = os.open(self.record_path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in _ABSENT:  # ELOOP: a symlink planted in its place
                return None
            raise
        try:
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
        rec = Record.from_json(data)
        if rec is not None and rec.key != key:
            return None
        return rec

    def exists(self, key: str) -> bool:
        return os.path.lexists(self.record_path(key))

    def write(self, rec: Record) -> None:
        """Publish ``rec`` atomically (write a temp file, then rename over). Lock held."""
        path = self.record_path(rec.key)
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:
            make_private_dirs(os.path.dirname(path))
            fd = os.open(tmp, flags, 0o600)
        try:
            os.write(fd, rec.to_json())
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, key: str) -> None:
        """Drop the record of ``key``. Lock held."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path(key))

    def keys(self) -> Iterator[str]:
        """Every key with a record file (valid or not), and stray temp files' owners."""
        try:
            shards = list(os.scandir(self.records_dir))
        except FileNotFoundError:
            return
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            try:
                names = os.listdir(shard.path)
            except OSError:
                continue
            for name in names:
                if name.endswith(".json") and len(name) == 69:
                    yield name[:-5]

    def stray_temp_files(self) -> Iterator[str]:
        """Paths of temp files left by a writer that died before its rename."""
        try:
            shards = list(os.scandir(self.records_dir))
        except FileNotFoundError:
            return
        for shard in shards:
            if shard.is_dir(follow_symlinks=False):
                try:
                    for name in os.listdir(shard.path):
                        if name.endswith(".tmp"):
                            yield os.path.join(shard.path, name)
                except OSError:
                    continue
