"""Eviction: the cleanup pass and the loop that runs it, as Gitaly keeps ``clean()``
and ``cleanWalk`` together.

A pass (:func:`collect`, run by ``StreamCache.gc`` under the directory's cleanup lock,
so across all processes sharing a directory one runs it at a time):

1. records: evict those past their recorded expiry, discard those whose producer died
   (unless readers that may resume it still wait: ``Store.awaits_resume``) and garbage
   that does not parse;
2. finished entries: remove those past their expiry (the file's mtime); and garbage
   (foreign names, directories, FIFOs, symlinks) under entries/ and index/, whatever
   its age;
3. the sweep: temp records and data files that no live record owns and that are older
   than max_age, and channels (segments and bells in /dev/shm) that no live entry owns;
4. the disk usage total is set to what the directory holds (see usage.py).

The :class:`Cleaner` runs a pass every ``interval`` seconds in a daemon thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

import ipc
from ipc.channel import SEGMENT, unlink_channel
from ipc.clock import Clock
from ipc.naming import list_objects
from ipc.segment import SegmentError

from ..log import log
from .filestore import is_key_hash, remove_path
from .store import Store

# Seconds a segment without its header yet (its creator may be between shm_open and
# the header's magic), bells without a segment (a set being made) or a temp record
# are left alone by cleanup.
ORPHAN_GRACE = 5.0


class GCReport:
    """What one cleanup pass did (``ran``: False if another pass was running)."""

    def __init__(self, ran: bool = True) -> None:
        self.ran = ran
        self.expired = 0
        self.discarded = 0
        self.files_removed = 0
        self.ipc_removed = 0
        self.entries = 0  # left after the pass: finished and in flight
        self.disk_bytes = 0  # of their files

    def __repr__(self) -> str:
        return f"GCReport({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GCReport) and vars(self) == vars(other)


def collect(store: Store, clock: Clock, max_age: float) -> GCReport:
    """One cleanup pass (the caller holds the cleanup lock)."""
    report = GCReport()
    now = clock.wall()
    index, files = store.index, store.files
    live_files: set[str] = set()
    for h in list(index.keys()):
        rec = index.read(h)
        if rec is not None and rec.expires > now and store.producer_alive(rec):
            live_files.add(rec.file)
            continue
        with index.locked(h, None):
            rec = index.read(h)
            if rec is None:
                index.remove(h)
                report.discarded += 1
            elif rec.expires <= now:
                store.evict(rec)
                report.expired += 1
            elif not store.producer_alive(rec) and not store.awaits_resume(rec):
                # Its channel goes with it, so the sweep below never sees it: count here.
                report.ipc_removed += store.discard(rec)
                report.discarded += 1
            else:
                live_files.add(rec.file)
    for path in [*files.garbage(), *index.garbage()]:
        with contextlib.suppress(OSError):
            remove_path(path)  # never served; under a name no lock guards
    for h, st in list(files.entries()):
        if not is_key_hash(h):
            continue  # garbage: removed above
        if st.st_mtime_ns / 1e9 > now:
            report.entries += 1
            report.disk_bytes += st.st_size
            continue
        with index.locked(h, None):
            # Re-checked under the lock: a new entry may have replaced it.
            fin = files.open_entry(h)
            if fin is not None:
                os.close(fin.fd)
            if fin is None or fin.expires <= now:
                if store.expire_finished(h):
                    report.expired += 1
            else:
                report.entries += 1
                report.disk_bytes += st.st_size
    for path in index.stray_temp_files():
        with contextlib.suppress(OSError):
            if os.lstat(path).st_mtime < now - ORPHAN_GRACE:
                remove_path(path)
    report.files_removed = files.sweep(now - max_age, live_files)
    for name in live_files:
        with contextlib.suppress(OSError):
            report.disk_bytes += os.stat(files.path(name)).st_size
            report.entries += 1
    live_channels = {store.channel_base(f) for f in live_files}
    report.ipc_removed += sweep_channels(store.prefix, live_channels, now)
    store.usage.repair()
    return report


def sweep_channels(prefix: str, live: set[str], now: float) -> int:
    """Unlink channels under ``prefix`` that no live entry owns (dead producers,
    finished entries); returns how many objects went."""
    by_base: dict[str, list[ipc.ObjectName]] = {}
    for obj in list_objects(prefix):
        by_base.setdefault(obj.base, []).append(obj)
    removed = 0
    for base, objs in by_base.items():
        if base in live:
            continue
        seg_obj = next((o for o in objs if not o.is_semaphore and o.kind == SEGMENT), None)
        if seg_obj is None and any(o.mtime > now - ORPHAN_GRACE for o in objs):
            continue  # bells of a set being made right now (or unmade)
        if seg_obj is not None:
            try:
                seg = ipc.Segment.open(seg_obj.name)
            except SegmentError:
                if seg_obj.mtime > now - ORPHAN_GRACE:
                    continue  # possibly being created right now
            else:
                state, alive = seg.state, seg.producer_alive()
                # Its producer dead, left to live readers that may resume it (see
                # Store.awaits_resume): an entry made after this pass listed the keys
                # is not in ``live``, and its readers' takeover needs these names.
                left = seg.resumable and not seg.stalled and seg.has_live_reader()
                seg.close()
                if state == ipc.STATE_WRITING and (alive or left):
                    continue  # in flight (perhaps expired): its producer unlinks it
        removed += unlink_channel(base)
    return removed


class Cleaner:
    """Runs ``run_pass`` every ``interval`` seconds in a daemon thread. Starts lazily (on
    first use, so nothing runs in a process that only forks), stops on :meth:`stop`,
    and is forgotten in a forked child until used again."""

    def __init__(self, run_pass: Callable[[], object], interval: float) -> None:
        self._run_pass = run_pass
        self.interval = interval
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        if self._thread is not None or self._stopped or self.interval <= 0:
            return
        with self._lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._loop, args=(self._wake,), name="streamcache-cleanup", daemon=True
                )
                self._thread.start()

    def _loop(self, wake: threading.Event) -> None:
        while not wake.wait(self.interval):
            try:
                self._run_pass()
            except Exception:  # never let one bad pass end the loop
                log.exception("streamcache cleanup pass failed")

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
