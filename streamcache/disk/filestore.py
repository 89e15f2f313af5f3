"""Filestore: the data files of entries in flight, and the files of finished entries.

An entry being written has its own new file at ``data/<aa>/<name>``: ``name`` is 16
random hex digits plus a per-process counter (``aa``: its first two hex digits, 256
shard directories). Names are never reused, because a file may be the output of a
failed create; the random part makes them unique across processes, the counter
within one process.

A finished entry is a file at ``entries/<aa>/<sha256 of key>``, so a hit needs no
index record and no lock: one ``open`` by name. Invariants:

- The producer moves its data file there (``rename``, under the key's index lock)
  only after the last byte and a 16-byte trailer are written: a file at that name
  is complete, and a file whose trailer does not match (truncated by a crash,
  foreign) is never served.
- Its mtime is its expiry time, set before the rename; nothing writes to it after.
  So its info attribute, which names the data file it was (names are never used
  twice), stands for its bytes: a process that read a small entry serves it again
  while one ``getxattr`` of the entry's path gives the same attribute
  (:meth:`Filestore.entry_tag`; no attribute, as on a file system without them:
  every hit reads).
- It is replaced or removed only under the key's index lock; readers that have it
  open keep reading the unlinked inode (Unix semantics).
- A data file is flock'ed (exclusive) by its producer from the moment it is made
  (:meth:`Filestore.create`) until its outcome is published (the producer's
  ``_finalize`` lets go of it last): a reader takes the producer for alive only while
  that lock is held (``ipc.lock_held``), so neither a stale record from before a reboot
  nor a forged one naming some live process makes anyone wait. Taken once per entry,
  never on the write path.
- A data file's name carries the pid of the process producing it. A resumed entry
  (``resume=True``: its producer died, a reader re-runs create) changes producer
  without changing file: its successor takes the flock on a descriptor of its own
  (:meth:`Filestore.take_over`; only possible once the dead producer's descriptors are
  closed) and renames the file to a name with its own pid and the same random part
  (so the same channel), all under the key's index lock, before it rewrites the
  record. Readers keep their descriptors; the inode, and its bytes, are the same.
- Whatever else is found where a file of ours goes (a directory, FIFO, socket or
  symlink, a file under a name that is not ours) is garbage: never served, never
  followed, never waited on (paths are opened with O_NOFOLLOW and O_NONBLOCK and
  checked to be regular files), and removed by whoever next writes there or by
  cleanup (:meth:`Filestore.garbage`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import stat
import struct
from collections.abc import Iterable, Iterator

from ipc.tuples import NamedTuple

_counter = itertools.count()


def random_token() -> str:
    """The random part of a data file's name (and so of its shared-memory names): 16 hex
    digits. A module function, so a test can force a name whose objects it planted."""
    return os.urandom(8).hex()


# Read and write: an inline creator's copy may move to a reader of this very
# descriptor (duplicated), which works even once cleanup has unlinked the file.
OPEN_WRITE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted where a file goes must not block (it changes nothing
# for a regular file); O_NOFOLLOW: a planted symlink fails with ELOOP.
OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# What opening a path for reading says when no file of ours is there: absent, a shard
# that is not a directory, a symlink (ELOOP), a socket (ENXIO), a mode-000 file (EACCES).
NOT_OURS = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO, errno.EACCES}

# A data file's mode while only the entry's bytes are in it, and from just before its
# trailer is appended (see written_so_far).
WRITING_MODE = 0o600
SEALING_MODE = 0o400

# Appended after the entry's bytes: magic, then the entry's size.
TRAILER = struct.Struct("<8sQ")
_MAGIC = b"SCdone\x00\x01"
_TRAILER_SIZE = TRAILER.size
_trailer_at = TRAILER.unpack_from


# What stats shows of an entry beyond its files' metadata: its creation time and,
# if the cache stores one (StreamCache(key_preview=N)), a preview of its key. An
# extended attribute of the data file, so it stays with the entry through its rename
# and goes with the file; never needed to serve the entry. It also names the data file
# (a name never used twice): a process that read a small entry knows by this attribute
# alone, one getxattr of the entry's path, that the same file is still there (its tag;
# see Filestore.entry_tag).
INFO_XATTR = "user.streamcache.info"
_TAGGED = b'"file": "'
MAX_KEY_PREVIEW = 256


class StoredInfo(NamedTuple):
    """What :func:`set_entry_info` stored with a data file."""

    created: float  # epoch seconds
    key_preview: str | None  # the key's first characters, if stored
    key_length: int | None  # the full key's length, if a preview is stored


def set_entry_info(fd: int, name: str, created: float, key: str, preview_chars: int) -> None:
    """Store the data file's ``name``, the creation time (and the first
    ``preview_chars`` characters of ``key`` and its length, if any) with the data file
    ``fd``, as JSON. Best effort: a file system without extended attributes, or a
    platform without ``os.setxattr``, keeps none."""
    setxattr = getattr(os, "setxattr", None)
    if setxattr is None:
        return
    import json  # json, shutil: imported where used, not at start-up

    info: dict[str, object] = {"file": name, "created": round(created, 3)}
    if preview_chars:
        info.update(key=key[:preview_chars], length=len(key))
    try:
        setxattr(fd, INFO_XATTR, json.dumps(info).encode())
    except OSError:
        pass


def entry_info(path: str) -> StoredInfo | None:
    """What :func:`set_entry_info` stored with the file at ``path``; None if nothing,
    or if it is malformed (it is never trusted beyond display)."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return None
    import json

    try:
        value = json.loads(getxattr(path, INFO_XATTR, follow_symlinks=False))
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    created, key, length = value.get("created"), value.get("key"), value.get("length")
    if not isinstance(created, (int, float)) or isinstance(created, bool):
        return None
    if not isinstance(key, str) or not isinstance(length, int) or isinstance(length, bool):
        key, length = None, None
    return StoredInfo(float(created), key, length)


