"""The ipc package alone, with real processes: segments, doorbells, names, liveness.

Children run functions of tests/xproc.py in the spawn context and talk over queues.
Every object a test creates is named under the prefix of the test's ``cache_dir`` (whose
teardown checks that nothing of it is left in /dev/shm) and unlinked by the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posix_ipc
import psutil
import pytest
import xproc
from xproc import expect

import ipc
from ipc.doorbell import unlink_semaphore
from ipc.naming import BASE_HEX, PREFIX_LEN, object_name
from ipc.segment import (
    HEADER_BYTES,
    MAGIC,
    SLOT_BYTES,
    VERSION,
    unlink_segment,
)


@pytest.fixture
def names(cache_dir: Path) -> Iterator[list[str]]:
    """Collects POSIX names the test creates; all are unlinked at teardown."""
    made: list[str] = []
    yield made
    for name in made:
        unlink_segment(name)
        unlink_semaphore(name)


def _name(cache_dir: Path, kind: str, made: list[str]) -> str:
    name = object_name(ipc.new_base(ipc.prefix_for(cache_dir)), kind)
    made.append(name)
    return name


def _raw_shm(name: str, data: bytes, size: int | None = None) -> None:
    """A shared-memory object with arbitrary contents, as a foreign program might leave."""
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, 0o600, size or len(data))
    try:
        if data:
            os.pwrite(shm.fd, data, 0)
    finally:
        os.close(shm.fd)


def _words(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


# -- segments --------------------------------------------------------------------------------------


def test_segment_fields_across_processes(cache_dir: Path, spawn: Any, names: list[str]) -> None:
    """Each field has one writer, and the other process sees what it wrote: the producer's
    header (identity, offset, state, error) in the child, the child's slot in the test."""
    me = ipc.current_process()
    name = _name(cache_dir, "s", names)
    seg = ipc.Segment.create(name, me, slots=4)
    try:
        seg.publish_offset(12345)
        commands, out = spawn.Queue(), spawn.Queue()
        child = spawn.Process(target=xproc.segment_peer, args=(name, commands), kwargs={"out": out})
        child.start()
        pid, start, slots, offset, state = expect(out, "opened")
        assert pid == me.pid and start == pytest.approx(me.start, abs=1e-6)
        assert (slots, offset, state) == (4, 12345, ipc.STATE_WRITING)

        commands.put(("claim",))
        slot, cpid, cstart = expect(out, "claimed")
        assert slot == 0 and cpid == child.pid
        commands.put(("position", 777))
        expect(out, "positioned")
        assert seg.slots_used == 1
        info = seg.slot_info(0)
        assert info is not None
        assert (info.position, info.waiting, info.reader.pid) == (777, True, child.pid)
        assert info.reader.start == pytest.approx(cstart, abs=1e-6)
        rid = info.reader
        assert rid.pid == child.pid and rid.start == pytest.approx(cstart, abs=1e-6)

        seg.publish_offset(99999)
        seg.set_producer_waiting(True)
        seg.fail("ValueError: boom \u2603")
        commands.put(("look",))
        assert expect(out, "looked") == (99999, ipc.STATE_FAILED, "ValueError: boom \u2603", True)

        commands.put(("release",))
        expect(out, "released")
        assert seg.slot_info(0) is None  # inactive, as the child left it
        commands.put(("quit",))
        child.join(10)
        assert child.exitcode == 0
    finally:
        seg.close()
        seg.unlink()


def test_segment_finish_publishes_final_offset(cache_dir: Path, names: list[str]) -> None:
    name = _name(cache_dir, "s", names)
    seg = ipc.Segment.create(name, ipc.current_process())
    other = ipc.Segment.open(name)
    try:
        assert (other.offset, other.state, other.error) == (0, ipc.STATE_WRITING, "")
        seg.finish(4242)
        assert (other.offset, other.state) == (4242, ipc.STATE_DONE)
        assert other.slot_count == seg.slot_count
    finally:
        other.close()
        seg.close()
        seg.unlink()
    with pytest.raises(ipc.SegmentError):
        ipc.Segment.open(name)  # unlinked: gone for new openers


def test_segment_create_never_opens_an_existing_name(cache_dir: Path, names: list[str]) -> None:
    """O_CREX: a name that exists (planted, or a collision) is refused, not adopted."""
    name = _name(cache_dir, "s", names)
    _raw_shm(name, b"\0" * 4096)
    with pytest.raises(posix_ipc.ExistentialError):
        ipc.Segment.create(name, ipc.current_process())
    bell = _name(cache_dir, "r", names)
    ipc.Doorbell.create(bell).close()
    with pytest.raises(posix_ipc.ExistentialError):
        ipc.Doorbell.create(bell)


