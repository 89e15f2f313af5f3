"""Which file system a cache directory and /dev/shm are on, and whether the cache can
keep its promises there (checked once, when a cache is opened).

One producer per key host-wide rests on three things of one kernel: flock(2) locks
that exclude (the index stripes, the producer's lock on its data file), processes
named by pid (liveness), and shared memory in /dev/shm (progress, doorbells). A
directory on a network or cluster file system is usually shared by several hosts,
and then none of the three holds between them: each host's kernel knows only its own
locks (or, where locks reach a server, the lock may be emulated, dropped across a
server restart, or a no-op), a record's pid names a process of another host, and
its segment is in another host's memory. Readers would wait on producers they cannot
see, or two hosts would produce one key at once (huggingface_hub PR #4306 reports
cache poisoning from exactly that). So such a directory is refused with an error
that names its type, unless the caller passes ``allow_network_fs=True``, and then
one producer per key holds per client host only (logged as a warning).

The type comes from ``/proc/self/mountinfo`` (the mount whose mount point is the
longest prefix of the directory's real path; a later mount on the same point hides
an earlier one). Elsewhere (macOS, BSD) there is no such table and nothing is
refused.
"""

from __future__ import annotations

import errno
import os
import sys

from ipc.tuples import NamedTuple

from ..errors import UnsupportedFilesystem
from ..log import log

MOUNTINFO = "/proc/self/mountinfo"
SHM_DIR = "/dev/shm"

# Refused, and why (each: several hosts see one directory; the rest of the reason
# is the type's own).
NETWORK_FS: dict[str, str] = {
    "nfs": "NFS: flock is emulated with byte-range locks through the server, or "
    "kept local to one client (local_lock=)",
    "nfs4": "NFS: flock is emulated with byte-range locks through the server, or "
    "kept local to one client (local_lock=)",
    "cifs": "SMB/CIFS: flock is local to one client or mapped to mandatory byte-range locks",
    "smb3": "SMB/CIFS: flock is local to one client or mapped to mandatory byte-range locks",
    "smbfs": "SMB/CIFS: flock is local to one client or mapped to mandatory byte-range locks",
    "ncpfs": "NetWare: locks are the server's",
    "afs": "AFS: whole-file locks held by the server, released when a token expires",
    "coda": "Coda: no locks between clients",
    "lustre": "Lustre: flock is a no-op, or local to one client, unless mounted with -o flock",
    "gpfs": "GPFS/Spectrum Scale: a cluster file system, locks and processes of many nodes",
    "ceph": "CephFS: a cluster file system, locks and processes of many nodes",
    "fuse.ceph-fuse": "CephFS: a cluster file system, locks and processes of many nodes",
    "glusterfs": "GlusterFS: a cluster file system, locks and processes of many nodes",
    "fuse.glusterfs": "GlusterFS: a cluster file system, locks and processes of many nodes",
    "beegfs": "BeeGFS: flock is local to one client unless tuneUseGlobalFileLocks is on",
    "gfs2": "GFS2: a cluster file system, locks and processes of many nodes",
    "ocfs2": "OCFS2: a cluster file system, locks and processes of many nodes",
    "orangefs": "OrangeFS: no flock between clients",
    "pvfs2": "OrangeFS: no flock between clients",
    "9p": "9p: a host's directory shared into guests; locks are passed to the host or dropped",
    "virtiofs": "virtiofs: a host's directory shared into guests; locks are local to one guest",
}
# FUSE file systems run in user space and many of them are remote (sshfs, s3fs,
# rclone, gcsfuse, juicefs, ...): refused unless known to be local. These keep a
# local directory or block device, where the kernel's flock works as on any local file
# system.
LOCAL_FUSE = frozenset(
    {
        "fuseblk",  # ntfs-3g, exfat-fuse: a local block device
        "fuse.fuse-overlayfs",  # rootless containers' overlay
        "fuse.bindfs",
        "fuse.gocryptfs",
        "fuse.encfs",
        "fuse.squashfuse",
        "fuse.lxcfs",
    }
)


