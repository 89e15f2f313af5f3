"""Restart recovery: every process of a cache SIGKILLed in the middle of an entry (producer
and readers, real processes), optionally with /dev/shm wiped as a reboot does; a new
process must never serve the unfinished entry as complete: it creates afresh and serves
its own bytes, and one gc pass leaves nothing behind (docs/design.md, "Failure model").

Children live in tests/disk/procs_hostile.py.
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.context import SpawnContext
from pathlib import Path

import procs_hostile
import pytest
from helpers import data_files, index_records, writing
from procs_hostile import StartLive, wipe
from xproc import WAIT, expect, payload_sha

import ipc
from streamcache import StreamCache
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.index import Index, Record

KEY = "restart"
TOTAL, CHUNK = 300_000, 4096


@pytest.mark.parametrize("reboot", [False, True], ids=["kill-all", "kill-all-and-wipe-shm"])
@pytest.mark.parametrize("inline", [True, False], ids=["inline-creator", "producer-thread"])
@pytest.mark.parametrize("producer_state", ["stalled", "writing"])
def test_after_everyone_is_killed_a_new_process_creates_afresh(
    cache_dir: Path,
    spawn: SpawnContext,
    live_entry: StartLive,
    inline: bool,
    producer_state: str,
    reboot: bool,
) -> None:
    pace = 0.002 if producer_state == "writing" else 0.0
    total = TOTAL * 100 if pace else TOTAL  # still writing when it is killed
    entry = live_entry(KEY, "old", total, CHUNK, inline=inline, pace=pace)
    procs = [entry.producer, *entry.readers]
    if pace:
        time.sleep(0.05)  # let it write on a little: the kill lands mid-write
    for p in procs:
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == -signal.SIGKILL
    assert Index(str(cache_dir / LAYOUT)).read(key_hash(KEY)) is not None, (
        "the test must leave an unfinished entry behind"
    )
    if reboot:
        wipe(cache_dir)

    q = spawn.Queue()
    f = spawn.Process(
        target=procs_hostile.fetch_once,
        args=(str(cache_dir), KEY, "new", TOTAL, CHUNK),
        kwargs={"out": q},
    )
    f.start()
    assert expect(q, "fetched") == (payload_sha("new", TOTAL, CHUNK), TOTAL, True)
    f.join(WAIT)

    report = StreamCache(cache_dir, cleanup_interval=0).gc()
    assert report.ran
    assert index_records(cache_dir) == []
    assert ipc.list_objects(ipc.prefix_for(cache_dir)) == []
    # The killed entry's data file may wait for the sweep (older than max_age);
    # nothing but it and the new finished entry is on disk.
    assert len(data_files(cache_dir)) <= 2


def test_a_record_whose_pid_was_reused_is_not_trusted(cache_dir: Path) -> None:
    """After a reboot a record's pid may belong to another live process: its start time
    differs, so the entry is discarded, never waited on (this test's own pid stands in
    for the reused one, with the start time of another boot)."""
    cache = StreamCache(cache_dir, cleanup_interval=0, liveness=0.2)
    index = Index(str(cache_dir / LAYOUT))
    h = key_hash(KEY)
    me = ipc.current_process()
    name = f"{'0' * 16}-{me.pid:x}-0"
    path = Path(index.record_path(h))
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(Record(h, name, me.pid, me.start + 1000, 9999999999).to_text(), path)
    data = cache_dir / LAYOUT / "data" / "00" / name
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"half an entry")

    sink: list[bytes] = []

    class Sink:
        def write(self, b: bytes) -> int:
            sink.append(bytes(b))
            return len(b)

    started = time.monotonic()
    res = cache.fetch(KEY, Sink(), writing(b"whole"), timeout=WAIT)
    assert res == (5, True) and b"".join(sink) == b"whole"
    assert time.monotonic() - started < WAIT / 2
    assert not data.exists()
