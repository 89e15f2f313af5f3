"""Short, prefixed names for POSIX shared memory and semaphores.

A name is ``/`` + prefix (``sc`` + 6 hex digits of the owner directory's hash)
+ 16 random hex digits (the *base*, shared by one entry's objects) + one kind
letter. That is 26 characters: under macOS's 31-character limit for semaphore
names and the 30 the design allows.

Objects are always created with O_CREX under a fresh random base, so a name
that already exists (planted by someone else, or a collision) is never opened
as ours.
"""

from __future__ import annotations

import os
import stat
import sys

from ipc.digest import sha256
from ipc.tuples import NamedTuple

NAME_MAX = 30
PREFIX_LEN = 8  # "sc" + 6 hex digits
BASE_HEX = 16

_SHM_DIR = "/dev/shm"


def prefix_for(owner_dir: str | os.PathLike[str]) -> str:
    """Return the name prefix of every IPC object belonging to ``owner_dir``."""
    real = os.path.realpath(os.fspath(owner_dir))
    return "sc" + sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:6]


def new_base(prefix: str) -> str:
    """A fresh random base ``prefix + 16 hex`` for one group of objects."""
    return prefix + os.urandom(BASE_HEX // 2).hex()


def object_name(base: str, kind: str) -> str:
    """The POSIX name (leading slash) of ``base``'s object of one ``kind`` letter."""
    if len(kind) != 1:
        raise ValueError("kind must be one letter")
    name = "/" + base + kind
    if len(name) > NAME_MAX:
        raise ValueError(f"IPC name {name!r} is longer than {NAME_MAX} characters")
    return name


class ObjectName(NamedTuple):
    """One IPC object found by :func:`list_objects`."""

    name: str  # POSIX name, with its leading slash
    is_semaphore: bool
    base: str
    kind: str
    mtime: float


def list_objects(prefix: str) -> list[ObjectName]:
    """Enumerate the shared-memory objects and semaphores whose names start with ``prefix``.

    Linux exposes both under /dev/shm (semaphores as ``sem.NAME``). Where there
    is no such directory (macOS) nothing can be enumerated and an empty list is
    returned: cleanup then relies on the records that name their objects.
    Only regular objects of this user are listed: anything else under such a name
    (another user's, a directory, FIFO or symlink) was planted and is left alone.
    """
    if not sys.platform.startswith("linux"):
        return []
    try:
        entries = list(os.scandir(_SHM_DIR))
    except OSError:
        return []
    found: list[ObjectName] = []
    for entry in entries:
        filename = entry.name
        is_sem = filename.startswith("sem.")
        bare = filename[4:] if is_sem else filename
        if not bare.startswith(prefix) or len(bare) != PREFIX_LEN + BASE_HEX + 1:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            continue
        found.append(ObjectName("/" + bare, is_sem, bare[:-1], bare[-1], st.st_mtime))
    return found
