"""Filestore: a new data file per entry, never reused, and the directory sweeper.

Files live at ``<root>/<aa>/<name>``: ``name`` is 16 random hex digits plus a
per-process counter, and ``aa`` its first two hex digits (256 shard
directories). Names are never reused because a file may be the output of a
failed create; a random part makes them unique across processes sharing the
directory, the counter within one process.
"""

from __future__ import annotations

import itertools
import os
import secrets
import stat

_counter = itertools.count()

OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_private_dirs(path: str) -> None:
    """``os.makedirs`` with every directory it creates 0700 (makedirs only sets the leaf's)."""
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        make_private_dirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


class Filestore:
    """Creates, opens and sweeps the data files under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, name: str) -> str:
        return os.path.join(self.root, name[:2], name)

    def create(self) -> tuple[str, int]:
        """Create a new empty file (mode 0600); return its name and a write descriptor."""
        name = f"{secrets.token_hex(8)}-{os.getpid():x}-{next(_counter):x}"
        path = self.path(name)
        try:
            fd = os.open(path, OPEN_WRITE, 0o600)
        except FileNotFoundError:
            make_private_dirs(os.path.dirname(path))
            fd = os.open(path, OPEN_WRITE, 0o600)
        return name, fd

    def open(self, name: str) -> int:
        """A read descriptor on an existing file (``FileNotFoundError`` if it is gone)."""
        return os.open(self.path(name), OPEN_READ)

    def remove(self, name: str) -> bool:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            return False
        return True

    def sweep(self, older_than: float, keep: set[str]) -> int:
        """Delete files last modified before ``older_than`` (epoch seconds) unless in ``keep``.

        Directories are kept; one the sweeper cannot enter (a mode-000 shard) is
        repaired to 0700 first. Returns the number of files removed.
        """
        removed = 0
        try:
            shards = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
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
            for entry in files:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.name in keep or st.st_mtime >= older_than:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError:
                    pass
        return removed