@pytest.mark.parametrize(
    "what",
    ["missing", "empty", "truncated", "foreign", "zeroes", "wrong version", "too many slots"],
)
def test_segment_open_validates(cache_dir: Path, names: list[str], what: str) -> None:
    """Anything that is not a complete segment of this layout is a SegmentError."""
    name = _name(cache_dir, "s", names)
    if what == "empty":
        posix_ipc.SharedMemory(name, posix_ipc.O_CREX, 0o600).close_fd()  # not yet sized
    elif what == "truncated":
        _raw_shm(name, _words(MAGIC, VERSION, 0), size=HEADER_BYTES - 8)
    elif what == "foreign":
        _raw_shm(name, os.urandom(HEADER_BYTES + 4 * SLOT_BYTES))
    elif what == "zeroes":
        _raw_shm(name, b"\0" * (HEADER_BYTES + 4 * SLOT_BYTES))
    elif what == "wrong version":
        _raw_shm(name, _words(MAGIC, VERSION + 1, 4), size=HEADER_BYTES + 4 * SLOT_BYTES)
    elif what == "too many slots":
        _raw_shm(name, _words(MAGIC, VERSION, 128), size=HEADER_BYTES + 4 * SLOT_BYTES)
    with pytest.raises(ipc.SegmentError):
        ipc.Segment.open(name)


def test_segment_truncated_after_creation(cache_dir: Path, names: list[str]) -> None:
    """A real segment cut short afterwards (by anyone with access) is refused on open."""
    name = _name(cache_dir, "s", names)
    seg = ipc.Segment.create(name, ipc.current_process(), slots=8)
    seg.close()
    shm = posix_ipc.SharedMemory(name, 0)
    try:
        os.ftruncate(shm.fd, HEADER_BYTES + 2 * SLOT_BYTES)
    finally:
        os.close(shm.fd)
    with pytest.raises(ipc.SegmentError):
        ipc.Segment.open(name)


def test_claim_slot_reuses_a_dead_owners_slot(
    cache_dir: Path, spawn: Any, names: list[str]
) -> None:
    """A slot whose owner died (SIGKILL) is claimed again; a live owner's never is; with
    every slot held by live readers there is none to claim."""
    me = ipc.current_process()

    name = _name(cache_dir, "s", names)
    seg = ipc.Segment.create(name, me, slots=4)
    try:
        peers = []
        for expected_slot in (0, 1):
            commands, out = spawn.Queue(), spawn.Queue()
            p = spawn.Process(target=xproc.segment_peer, args=(name, commands), kwargs={"out": out})
            p.start()
            expect(out, "opened")
            commands.put(("claim",))  # one at a time: claims run in the caller's critical section
            assert expect(out, "claimed")[0] == expected_slot
            commands.put(("position", 999))
            expect(out, "positioned")
            commands.put(("stay",))
            expect(out, "staying")
            peers.append(p)
        dead, live = peers
        os.kill(dead.pid, signal.SIGKILL)
        dead.join(10)
        assert (info := seg.slot_info(0)) is not None and info.reader.pid == dead.pid

        # Unused slots come first; then, with every slot taken, the dead owner's is reclaimed.
        claimed = [seg.claim_slot(me) for _ in range(3)]
        assert [c.index if c else None for c in claimed] == [2, 3, 0]  # then the dead peer's
        assert seg.slot_info(0) == ipc.ReaderInfo(0, ipc.ProcessId(me.pid, me.start), 0, False)
        assert (info := seg.slot_info(1)) is not None and info.reader.pid == live.pid
        assert seg.claim_slot(me) is None  # all four held by live readers
        assert seg.slots_used == 4
        assert claimed[0] is not None and claimed[0].release()
        again = seg.claim_slot(me)
        assert again is not None and again.index == 2  # a released slot is free again
        live.kill()
        live.join(10)
    finally:
        seg.close()
        seg.unlink()


# -- doorbells -------------------------------------------------------------------------------------


def test_doorbell_across_processes(cache_dir: Path, spawn: Any, names: list[str]) -> None:
    """A ring in one process wakes a sleeper in another, both ways; a timed wait nobody
    rings returns False."""
    r_name, w_name = _name(cache_dir, "r", names), _name(cache_dir, "w", names)
    r, w = ipc.Doorbell.create(r_name), ipc.Doorbell.create(w_name)
    try:
        out = spawn.Queue()
        child = spawn.Process(target=xproc.bell_peer, args=(r_name, w_name), kwargs={"out": out})
        child.start()
        expect(out, "ready")
        r.ring()
        assert expect(out, "rang") == (True,)
        assert w.wait(20), "the child's ring never arrived"
        assert expect(out, "timed") == (False,)
        child.join(10)
        assert child.exitcode == 0
    finally:
        r.close()
        w.close()
        r.unlink()
        w.unlink()


def test_doorbell_counts_rings_and_times_out(cache_dir: Path, names: list[str]) -> None:
    """A ring before the wait is not lost; ring(n) wakes n waits; then a wait times out."""
    name = _name(cache_dir, "r", names)
    bell = ipc.Doorbell.create(name)
    other = ipc.Doorbell.open(name)
    try:
        assert bell.wait(0) is False
        assert other.wait(0.05) is False
        bell.ring(3)
        assert [other.wait(0) for _ in range(4)] == [True, True, True, False]
    finally:
        other.close()
        bell.close()
        bell.unlink()
    with pytest.raises(posix_ipc.ExistentialError):
        ipc.Doorbell.open(name)


