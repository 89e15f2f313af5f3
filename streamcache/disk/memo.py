"""The small-hit memo: the bytes of small finished entries one cache served lately.

A repeated small hit costs one ``lgetxattr`` and no open: the memo keeps each small
entry's bytes with the tag of the file they came from (:meth:`Filestore.entry_tag`),
and serves them again only while the file at the entry's name still carries that tag
and has not expired. A data file's name is never used twice and a finished entry's
bytes and mtime never change (filestore.py), so the tag stands for the bytes whose
trailer was checked when they were read.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from ipc.clock import Clock

    from .filestore import Filestore, Finished

# The bytes of the small entries a memo keeps; the oldest kept go beyond it.
MEMO_BYTES = 1024 * 1024


class SmallHits:
    """Small entries served lately, by key hash: (tag, expiry, bytes), oldest first."""

    def __init__(self, files: Filestore, clock: Clock, limit: int = MEMO_BYTES) -> None:
        self._files = files
        self._clock = clock
        self._limit = limit
        self._seen: dict[str, tuple[bytes, float, bytes]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, h: str) -> bytes | None:
        """The bytes of ``h``'s small finished entry if it was remembered and the file
        at the entry's name is still that one, unexpired: one getxattr, no open."""
        seen = self._seen.get(h)
        if seen is None:
            return None
        tag, expires, data = seen
        if expires > self._clock.wall() and self._files.entry_tag(h) == tag:
            return data
        self.forget(h)  # replaced, removed or expired: the lookup decides
        return None

    def remember(self, h: str, fin: Finished) -> None:
        """Keep the small entry ``fin`` just read, if its file has a tag."""
        if fin.tag is None or fin.data is None:
            return
        with self._lock:
            old = self._seen.pop(h, None)
            if old is not None:
                self._bytes -= len(old[2])
            self._seen[h] = (fin.tag, fin.expires, fin.data)
            self._bytes += len(fin.data)
            while self._bytes > self._limit:
                gone = self._seen.pop(next(iter(self._seen)))
                self._bytes -= len(gone[2])

    def forget(self, h: str) -> None:
        with self._lock:
            old = self._seen.pop(h, None)
            if old is not None:
                self._bytes -= len(old[2])

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it
