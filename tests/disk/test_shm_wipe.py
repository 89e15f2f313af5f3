"""/dev/shm wiped under live entries (a reboot, systemd's RemoveIPC at logout), and objects
planted in /dev/shm under the names the cache would use (docs/design.md, "The cross-process
protocol" and "Failure model").

A wipe unlinks every segment and semaphore of the cache while a producer and readers (real
processes) are in the middle of an entry: the readers get an error within the liveness
bound (no hang), the producer's entry fails once it notices, and the next fetch creates
afresh and serves the right bytes. A planted object is never opened as the cache's: the
producer takes another name, and a reader that finds a segment naming another producer
does not trust it. Children live in tests/disk/procs_hostile.py.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from multiprocessing.context import SpawnContext
from pathlib import Path

import posix_ipc
import procs_hostile
import pytest
from helpers import index_records
from procs_hostile import StartLive, wipe
from xproc import WAIT, expect, payload_sha

import ipc
from ipc.channel import READERS_BELL, SEGMENT, WRITER_BELL
from ipc.naming import object_name
from streamcache import StreamCache
from streamcache.cache import LAYOUT
from streamcache.disk.index import Index

KEY = "wiped"
TOTAL, CHUNK = 400_000, 4096
# A generous bound on "within the liveness bound" (liveness is 0.2 s in every child):
# a loaded CI machine runs several suites at once.
NOTICE = 10.0


@pytest.mark.parametrize("inline", [True, False], ids=["inline-creator", "producer-thread"])
@pytest.mark.parametrize("producer_state", ["stalled", "writing"])
def test_wipe_fails_live_entries_cleanly_and_the_next_fetch_creates_afresh(
    cache_dir: Path,
    spawn: SpawnContext,
    live_entry: StartLive,
    inline: bool,
    producer_state: str,
) -> None:
    pace = 0.005 if producer_state == "writing" else 0.0
    total = TOTAL * 40 if pace else TOTAL  # a writing producer is still at it at the wipe
    entry = live_entry(KEY, "old", total, CHUNK, inline=inline, pace=pace)
    prod, pout, release = entry.producer, entry.out, entry.release
    readers, routs = entry.readers, entry.reader_outs
    wiped_at = time.monotonic()
    assert wipe(cache_dir), "the entry had no IPC objects to wipe"
    if producer_state == "writing":
        # The rest at once: paced to the end, a producer that never sees the wipe
        # outlasted its readers' bound on a busy machine (TimeoutError).
        release.set()

    # A writing producer may finish before it sees the wipe: an inline creator that had
    # not yet found the channel its readers made never sees it, and a producer thread
    # released to write the rest at once looks for its channel's names only between
    # writes now and then. Each party then ends on its own either way: a reader that
    # reached the end first has every byte, one whose liveness check found the names gone
    # first fails (the producer's own client, a reader in its process, included). What
    # may never happen is a reader ending early without an error, or not within NOTICE.
    whole = ("ok", str(total))
    may_finish = producer_state == "writing"
    parties = [expect(q, "ended", timeout=WAIT) for q in routs]
    if producer_state == "writing":
        kind, text, at = expect(pout, "ended", timeout=WAIT)
        parties.append((kind, text.removesuffix(" True"), at))
    finished = False
    for kind, text, at in parties:
        if may_finish and (kind, text) == whole:
            finished = True
            continue
        assert kind == "CreateError" and "SharedMemoryRemoved" in text, (kind, text)
        assert at - wiped_at < NOTICE, f"a party noticed {at - wiped_at:.1f}s after"

    # The next fetch, from another process, creates afresh and gets its own bytes.
    q = spawn.Queue()
    f = spawn.Process(
        target=procs_hostile.fetch_once,
        args=(str(cache_dir), KEY, "new", TOTAL, CHUNK),
        kwargs={"out": q},
    )
    f.start()
    digest, written, created = expect(q, "fetched")
    seed, size = ("new", TOTAL) if created else ("old", total)
    assert created or finished, "only an entry published whole may be hit"
    assert (digest, written) == (payload_sha(seed, size, CHUNK), size)
    f.join(WAIT)

    release.set()  # a stalled producer resumes: its entry fails, the new one stays
    if producer_state == "stalled":
        kind, text, _ = expect(pout, "ended", timeout=WAIT)
        if inline and kind == "ok":
            # It never saw the channel the readers made (wiped before it looked):
            # its own client got every byte straight from create, and its entry,
            # no longer in the index, was not published.
            assert text == f"{TOTAL} True"
        else:
            assert kind == "CreateError" and "SharedMemoryRemoved" in text, (kind, text)
    prod.join(WAIT)
    assert prod.exitcode == 0
    again = StreamCache(cache_dir, cleanup_interval=0)
    sink: list[bytes] = []
    res = again.fetch(KEY, _ListSink(sink), _forbidden, timeout=WAIT)
    assert res.created is False and res.written == size
    assert hashlib.sha256(b"".join(sink)).hexdigest() == payload_sha(seed, size, CHUNK)
    assert index_records(cache_dir) == []
    for r in readers:
        r.join(WAIT)


class _ListSink:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def write(self, b: bytes) -> int:
        self.chunks.append(bytes(b))
        return len(b)


def _forbidden(w: object) -> None:
    raise AssertionError("create must not run: the entry is finished")


# -- planted objects ----------------------------------------------------------------------------


def plant_segment(name: str, producer: ipc.ProcessId, mode: int = 0o600) -> bytes:
    """A well-formed segment (magic, version, slots) under ``name`` that names
    ``producer``, made by 'someone else'; returns its bytes for comparison."""
    seg = ipc.Segment.create(name, producer, 4)
    seg.close()
    os.chmod(f"/dev/shm{name}", mode)
    return _shm_bytes(name)


def _shm_bytes(name: str) -> bytes:
    with open(f"/dev/shm{name}", "rb") as f:
        return f.read()


def test_a_producer_never_opens_objects_planted_under_its_names(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """The random part of the first data file's name is forced; its segment and bells
    are planted first. The producer must not open them (O_EXCL), must leave them as they
    are, and must serve the entry under another name."""
    StreamCache(cache_dir, cleanup_interval=0)  # the dir exists, so the prefix is fixed
    token = "feedfacecafebeef"
    base = ipc.prefix_for(cache_dir) + token
    seg_name = object_name(base, SEGMENT)
    planted = plant_segment(seg_name, ipc.ProcessId(1, 0.0))
    bells = [object_name(base, k) for k in (READERS_BELL, WRITER_BELL)]
    for bell in bells:
        posix_ipc.Semaphore(bell, posix_ipc.O_CREX, 0o600, 7).close()
    try:
        q = spawn.Queue()
        p = spawn.Process(
            target=procs_hostile.fetch_with_planted_names,
            args=(str(cache_dir), KEY, token, "seed", TOTAL, CHUNK),
            kwargs={"out": q},
        )
        p.start()
        digest, n, created, drawn = expect(q, "fetched")
        p.join(WAIT)
        assert (digest, n, created) == (payload_sha("seed", TOTAL, CHUNK), TOTAL, True)
        assert drawn[0] == token and len(drawn) >= 2, "a second name was drawn"
        assert _shm_bytes(seg_name) == planted, "the planted segment was written to"
        for bell in bells:
            sem = posix_ipc.Semaphore(bell)
            try:
                assert sem.value == 7, "a planted bell was rung or taken"
            finally:
                sem.close()
    finally:
        posix_ipc.unlink_shared_memory(seg_name)
        for bell in bells:
            posix_ipc.unlink_semaphore(bell)


@pytest.mark.parametrize("plant", ["names-another-producer", "others-can-write", "a-symlink"])
def test_a_reader_never_trusts_a_segment_planted_for_an_entry(
    cache_dir: Path, spawn: SpawnContext, plant: str
) -> None:
    """An inline creator's entry has no channel until a reader attaches; a segment planted
    under its name first (a well-formed one naming another live process, one that others
    may write, or a symlink) must not be attached to: the reader makes its own and reads
    the creator's bytes."""
    wrote, release, pout = spawn.Event(), spawn.Event(), spawn.Queue()
    prod = spawn.Process(
        target=procs_hostile.producer,
        args=(str(cache_dir), KEY, "seed", TOTAL, CHUNK, True, wrote, release),
        kwargs={"out": pout},
    )
    prod.start()
    outside = cache_dir.parent / "outside"
    seg_name = ""
    try:
        assert wrote.wait(WAIT)
        rec = Index(str(cache_dir / LAYOUT)).read(_key_hash(KEY))
        assert rec is not None
        base = ipc.prefix_for(cache_dir) + rec.file[:16]
        seg_name = object_name(base, SEGMENT)
        if plant == "names-another-producer":
            # A live process that is not the producer (this test), at its offset "done".
            plant_segment(seg_name, ipc.current_process())
        elif plant == "others-can-write":
            plant_segment(seg_name, ipc.ProcessId(rec.pid, rec.start), mode=0o666)
        else:
            outside.write_bytes(b"\0" * 4096)
            os.symlink(outside, f"/dev/shm{seg_name}")
        q = spawn.Queue()
        r = spawn.Process(
            target=procs_hostile.reader, args=(str(cache_dir), KEY, CHUNK), kwargs={"out": q}
        )
        r.start()
        expect(q, "first")
        release.set()
        kind, text, _ = expect(q, "ended", timeout=WAIT)
        assert (kind, text) == ("ok", str(TOTAL))
        kind, text, _ = expect(pout, "ended", timeout=WAIT)
        assert kind == "ok", text
        r.join(WAIT)
        prod.join(WAIT)
        if plant == "a-symlink":
            assert outside.read_bytes() == b"\0" * 4096, "written through a planted symlink"
    finally:
        release.set()
        prod.join(WAIT)
        if seg_name and os.path.lexists(f"/dev/shm{seg_name}"):
            os.unlink(f"/dev/shm{seg_name}")


