"""Small helpers shared by test modules: bounded waits and a child-process conversation."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import ipc
import streamcache
from ipc.channel import SEGMENT
from ipc.naming import object_name
from streamcache import Writer
from streamcache.cache import LAYOUT, channel_base, key_hash
from streamcache.disk.filestore import Filestore
from streamcache.disk.index import Record

WAIT = 20.0  # bound for every wait in the tests that use these helpers
# Seconds beyond ``liveness`` a death may take to be noticed: scheduling on a busy machine
# (0.86 s was seen at load 30 where 0.5 s was allowed). The defects the notice bounds
# catch are far beyond it: a death never noticed, or noticed only at a total timeout (WAIT).
NOTICE_MARGIN = 5.0


class FakeMonotonic:
    """A monotonic clock (for ``ipc.Clock(monotonic=...)``) that moves only when the test
    moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def writing(*chunks: bytes) -> Callable[[Writer], None]:
    """A create that writes ``chunks`` (``lambda w: w.write(data)`` would return the
    count, which fails the entry)."""

    def create(w: Writer) -> None:
        for chunk in chunks:
            w.write(chunk)

    return create


def wait_until(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``pred`` every millisecond until it holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.001)


def recv(conn: Connection, timeout: float = WAIT) -> Any:
    if not conn.poll(timeout):
        raise AssertionError("child process did not answer in time")
    return conn.recv()


def ask(conn: Connection, *cmd: Any) -> Any:
    """Send a command to a child and return its reply (AssertionError if it failed)."""
    conn.send(cmd)
    reply = recv(conn)
    if reply[0] == "error":
        raise AssertionError(f"child failed: {reply[1]}")
    return reply


def join_ok(proc: Any) -> None:
    proc.join(WAIT)
    assert proc.exitcode == 0, f"child {proc.pid} exit code {proc.exitcode}"


def is_dead(pid: int, start: float) -> bool:
    return not ipc.is_alive(pid, start)


def data_files(cache_dir: Path) -> list[Path]:
    """Every file holding an entry's bytes: in flight (``<dir>/v2/data/<aa>/<name>``)
    and finished (``<dir>/v2/entries/<aa>/<sha256 of key>``)."""
    root = cache_dir / LAYOUT
    return sorted(p for sub in ("data", "entries") for p in root.glob(f"{sub}/*/*") if p.is_file())


def finished_entries(cache_dir: Path) -> list[Path]:
    """The finished entries: ``<dir>/v2/entries/<aa>/<sha256 of key>``."""
    return sorted(p for p in (cache_dir / LAYOUT).glob("entries/*/*") if p.is_file())


def index_records(cache_dir: Path) -> list[Path]:
    """The records of entries in flight: ``<dir>/v2/index/<aa>/<sha256 of key>.rec``."""
    return sorted((cache_dir / LAYOUT).glob("index/*/*.rec"))


def finished_size(cache_dir: Path, key: str) -> int | None:
    """The size of the finished, intact entry of ``key`` (expired or not), or None."""
    fin = Filestore(str(cache_dir / LAYOUT)).open_entry(key_hash(key))
    if fin is None:
        return None
    os.close(fin.fd)
    return fin.size


class FailingDst:
    """Takes ``ok`` writes, then raises ConnectionResetError (a client that went away)."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.got = bytearray()

    def write(self, b: bytes) -> int:
        if self.ok == 0:
            raise ConnectionResetError("client went away")
        self.ok -= 1
        self.got += b
        return len(b)


def open_segment(cache_dir: str | os.PathLike[str], rec: Record) -> ipc.Segment:
    """The shared-memory segment of the entry in flight that ``rec`` records."""
    base = channel_base(ipc.prefix_for(cache_dir), rec.file)
    return ipc.Segment.open(object_name(base, SEGMENT))


def ipc_objects(cache_dir: Path) -> list[str]:
    return [o.name for o in ipc.list_objects(ipc.prefix_for(cache_dir))]


def settle(cache_dir: Path, timeout: float = 10.0) -> list[str]:
    """Run cleanup passes until nothing of ``cache_dir`` is left in /dev/shm, or until
    ``timeout``: a pass removes what dead processes left at once, and objects of live
    producers go when they finish. Returns what is still left."""
    deadline = time.monotonic() + timeout
    while cache_dir.exists():
        streamcache.StreamCache(cache_dir, cleanup_interval=0).gc()
        if not ipc_objects(cache_dir) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return ipc_objects(cache_dir)