# -- names -----------------------------------------------------------------------------------------


def test_names_are_short_and_prefixed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    pa = ipc.prefix_for(tmp_path / "a")
    assert len(pa) == PREFIX_LEN and pa.startswith("sc")
    assert ipc.prefix_for(str(tmp_path / "a")) == pa
    assert ipc.prefix_for(tmp_path / "link") == pa  # the real path counts
    assert ipc.prefix_for(tmp_path / "b") != pa
    bases = {ipc.new_base(pa) for _ in range(100)}
    assert len(bases) == 100
    for base in bases:
        assert base.startswith(pa) and len(base) == PREFIX_LEN + BASE_HEX
        for kind in "srw":
            name = object_name(base, kind)
            assert name == "/" + base + kind
            assert len(name) <= ipc.NAME_MAX == 30
    with pytest.raises(ValueError):
        object_name(ipc.new_base(pa), "ab")
    with pytest.raises(ValueError):
        object_name(pa + "0" * 30, "s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="enumeration needs /dev/shm")
def test_list_objects_by_prefix(cache_dir: Path, tmp_path: Path, names: list[str]) -> None:
    """list_objects finds exactly one prefix's segments and doorbells, and ignores names
    that only start like them."""
    mine = ipc.prefix_for(cache_dir)
    theirs = ipc.prefix_for(tmp_path / "elsewhere")
    assert mine != theirs
    base = ipc.new_base(mine)
    seg_name = object_name(base, "s")
    names.extend([seg_name, object_name(base, "r"), object_name(base, "w")])
    seg = ipc.Segment.create(seg_name, ipc.current_process())
    seg.close()
    ipc.Doorbell.create(object_name(base, "r")).close()
    ipc.Doorbell.create(object_name(base, "w")).close()
    other = object_name(ipc.new_base(theirs), "s")
    names.append(other)
    _raw_shm(other, b"\0" * 64)
    odd = "/" + mine + "x"  # right prefix, wrong length: not one of ours
    names.append(odd)
    _raw_shm(odd, b"\0" * 64)

    found = sorted(ipc.list_objects(mine), key=lambda o: o.kind)
    assert [(o.name, o.is_semaphore, o.base, o.kind) for o in found] == [
        (object_name(base, "r"), True, base, "r"),
        (seg_name, False, base, "s"),
        (object_name(base, "w"), True, base, "w"),
    ]
    assert all(o.mtime > 0 for o in found)
    assert [o.name for o in ipc.list_objects(theirs)] == [other]

    for name in names:
        unlink_segment(name)
        unlink_semaphore(name)
    assert ipc.list_objects(mine) == []
    assert ipc.list_objects(theirs) == []


# -- liveness --------------------------------------------------------------------------------------


def test_is_alive_self() -> None:
    me = ipc.current_process()
    assert me.pid == os.getpid()
    assert me.start == ipc.start_time(os.getpid())
    if sys.platform.startswith("linux"):  # seconds since boot there
        since_boot = psutil.Process().create_time() - psutil.boot_time()
        assert me.start == pytest.approx(since_boot, abs=0.05)
    assert ipc.is_alive(me.pid, me.start)
    assert not ipc.is_alive(me.pid, me.start + 10)
    assert not ipc.is_alive(me.pid, me.start - 10)
    assert not ipc.is_alive(0, me.start)
    assert not ipc.is_alive(-1, me.start)


def test_is_alive_child_live_zombie_reaped() -> None:
    """A live child is alive (with its own start time only); SIGKILLed but not reaped (a
    zombie) it is dead; reaped, it is dead."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        start = ipc.start_time(child.pid)
        assert ipc.is_alive(child.pid, start)
        assert not ipc.is_alive(child.pid, start - 5)
        os.kill(child.pid, signal.SIGKILL)
        # Wait for its death without reaping it: it stays a zombie.
        info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert info is not None and info.si_pid == child.pid
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        assert not ipc.is_alive(child.pid, start)
        assert child.wait(10) == -signal.SIGKILL  # reaped
        assert not ipc.is_alive(child.pid, start)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdin is not None:
            child.stdin.close()


def test_is_alive_across_processes(spawn: Any, cache_dir: Path) -> None:
    """A process's own idea of its identity (current_process in the child) is what
    another process's is_alive accepts."""
    stop, out = spawn.Event(), spawn.Queue()
    child = spawn.Process(target=xproc.idle, args=(stop,), kwargs={"out": out})
    child.start()
    pid, start = expect(out, "started")
    assert pid == child.pid
    assert ipc.is_alive(pid, start)
    stop.set()
    child.join(10)
    assert child.exitcode == 0
    assert not ipc.is_alive(pid, start)