def prepare_dir(path: str) -> str:
    """Create the cache dir 0700 if missing; refuse one that others could tamper with,
    or that this process cannot use (PermissionError naming it)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except PermissionError:
        parent = os.path.dirname(path)
        raise PermissionError(
            errno.EACCES, f"cannot create it: {_denied(parent, 'writable')}", path
        ) from None
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
    check_usable(path, [path])
    return path


# What a cache writes into below its layout root: checked when a cache is opened.
TREE = ("index", "locks", "data", "entries", "counts")
_RWX = os.R_OK | os.W_OK | os.X_OK


def check_usable(cache_dir: str, dirs: Iterable[str], files: Iterable[str] = ()) -> None:
    """PermissionError naming ``cache_dir`` unless this process can list, search and
    write each of ``dirs`` and read and write each of ``files``; OSError(EROFS) on a
    read-only file system. Only what is there and of its kind is checked: garbage
    planted in a path's place (a symlink, a file where a directory goes) is repaired
    where it is met. A cache made earlier and then made read-only fails here, when it
    is opened, not on its first miss."""
    wanted = [(p, _RWX, stat.S_ISDIR) for p in dirs] + [
        (p, os.R_OK | os.W_OK, stat.S_ISREG) for p in files
    ]
    for path, need, is_kind in wanted:
        try:
            if not is_kind(os.lstat(path).st_mode) or os.access(path, need):
                continue
        except FileNotFoundError:
            continue
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            raise OSError(errno.EROFS, f"{path} is on a read-only file system", cache_dir)
        what = "readable, writable and searchable" if need == _RWX else "readable and writable"
        raise PermissionError(errno.EACCES, _denied(path, what), cache_dir)


def _denied(path: str, what: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path} is not {what} by this process (uid {os.geteuid()})"
    return (
        f"{path} is not {what} by this process (mode {stat.S_IMODE(st.st_mode):o}, "
        f"owner uid {st.st_uid}; this process runs as uid {os.geteuid()})"
    )


def make_private_dirs(path: str) -> None:
    """``os.makedirs`` with every directory it creates 0700 (makedirs only sets the leaf's).

    Something other than a directory at the leaf (a file, FIFO or symlink planted where
    a directory of ours goes) is removed and the directory made."""
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        make_private_dirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                return
            os.unlink(path)
        except FileNotFoundError:
            pass
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)


def remove_path(path: str) -> bool:
    """Remove whatever is at ``path``: a file, FIFO or symlink, or a directory tree planted
    where a file of ours goes (symlinks inside are removed, never followed). Returns
    whether something was there. Errors other than "absent" propagate."""
    try:
        os.unlink(path)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        if exc.errno not in (errno.EISDIR, errno.EPERM):
            raise
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            return False
        if not is_dir:
            raise
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)  # a planted mode-000 directory can be emptied then
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    return True


def clear_non_regular(path: str) -> None:
    """Remove what is at ``path`` unless it is a regular file (or nothing)."""
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    remove_path(path)


def is_key_hash(name: str) -> bool:
    """Whether ``name`` is a key's sha256 in lower-case hex (the name of an entry)."""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _take_lock(fd: int, tries: int) -> bool:
    """The exclusive flock of ``fd``, tried ``tries`` times a millisecond apart."""
    import time

    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.001)
        except OSError:
            return True  # a file system without flock: as Filestore.create
    return False


