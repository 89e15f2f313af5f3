"""A read-only look at a cache directory, for ``streamcache stats``: the entries in
flight as their records, data files and shared-memory segments show them. It takes
no lock, changes nothing and creates nothing (no shard is repaired, no bell opened)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import ipc
from ipc.channel import open_segment
from ipc.tuples import NamedTuple

from .filestore import OPEN_READ, Filestore, written_so_far
from .index import Index, Record
from .store import channel_base


class Reader(NamedTuple):
    """One reader's slot in an entry's segment."""

    slot: int
    pid: int
    alive: bool
    position: int
    waiting: bool


class InFlight(NamedTuple):
    """An entry in flight: its record (None for one that does not parse; then every
    other field is empty) and what its data file and segment say."""

    key_hash: str
    record: Record | None
    path: str | None  # its data file
    producer_alive: bool
    disk_bytes: int
    written: int  # bytes produced: the file's, or the segment's offset if further
    size: int | None  # announced by create (w.set_size), if it did
    state: int  # the segment's ipc.STATE_*; STATE_WRITING with no segment
    error: str | None  # the segment's failure, when failed
    readers: list[Reader]
    modified: float | None = None  # the data file's last write (epoch seconds, mtime)


def shard_files(root: str) -> Iterator[os.DirEntry[str]]:
    """The files of each shard of ``root`` (read-only: no shard is repaired)."""
    try:
        shards = list(os.scandir(root))
    except OSError:
        return
    for shard in shards:
        if not shard.is_dir(follow_symlinks=False):
            continue
        try:
            yield from list(os.scandir(shard.path))
        except OSError:
            continue


def in_flight(root: str, prefix: str) -> Iterator[InFlight]:
    """Every entry in flight under the layout root ``root``, whose IPC objects are
    named with ``prefix``."""
    index = Index(root)
    files = Filestore(root)
    for entry in shard_files(index.records_dir):
        if not entry.name.endswith(".rec"):
            continue
        h = entry.name[:-4]
        text = index.read_text(h) if len(h) == 64 else None
        rec = None if text is None else Record.from_text(h, text)
        if rec is None:
            yield InFlight(h, None, None, False, 0, 0, None, ipc.STATE_WRITING, None, [])
            continue
        path = files.path(rec.file)
        alive = rec.boot == ipc.BOOT and ipc.is_alive(rec.pid, rec.start)
        disk_bytes = written = 0
        modified = None
        try:
            fd = os.open(path, OPEN_READ)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                disk_bytes, modified = st.st_size, st.st_mtime
                written = written_so_far(fd)
                alive = alive and ipc.lock_held(fd)  # see filestore.py
            finally:
                os.close(fd)
        size = error = None
        state = ipc.STATE_WRITING
        readers: list[Reader] = []
        try:
            seg = open_segment(channel_base(prefix, rec.file))
        except ipc.SegmentError:
            pass  # no reader attached yet (an inline creator's entry), or gone
        else:
            try:
                offset, state = seg.progress()
                written = max(written, offset)
                size = seg.announced_size
                if state == ipc.STATE_FAILED:
                    error = seg.error
                readers = [
                    Reader(
                        r.slot,
                        r.reader.pid,
                        ipc.is_alive(r.reader.pid, r.reader.start),
                        r.position,
                        r.waiting,
                    )
                    for r in seg.reader_list()
                ]
            finally:
                seg.close()
        yield InFlight(
            h, rec, path, alive, disk_bytes, written, size, state, error, readers, modified
        )
