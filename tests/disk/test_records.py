"""Records of entries in flight (short text symlinks in the index): their round trip,
garbage of every kind ignored and replaced, and a live record kept when a reader runs out
of descriptors. Children live in tests/disk/procs_records.py.
"""

from __future__ import annotations

import io
import os
from multiprocessing.context import SpawnContext
from pathlib import Path

import procs_records
import pytest
import xproc
from helpers import finished_entries, index_records, writing
from xproc import expect

import ipc
from streamcache import StreamCache
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.index import Index

WAIT = 20.0
HOUR = 3600.0
KEY = "record"


# -- EMFILE taken for "no record": a live in-flight record is deleted --------------------------


def test_fd_exhaustion_does_not_remove_a_live_record(cache_dir: Path, spawn: SpawnContext) -> None:
    wrote, release, pout, out = spawn.Event(), spawn.Event(), spawn.Queue(), spawn.Queue()
    producer = spawn.Process(
        target=xproc.slow_producer,
        args=(str(cache_dir), "k", "seed", 2000, 1000, wrote, release),
        kwargs={"out": pout},
    )
    producer.start()
    try:
        assert wrote.wait(WAIT)
        child = spawn.Process(
            target=procs_records.emfile_fetch, args=(str(cache_dir), "k"), kwargs={"out": out}
        )
        child.start()
        outcome, present = expect(out, "outcome")
        child.join(WAIT)
        assert present, f"the in-flight record is gone after: {outcome}"
    finally:
        release.set()
        producer.join(WAIT)


# -- garbage of every kind is ignored and replaced ---------------------------------------------


@pytest.mark.parametrize(
    "plant",
    [
        "regular-file",
        "wrong-version",
        "bad-file-name",
        "path-in-file-name",
        "five-fields",
        "not-a-number",
        "empty",
    ],
)
def test_garbage_record_is_replaced_by_a_new_entry(cache_dir: Path, plant: str) -> None:
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    index = Index(str(cache_dir / LAYOUT))
    h = key_hash(KEY)
    path = index.record_path(h)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    name = f"{'0' * 16}-{os.getpid():x}-0"
    texts = {
        "wrong-version": f"2 {name} 1 9999999999",
        "bad-file-name": "3 nothex 1 9999999999",
        "path-in-file-name": f"3 ../{name} 1 9999999999",
        "five-fields": f"3 {name} 1 9999999999 x",
        "not-a-number": f"3 {name} one 9999999999",
        "empty": "",
    }
    if plant == "regular-file":
        with open(path, "w") as f:
            f.write(f"3 {name} 1 9999999999")
    elif plant == "empty":
        # A symlink cannot have an empty target; the nearest is a lone space.
        os.symlink(" ", path)
    else:
        os.symlink(texts[plant], path)
    assert index.read(h) is None
    sink = io.BytesIO()
    assert cache.fetch(KEY, sink, writing(b"fresh")) == (5, True)
    assert sink.getvalue() == b"fresh"
    assert index_records(cache_dir) == []
    assert len(finished_entries(cache_dir)) == 1


# -- the record's text -------------------------------------------------------------------------


def test_record_round_trip_stays_a_fast_symlink(cache_dir: Path) -> None:
    """A record names its producer (pid from the data file's name) and start time exactly
    enough for the liveness check, and stays under 60 bytes for the largest pid."""
    from streamcache.disk.index import Record

    me = ipc.current_process()
    name = f"{'a' * 16}-{4194304:x}-{0xFFFFF:x}"
    rec = Record(key_hash(KEY), name, 4194304, 987654.32, 4102444800.123)
    text = rec.to_text()
    assert len(text.encode()) < 60, text
    back = Record.from_text(rec.key, text)
    assert back == rec
    mine = Record(key_hash(KEY), f"{'b' * 16}-{me.pid:x}-0", me.pid, me.start, 1.0)
    parsed = Record.from_text(mine.key, mine.to_text())
    assert parsed is not None and ipc.is_alive(parsed.pid, parsed.start)


@pytest.mark.parametrize(
    "start, expires",
    [
        ("-5", "1"),
        ("1", "-1"),
        ("1.5", "1"),
        ("+1", "1"),
        ("1", "1_0"),
        ("1\t", "1"),
        ("\u0661", "1"),
    ],
)
def test_a_record_with_a_time_not_in_base_36_digits_is_garbage(start: str, expires: str) -> None:
    """Times are milliseconds in base-36 digits: no sign, point, separator or other
    digits (and so nothing negative or non-finite) is taken."""
    from streamcache.disk.index import RECORD_VERSION, Record

    text = f"{RECORD_VERSION} {'ab' * 8}-{os.getpid():x}-0 {start} {expires} {ipc.BOOT}"
    assert Record.from_text("k" * 64, text) is None
    assert Record.from_text("k" * 64, text.replace(f"{start} {expires}", "1 2")) is not None


def test_bad_arguments_leave_no_directory(tmp_path: Path) -> None:
    for kwargs in ({"max_age": -1}, {"window": -1}, {"liveness": 0}, {"cleanup_interval": -1}):
        with pytest.raises(ValueError):
            StreamCache(tmp_path / "never", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "never").exists()