def producer_pid(name: str) -> int | None:
    """The pid of the process that created the data file ``name`` (None: not one of
    ours)."""
    parts = name.split("-")
    if len(parts) != 3 or "/" in name:
        return None
    try:
        return int(parts[1], 16)
    except ValueError:
        return None


class Finished(NamedTuple):
    """A finished entry: open (``fd``), or, if small, already read (``data``)."""

    fd: int  # -1 when ``data`` holds the bytes (the file is closed then)
    size: int  # the entry's bytes (the file's size less the trailer)
    expires: float  # epoch seconds (the file's mtime)
    data: bytes | None = None
    tag: bytes | None = None  # with ``data``, if asked for: see Filestore.entry_tag


class Filestore:
    """Creates, opens, publishes and sweeps the files under ``root``."""

    def __init__(self, root: str) -> None:
        self.data_dir = os.path.join(root, "data")
        self.entries_dir = os.path.join(root, "entries")

    # -- entries in flight -------------------------------------------------------------

    def path(self, name: str) -> str:
        return f"{self.data_dir}/{name[:2]}/{name}"

    def create(self) -> tuple[str, int]:
        """Create a new empty data file (mode 0600), locked (see the module's
        invariants); return its name and a descriptor."""
        name = f"{random_token()}-{os.getpid():x}-{next(_counter):x}"
        path = self.path(name)
        try:
            fd = os.open(path, OPEN_WRITE, WRITING_MODE)
        except FileNotFoundError:  # (ENOTDIR reaches the caller, as in Gitaly)
            make_private_dirs(os.path.dirname(path))
            fd = os.open(path, OPEN_WRITE, WRITING_MODE)
        try:
            # A new file (O_EXCL) nobody else has a name for yet: never contended. A file
            # system that refuses flock leaves it unlocked; its readers' probe then
            # answers "held" too, and the pid's check stands alone.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass
        return name, fd

    def open(self, name: str) -> int:
        """A read descriptor on a data file (``FileNotFoundError`` if it is gone, or if
        what is there is not a regular file: a record may name anything)."""
        path = self.path(name)
        try:
            fd = os.open(path, OPEN_READ)
        except OSError as exc:
            if exc.errno in NOT_OURS:
                raise FileNotFoundError(errno.ENOENT, "no data file", path) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "not a data file", path)
        return fd

    def remove(self, name: str) -> bool:
        return remove_path(self.path(name))

    def take_over(self, name: str, same_as: int, tries: int) -> tuple[str, int, int] | None:
        """Become the producer of the data file ``name`` (an entry being resumed; the
        key's lock held): a write descriptor on it, positioned at its end and holding
        its flock, the file renamed to a name of this process with the same random
        part, and how many bytes were cut from its end. None if the file is not the one
        open as ``same_as`` any more. BlockingIOError if its lock stays taken for
        ``tries`` attempts: readers' probes (``ipc.lock_held``) hold a shared lock for
        two syscalls, which a loaded machine may stretch; or a descriptor of the dead
        producer survives elsewhere (a child it forked).

        A file its producer was sealing (killed after the entry's last byte, before it
        was published: :data:`SEALING_MODE`, perhaps with the trailer) is taken over
        too: its mode is set back to writing, then its trailer cut off (the mode must
        allow the write descriptor first). Between the two a reader may take trailer
        bytes for data (see :func:`written_so_far`), so the bytes cut are returned: the
        caller rewinds the entry to the new end, and such a reader fails instead of
        delivering them."""
        path = self.path(name)
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except OSError:
            return None
        wfd = -1
        try:
            if not _same_file(fd, same_as):
                return None
            if not _take_lock(fd, tries):
                raise BlockingIOError(errno.EAGAIN, "the data file's lock is taken", path)
            size = end = os.fstat(fd).st_size
            if not os.fstat(fd).st_mode & stat.S_IWUSR:  # SEALING_MODE: it died sealing
                sealed = _sealed_size(fd, size)  # None: no trailer yet (16 bytes, one write)
                end = size if sealed is None else sealed
                os.fchmod(fd, WRITING_MODE)
            wfd = os.open(path, os.O_RDWR | flags)
            os.ftruncate(wfd, end)  # under fd's lock: nobody else takes over meanwhile
            os.close(fd)  # lets go of its lock, for wfd to take
            fd = -1
            if not _take_lock(wfd, tries):
                raise BlockingIOError(errno.EAGAIN, "the data file's lock is taken", path)
            new = f"{name.split('-')[0]}-{os.getpid():x}-{next(_counter):x}"
            os.rename(path, self.path(new))  # same shard: the same first two digits
            os.lseek(wfd, 0, os.SEEK_END)
        except BaseException:
            if wfd >= 0:
                os.close(wfd)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        return new, wfd, size - end

    # -- finished entries --------------------------------------------------------------

    def entry_path(self, key: str) -> str:
        return f"{self.entries_dir}/{key[:2]}/{key}"

    def seal(self, fd: int, size: int, expires: float) -> None:
        """Append the trailer and set the expiry (the writer's last act on the file).
        The mode changes first: see :func:`written_so_far`."""
        os.fchmod(fd, SEALING_MODE)
        trailer = TRAILER.pack(_MAGIC, size)
        done = 0
        while done < len(trailer):
            done += os.write(fd, trailer[done:])
        ns = int(expires * 1e9)
        os.utime(fd, ns=(ns, ns))

    def publish(self, name: str, key: str) -> None:
        """Make the sealed data file ``name`` the finished entry of ``key`` (lock held).
        A directory planted at the entry's name, or a shard that is not a directory,
        is removed first."""
        src, dst = self.path(name), self.entry_path(key)
        for _ in range(2):
            try:
                os.replace(src, dst)
                return
            except IsADirectoryError:
                remove_path(dst)
            except (FileNotFoundError, NotADirectoryError):
                if not os.path.lexists(src):
                    raise
                make_private_dirs(os.path.dirname(dst))
        os.replace(src, dst)

    def open_entry(self, key: str, read_up_to: int = -1, tagged: bool = False) -> Finished | None:
        """The finished entry of ``key``, or None if there is none or it is not intact.

        An entry of at most ``read_up_to`` bytes comes back read, in the same
        ``pread`` that checks its trailer, and, ``tagged``, with its tag (if it has
        one). Expiry is the caller's to check. Errors other than "absent" propagate.
        """
        try:
            fd = os.open(f"{self.entries_dir}/{key[:2]}/{key}", OPEN_READ)
        except OSError as exc:
            if exc.errno in NOT_OURS:  # ELOOP: a symlink planted in its place
                return None
            raise
        try:
            st = os.fstat(fd)
            total = st.st_size
            size = total - _TRAILER_SIZE
            if size < 0 or not stat.S_ISREG(st.st_mode):
                return None
            if size <= read_up_to:
                data = os.pread(fd, total, 0)
                if len(data) == total and _trailer_at(data, size) == (_MAGIC, size):
                    tag = _tag(fd) if tagged else None
                    return Finished(-1, size, st.st_mtime_ns / 1e9, data[:size], tag)
            elif _intact(os.pread(fd, _TRAILER_SIZE, size), 0, size):
                fd, keep = -1, fd  # handed over: not closed below
                return Finished(keep, size, st.st_mtime_ns / 1e9)
            return None
        finally:
            if fd >= 0:
                os.close(fd)

    def entry_tag(self, key: str) -> bytes | None:
        """The tag of the file at the entry's name: the extended attribute that names
        the data file it was, so the same tag means the same file, whose bytes and
        mtime never change once it is there (one ``lgetxattr``; a symlink's is never
        read). None if there is none, or nothing there."""
        try:
            return os.getxattr(
                f"{self.entries_dir}/{key[:2]}/{key}", INFO_XATTR, follow_symlinks=False
            )
        except (OSError, AttributeError):  # AttributeError: no os.getxattr (macOS)
            return None

    def entry_identity(self, key: str) -> tuple[int, int] | None:
        """(device, inode) of the file at the entry's name, or None."""
        try:
            st = os.lstat(self.entry_path(key))
        except OSError as exc:
            if exc.errno in NOT_OURS:
                return None
            raise
        return st.st_dev, st.st_ino

    def remove_entry(self, key: str) -> bool:
        """Remove the finished entry of ``key``, or whatever is in its place (lock held)."""
        return remove_path(self.entry_path(key))

    def entries(self) -> Iterator[tuple[str, os.stat_result]]:
        """(key, lstat) of every file under entries/, foreign names included."""
        for entry in shard_entries(self.entries_dir):
            try:
                yield entry.name, entry.stat(follow_symlinks=False)
            except OSError:
                continue

    def garbage(self) -> Iterator[str]:
        """Paths under entries/ that hold no entry of ours, whatever their age: foreign
        names, names in the wrong shard, and anything but a regular file (a directory,
        FIFO, socket or symlink). Unintact files under a key's name are the lookup's
        and the expiry pass's to remove (under the key's lock)."""
        yield from _foreign(self.entries_dir)
        for entry in shard_entries(self.entries_dir):
            name = entry.name
            try:
                regular = stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode)
            except OSError:
                continue
            if not (regular and is_key_hash(name) and _in_own_shard(entry)):
                yield entry.path

    # -- the sweeper -------------------------------------------------------------------

    def sweep(self, older_than: float, keep: set[str]) -> int:
        """Delete data files last modified before ``older_than`` (epoch seconds) unless in
        ``keep`` or locked by their producer: a new entry's file exists, locked, before
        its record does, and a producer descheduled in between for longer than max_age
        would lose its file. Returns the number of files removed."""
        removed = 0
        for entry in shard_entries(self.data_dir):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.name in keep or st.st_mtime >= older_than or stat.S_ISDIR(st.st_mode):
                continue  # directories are kept, as Gitaly's cleanWalk keeps them
            if stat.S_ISREG(st.st_mode) and _being_written(entry.path):
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
        for path in _foreign(self.data_dir):
            with contextlib.suppress(OSError):
                removed += remove_path(path)
        return removed