def _key_hash(key: str) -> str:
    from streamcache.cache import key_hash

    return key_hash(key)


def test_segment_open_refuses_foreign_objects(tmp_path: Path) -> None:
    """The checks themselves: another user's segment, a group- or world-accessible one,
    a FIFO and a symlink under a segment's name are refused; a sound one opens."""
    name = "/sc" + os.urandom(8).hex()[:6] + "0" * 16 + "s"
    me = ipc.current_process()
    try:
        plant_segment(name, me)
        ipc.Segment.open(name).close()
        os.chmod(f"/dev/shm{name}", 0o660)
        with pytest.raises(ipc.SegmentError):
            ipc.Segment.open(name)
        os.chmod(f"/dev/shm{name}", 0o600)
        if os.geteuid() == 0:  # root can hand it to another user
            os.chown(f"/dev/shm{name}", 12345, 12345)
            with pytest.raises(ipc.SegmentError):
                ipc.Segment.open(name)
            assert name not in [o.name for o in ipc.list_objects(name[1:9])]
        os.unlink(f"/dev/shm{name}")
        os.mkfifo(f"/dev/shm{name}", 0o600)
        with pytest.raises(ipc.SegmentError):
            ipc.Segment.open(name)
        os.unlink(f"/dev/shm{name}")
        (tmp_path / "t").write_bytes(b"\0" * mmap.PAGESIZE)
        os.symlink(tmp_path / "t", f"/dev/shm{name}")
        with pytest.raises(ipc.SegmentError):
            ipc.Segment.open(name)
    finally:
        if os.path.lexists(f"/dev/shm{name}"):
            os.unlink(f"/dev/shm{name}")