class Mount(NamedTuple):
    point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash are written as octal."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        c = field[i]
        octal = field[i + 1 : i + 4]
        if c == "\\" and len(octal) == 3 and all(d in "01234567" for d in octal):
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in its order; lines that do not
    parse are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            point, fstype, source = fields[4], fields[sep + 1], fields[sep + 2]
        except (ValueError, IndexError):
            continue
        mounts.append(Mount(_unescape(point), fstype, _unescape(source)))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds the absolute, resolved ``path``."""
    best: Mount | None = None
    for m in mounts:
        point = m.point.rstrip("/")
        if (path == m.point or path.startswith(point + "/")) and (
            best is None or len(point) >= len(best.point.rstrip("/"))
        ):
            best = m
    return best


def refusal(fstype: str) -> str | None:
    """Why a cache directory on ``fstype`` cannot keep one producer per key (None: it
    can)."""
    if fstype in NETWORK_FS:
        return NETWORK_FS[fstype]
    if (fstype == "fuse" or fstype.startswith("fuse.")) and fstype not in LOCAL_FUSE:
        return f"FUSE ({fstype}): not known to be local; many FUSE file systems are remote"
    return None


def _mounts(mountinfo: str) -> list[Mount] | None:
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return None  # not Linux, or no /proc: nothing to check against


def filesystem_of(path: str, mountinfo: str = MOUNTINFO) -> Mount | None:
    """The mount holding ``path`` (None where mounts cannot be read)."""
    mounts = _mounts(mountinfo)
    return None if mounts is None else mount_of(os.path.realpath(path), mounts)


def check_cache_fs(path: str, allow_network_fs: bool, mountinfo: str = MOUNTINFO) -> None:
    """Refuse a cache directory at ``path`` (made or not yet) on a network or cluster
    file system, with UnsupportedFilesystem naming the type and why; with
    ``allow_network_fs``, warn instead."""
    mount = filesystem_of(path, mountinfo)
    why = None if mount is None else refusal(mount.fstype)
    if mount is None or why is None:
        return
    where = f"{path} is on {mount.fstype} ({mount.source} at {mount.point})"
    if allow_network_fs:
        log.warning(
            "streamcache: %s; allow_network_fs=True: one producer per key is not "
            "promised across hosts, only among the processes of each host (%s)",
            where,
            why,
        )
        return
    raise UnsupportedFilesystem(
        errno.EOPNOTSUPP,
        f"{where}, a network or cluster file system: {why}. The cache keeps one producer "
        "per key with flock locks, process ids and shared memory of one host, which "
        "hosts sharing this directory do not share; use a local directory, or pass "
        "allow_network_fs=True to accept one producer per key per host",
        path,
    )


def check_shm(segment_bytes: int, shm_dir: str = SHM_DIR, mountinfo: str = MOUNTINFO) -> None:
    """Refuse a /dev/shm that cannot hold an entry's shared memory (Linux, where POSIX
    shared memory lives there): absent, not writable, or smaller than one segment of
    ``segment_bytes``. One that is not a tmpfs works, on disk: a warning."""
    if not sys.platform.startswith("linux"):
        return  # POSIX shared memory is no file system path there
    if not os.path.isdir(shm_dir):
        raise UnsupportedFilesystem(
            errno.ENOENT,
            f"{shm_dir} does not exist (or is not a directory): the cache keeps each "
            "entry's progress in POSIX shared memory there; mount a tmpfs on it",
            shm_dir,
        )
    if not os.access(shm_dir, os.W_OK | os.X_OK):
        st = os.stat(shm_dir)
        read_only = os.statvfs(shm_dir).f_flag & os.ST_RDONLY
        why = (
            "is mounted read-only"
            if read_only
            else f"is not writable by this process (mode {st.st_mode & 0o7777:o}, owner "
            f"uid {st.st_uid}; this process runs as uid {os.geteuid()})"
        )
        raise UnsupportedFilesystem(
            errno.EACCES,
            f"{shm_dir} {why}: the cache keeps each entry's progress in POSIX shared memory there",
            shm_dir,
        )
    vfs = os.statvfs(shm_dir)
    total = vfs.f_blocks * vfs.f_frsize
    if vfs.f_blocks and total < segment_bytes:
        raise UnsupportedFilesystem(
            errno.ENOSPC,
            f"{shm_dir} holds {total} bytes, less than one entry's shared memory "
            f"({segment_bytes} bytes, for reader_slots): give it more room (docker "
            "--shm-size) or pass fewer reader_slots",
            shm_dir,
        )
    mount = filesystem_of(shm_dir, mountinfo)
    if mount is not None and mount.fstype != "tmpfs":
        log.warning(
            "streamcache: %s is on %s, not a tmpfs: each entry's shared memory is a file "
            "on that file system, written back to it",
            shm_dir,
            mount.fstype,
        )