def _being_written(path: str) -> bool:
    """Whether the data file at ``path`` is locked by its producer (an exclusive flock;
    where flock cannot be probed: no)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # (releases the probe's shared lock)
    return False


def _tag(fd: int) -> bytes | None:
    """The tag of the data file ``fd`` (see :meth:`Filestore.entry_tag`): None if it
    has no info attribute, or one written before it named the file."""
    try:
        info = os.getxattr(fd, INFO_XATTR)
    except (OSError, AttributeError):
        return None
    return info if _TAGGED in info else None


def written_so_far(fd: int) -> int:
    """How many of an entry's bytes the data file ``fd`` surely holds, for a reader that
    looks past the offset the producer published (an inline producer publishes only
    once it has found the entry's channel).

    While the file is in :data:`WRITING_MODE` it holds nothing but the entry's bytes.
    The producer switches it to :data:`SEALING_MODE` before it appends the trailer, so
    once the mode has changed only an intact trailer tells the size; a torn one (a
    crash, a full disk) tells nothing and 0 is returned: the caller then trusts only
    what the producer publishes. No trailer byte is ever taken for data.
    """
    st = os.fstat(fd)
    if st.st_mode & stat.S_IWUSR:  # WRITING_MODE (a umask may have taken the bit: safe)
        return st.st_size
    return _sealed_size(fd, st.st_size) or 0


def sealed_size(fd: int) -> int | None:
    """The entry's size if the data file ``fd`` was sealed whole (its mode "sealing",
    its trailer intact): every byte of a create that returned is in it."""
    st = os.fstat(fd)
    if st.st_mode & stat.S_IWUSR:
        return None
    return _sealed_size(fd, st.st_size)


def _sealed_size(fd: int, file_size: int) -> int | None:
    """The entry's size, if the data file ``fd`` (``file_size`` bytes) ends with its
    intact trailer."""
    at = file_size - TRAILER.size
    if at >= 0 and _intact(os.pread(fd, TRAILER.size, at), 0, at):
        return at
    return None


def _same_file(fd: int, other: int) -> bool:
    """Whether descriptor ``fd`` is of a regular file, the one open as ``other``."""
    st, mine = os.fstat(fd), os.fstat(other)
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def trailer_size(tail: bytes) -> int | None:
    """The entry size that the trailer ``tail`` records, or None if ``tail`` is not a
    trailer of this layout (another length, another magic: garbage, never trusted)."""
    if len(tail) != TRAILER.size:
        return None
    magic, recorded = TRAILER.unpack(tail)
    return int(recorded) if magic == _MAGIC else None


def _intact(buf: bytes, at: int, size: int) -> bool:
    """Whether ``buf`` holds, at ``at``, the trailer of an entry of ``size`` bytes."""
    return len(buf) == at + TRAILER.size and trailer_size(buf[at:]) == size


def _in_own_shard(entry: os.DirEntry[str]) -> bool:
    return os.path.basename(os.path.dirname(entry.path)) == entry.name[:2]


def _foreign(root: str) -> Iterator[str]:
    """Paths directly in ``root`` that are not shard directories (files, FIFOs, symlinks
    planted there): garbage."""
    try:
        items = list(os.scandir(root))
    except OSError:
        return
    for item in items:
        if not item.is_dir(follow_symlinks=False):
            yield item.path


def shard_entries(root: str) -> Iterator[os.DirEntry[str]]:
    """Each entry of each shard directory (``root/<aa>/``) of ``root``.

    A shard the sweeper cannot enter (a mode-000 shard) is repaired to 0700 first.
    """
    try:
        shards = list(os.scandir(root))
    except FileNotFoundError:
        return
    for shard in shards:
        if not shard.is_dir(follow_symlinks=False):
            continue
        try:
            mode = shard.stat(follow_symlinks=False).st_mode
            if stat.S_IMODE(mode) != 0o700:
                os.chmod(shard.path, 0o700)
            files = list(os.scandir(shard.path))
        except OSError:
            continue
        yield from files
