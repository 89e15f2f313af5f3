"""Gitaly's internal/streamcache/cursor_test.go, ported.

Gitaly's cursor is an in-process counter that only rises, notifies its subscribers
when it does, and is "done" once its last subscriber leaves. Its pipe uses two:
``wcursor`` (the writer's offset; readers subscribe to it) and ``rcursor`` (the
fastest reader's position; the writer subscribes to it).

Here they map to the entry's shared-memory segment and doorbells:

- wcursor: the offset the producer publishes in the segment header; a reader that
  sleeps announces it in its slot ("waiting") and the producer rings the readers'
  doorbell once per sleeper after a write that raised the offset.
- rcursor: each reader's position in its own slot; the producer's view is the
  largest position over live slots (``EntryWriter._scan``); a reader that advances rings
  the producer's doorbell when the producer waits.
- subscribe / unsubscribe: claiming / releasing a slot (or dying, detected by the
  producer on a timed-out wait); "done" is the producer's view that no live reader
  is left, after which every write raises BrokenPipeError.

Child-process functions live at module level (spawn context).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import ask as _ask
from helpers import join_ok as _join
from helpers import open_segment
from helpers import recv as _recv
from helpers import wait_until as _wait_until

import ipc
import streamcache
from ipc import futex
from ipc.channel import Channel, unlink_channel
from streamcache.cache import key_hash
from streamcache.deadline import deadline_for
from streamcache.entry.pipe import CHUNK, PipeReader
from streamcache.entry.writer import EntryWriter
from streamcache.errors import describe

LIVENESS = 0.2
WAIT = 20.0  # bound for every wait in these tests
STORM_WAIT = 150.0  # bound for a whole storm (below pytest-timeout's 180 s)
_POS, _ACTIVE, _WAITING = 0, 1, 2  # slot words


# -- helpers -------------------------------------------------------------------------


def _notices(bell: Any) -> int:
    """How many rings went to ``bell`` since the last look: counted by a RingCounter (the
    readers' bell: a futex on Linux has no pending count), else the posts pending on a
    semaphore (consumed, never blocks)."""
    if isinstance(bell, RingCounter):
        n, bell.rings = bell.rings, 0
        return n
    n = 0
    while bell.wait(0):
        n += 1
    return n


def _slot(seg: ipc.Segment, slot: int, field: int) -> int:
    info = seg.slot_info(slot)
    if field == _ACTIVE:
        return int(info is not None)
    if info is None:
        return 0
    return info.position if field == _POS else int(info.waiting)


class RingCounter:
    """A real doorbell that also counts the rings sent through it from this process."""

    def __init__(self, bell: Any) -> None:
        self._bell = bell
        self.rings = 0

    def ring(self, times: int = 1, bits: int = futex.ALL_BITS) -> None:
        self.rings += times
        self._bell.ring(times, bits)

    def wait(self, seen: int, timeout: float, bits: int = futex.ALL_BITS) -> bool:
        return bool(self._bell.wait(seen, timeout, bits))

    def close(self) -> None:
        self._bell.close()


class MechPipe:
    """A bare pipe: a data file, an entry's real IPC objects (named under the cache
    dir's prefix, so the leak check covers them) and an EntryWriter."""

    def __init__(self, cache_dir: Path, tmp_path: Path, window: int, liveness: float) -> None:
        cache_dir.mkdir(mode=0o700, exist_ok=True)
        self.path = str(tmp_path / "pipe-data")
        self.wfd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.entry = Channel.create(ipc.prefix_for(cache_dir), ipc.current_process(), 64)
        self.entry.readers_bell = RingCounter(self.entry.readers_bell)  # type: ignore[assignment]
        self.seg = self.entry.seg
        self.writer = EntryWriter(self.wfd, self.entry, window, liveness)
        self._readers: list[PipeReader] = []

    def local_reader(self) -> PipeReader:
        """A reader in this process, with its own mapping and slot."""
        entry = Channel.open(self.entry.base)
        slot = entry.seg.claim_slot(ipc.current_process())
        r = PipeReader(os.open(self.path, os.O_RDONLY), entry, slot, LIVENESS, None, None)
        self._readers.append(r)
        return r

    def close(self) -> None:
        for r in self._readers:
            r.close()
        if self.seg.state == ipc.STATE_WRITING:
            self.seg.fail("test ended")
            self.entry.readers_bell.ring(8)
        unlink_channel(self.entry.base)
        self.entry.close()
        os.close(self.wfd)


# -- child processes (spawn) -----------------------------------------------------------


def _pipe_reader_proc(base: str, path: str, liveness: float, conn: Connection) -> None:
    """A bare PipeReader in its own process, driven by commands:
    ("attach",) claims a slot, ("read", n) reads up to n bytes, ("close",) leaves."""
    entry = Channel.open(base)
    fd = os.open(path, os.O_RDONLY)
    reader: PipeReader | None = None
    while True:
        cmd = conn.recv()
        try:
            if cmd[0] == "attach":
                slot = entry.seg.claim_slot(ipc.current_process())
                reader = PipeReader(fd, entry, slot, liveness, None, None)
                conn.send(("attached", None if slot is None else slot.index))
            elif cmd[0] == "read":
                assert reader is not None
                conn.send(("data", reader.read(cmd[1], deadline_for(WAIT, ipc.SYSTEM))))
            elif cmd[0] == "close":
                assert reader is not None
                reader.close()
                conn.send(("closed",))
                return
        except BaseException as exc:
            conn.send(("error", describe(exc)))


def _subscriber_storm_proc(
    cache_dir: str, key: str, nthreads: int, rounds: int, size: int, start: Any, q: Any
) -> None:
    """Threads that each, ``rounds`` times, open ``key`` (a new slot), read a random
    prefix, and close (leave its slot); each reports (rounds done, what went wrong)."""
    cache = streamcache.StreamCache(cache_dir, window=0, liveness=LIVENESS, cleanup_interval=0)

    def run(seed: int) -> None:
        rng = random.Random(seed)
        bad: list[str] = []
        done = 0
        content = _content(size)
        try:
            if not start.wait(WAIT):
                raise AssertionError("start was never set")
            for _ in range(rounds):
                want = rng.randrange(0, size * 3 // 4)
                with cache.stream(key, _unexpected_create, timeout=WAIT) as s:
                    if s.created:
                        bad.append("ran create")
                    got = bytearray()
                    while len(got) < want:
                        chunk = s.read(want - len(got))
                        if not chunk:
                            break
                        got += chunk
                    if bytes(got) != content[:want]:
                        bad.append(f"wrong prefix of {want} bytes")
                done += 1
        except BaseException as exc:
            bad.append(describe(exc))
        q.put((done, bad))

    threads = [
        threading.Thread(target=run, args=(os.getpid() * 1000 + i,)) for i in range(nthreads)
    ]
    for t in threads:
        t.start()
    q.put("ready")
    for t in threads:
        t.join(WAIT)


def _unexpected_create(w: Any) -> None:
    w.write(b"UNEXPECTED CREATE")


def _content(size: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(size))


def _wait_asleep(seg: ipc.Segment, slot: int, pid: int) -> None:
    """Wait until the reader in ``slot`` (process ``pid``) sleeps on its doorbell: its
    "waiting" flag is up and the process is blocked (its only blocking call while the
    flag is up is the doorbell wait)."""
    _wait_until(
        lambda: (
            _slot(seg, slot, _WAITING) == 1
            and psutil.Process(pid).status() == psutil.STATUS_SLEEPING
        ),
        f"reader in slot {slot} to sleep",
    )


# -- tests -----------------------------------------------------------------------------


def test_cursor_notify(cache_dir: Path, tmp_path: Path) -> None:
    """TestCursor_notify: the position only rises, and a rise notifies.

    wcursor: the producer's offset starts at 0 with no notice pending; a write raises
    it and rings once per sleeping subscriber (none for one that is not asleep).
    rcursor: the producer's view is the largest reader position; a slower reader's
    lower position does not lower it, and an advance while the producer waits rings
    the producer.
    """
    pipe = MechPipe(cache_dir, tmp_path, window=1 << 20, liveness=LIVENESS)
    try:
        seg, w = pipe.seg, pipe.writer
        r1 = pipe.local_reader()
        assert r1._slot is not None
        slot1 = r1._slot.index
        assert seg.offset == 0
        assert _notices(pipe.entry.readers_bell) == 0

        # A sleeping subscriber is notified when the offset goes up.
        r1._slot.set_waiting(True)
        assert w.write(b"x") == 1
        assert seg.offset == 1
        assert _notices(pipe.entry.readers_bell) == 1
        r1._slot.set_waiting(False)
        # One that is not asleep gets no ring (it re-checks the offset before sleeping).
        assert w.write(b"yz") == 2
        assert seg.offset == 3
        assert _notices(pipe.entry.readers_bell) == 0

        # rcursor: positions only rise; the producer sees the fastest reader.
        assert w.channel.readers()[:2] == (1, 0)
        assert r1.read(3, None) == b"xyz"
        assert r1.position == 3 and _slot(seg, slot1, _POS) == 3
        assert w.channel.readers()[:2] == (1, 3)
        r2 = pipe.local_reader()
        assert w.channel.readers()[:2] == (2, 3), "a new reader at 0 does not lower the position"
        assert r2.read(1, None) == b"x"
        assert w.channel.readers()[:2] == (2, 3), "a slower reader does not lower the position"
        assert r2.read(2, None) == b"yz"
        assert w.channel.readers()[:2] == (2, 3), "an equal position changes nothing"

        # An advance while the producer waits notifies it; none while it does not.
        assert w.write(b"w") == 1
        assert r2.read(1, None) == b"w"
        assert _notices(pipe.entry.writer_bell) == 0
        assert w.channel.readers()[:2] == (2, 4)
        assert w.write(b"v") == 1
        seg.set_producer_waiting(True)
        assert r1.read(2, None) == b"wv"
        seg.set_producer_waiting(False)
        assert _notices(pipe.entry.writer_bell) == 1
        assert w.channel.readers()[:2] == (2, 5)
    finally:
        pipe.close()


def test_cursor_notify_no_notice_without_rise(cache_dir: Path, tmp_path: Path) -> None:
    """TestCursor_notify ("expect no notifications after values <= c.Position()"): a
    write that does not raise the offset (an empty one) sends no notice."""
    pipe = MechPipe(cache_dir, tmp_path, window=1 << 20, liveness=LIVENESS)
    try:
        r = pipe.local_reader()
        assert r._slot is not None
        r._slot.set_waiting(True)
        assert pipe.writer.write(b"") == 0
        assert pipe.seg.offset == 0
        assert _notices(pipe.entry.readers_bell) == 0, "notice without a rise"
    finally:
        pipe.close()


def test_cursor_notify_zero_byte_read(cache_dir: Path) -> None:
    """TestCursor_notify (reader side, "value remains because 0 <= 0"): consuming zero
    bytes leaves the reader's position as it is and is no error."""
    cache = streamcache.StreamCache(cache_dir, window=1 << 20, cleanup_interval=0)
    more = threading.Event()

    def create(w: Any) -> None:
        w.write(b"abc")
        if not more.wait(WAIT):
            raise AssertionError("never released")
        w.write(b"def")

    try:
        with cache.stream("zero-read", create, timeout=WAIT) as s:
            assert s.read(1) == b"a"
            assert s.readinto(bytearray(0)) == 0
            more.set()
            assert s.read() == b"bcdef"
    finally:
        more.set()
        assert cache.wait_producers(WAIT)


def test_cursor_unsubscribe(cache_dir: Path, tmp_path: Path, spawn: Any) -> None:
    """TestCursorUnsubscribe: a rise notifies the current subscribers only; "done" (the
    producer has no reader left: BrokenPipeError) comes when the last one leaves.

    Two readers in two other processes sleep on the doorbell; the producer's rings are
    counted on its side.
    """
    pipe = MechPipe(cache_dir, tmp_path, window=1 << 20, liveness=LIVENESS)
    bell = pipe.entry.readers_bell
    assert isinstance(bell, RingCounter)
    conns, procs = [], []
    try:
        for _ in range(2):
            parent, child = spawn.Pipe()
            # liveness 30 s: the readers' timed waits never lapse during the test, so
            # their "waiting" flags stay up while they sleep.
            p = spawn.Process(
                target=_pipe_reader_proc, args=(pipe.entry.base, pipe.path, 30.0, child)
            )
            p.start()
            conns.append(parent)
            procs.append(p)
        (c1, c2), (p1, p2) = conns, procs
        n1 = _ask(c1, "attach")[1]
        n2 = _ask(c2, "attach")[1]
        assert pipe.writer.channel.readers().live == 2, "not done"

        # Both sleep; a write notifies both.
        c1.send(("read", CHUNK))
        c2.send(("read", CHUNK))
        _wait_asleep(pipe.seg, n1, p1.pid)
        _wait_asleep(pipe.seg, n2, p2.pid)
        assert pipe.writer.write(b"1") == 1
        assert bell.rings == 2
        assert _recv(c1) == ("data", b"1")
        assert _recv(c2) == ("data", b"1")

        # n2 leaves: not done, and the next rise notifies n1 only.
        assert _ask(c2, "close") == ("closed",)
        _join(p2)
        assert pipe.writer.channel.readers().live == 1, "not done while n1 is left"
        c1.send(("read", CHUNK))
        _wait_asleep(pipe.seg, n1, p1.pid)
        assert pipe.writer.write(b"2") == 1
        assert bell.rings == 3
        assert _recv(c1) == ("data", b"2")
        assert _slot(pipe.seg, n2, _ACTIVE) == 0

        # n1 leaves: done. The next write fails and notifies nobody.
        assert _ask(c1, "close") == ("closed",)
        _join(p1)
        assert pipe.writer.channel.readers().live == 0
        with pytest.raises(BrokenPipeError):
            pipe.writer.write(b"3")
        assert bell.rings == 3
    finally:
        pipe.close()


def test_cursor_concurrency(cache_dir: Path, spawn: Any) -> None:
    """TestCursor_concurrency: 1000 subscribe / advance / unsubscribe cycles at once.

    4 processes x 10 threads x 25 rounds each open one key that is being written
    (claiming a slot), read a random prefix (advancing their position and thereby the
    producer, window=0) and close (releasing the slot), while the creator's own reader
    holds the entry open. Every prefix is right, no call fails, slots are recycled,
    and afterwards only the creator's slot is active.
    """
    cache = streamcache.StreamCache(cache_dir, window=0, liveness=LIVENESS, cleanup_interval=0)
    key = "cursor-concurrency"
    size, piece = 16 * 1024, 512
    data = _content(size)
    nprocs, nthreads, rounds = 4, 10, 25
    start = spawn.Event()

    def create(w: Any) -> None:
        for i in range(0, size, piece):
            w.write(data[i : i + piece])

    # s0's timeout is a total deadline: it spans the spawns and the whole storm, which
    # take longer than WAIT on a busy machine (it timed out at load 30).
    s0 = cache.stream(key, create, timeout=STORM_WAIT)
    try:
        assert s0.created
        rec = cache._index.read(key_hash(key))
        assert rec is not None
        seg = open_segment(cache_dir, rec)
        q = spawn.Queue()
        procs = [
            spawn.Process(
                target=_subscriber_storm_proc,
                args=(str(cache_dir), key, nthreads, rounds, size, start, q),
            )
            for _ in range(nprocs)
        ]
        for p in procs:
            p.start()
        reports: list[tuple[int, list[str]]] = []
        ready = 0
        while ready < nprocs:
            msg = q.get(timeout=WAIT)
            if msg == "ready":
                ready += 1
            else:
                reports.append(msg)
        start.set()
        while len(reports) < nprocs * nthreads:
            msg = q.get(timeout=WAIT)
            if msg != "ready":
                reports.append(msg)
        for p in procs:
            _join(p)
        assert [bad for _, bad in reports if bad] == []
        assert sum(done for done, _ in reports) == nprocs * nthreads * rounds
        assert seg.offset > 0, "the readers drove the producer"

        # Every storm reader left its slot; only s0's is active, and slots were reused.
        assert seg.state == ipc.STATE_WRITING, "nobody read to the end yet"
        active = [r.slot for r in seg.reader_list()]
        assert len(active) == 1
        used = seg.slots_used
        assert used <= 1 + nprocs * nthreads, f"{used} slots used: released slots not reused"
        assert seg.offset <= size
        seg.close()

        assert s0.read() == data
    finally:
        start.set()
        s0.close()
        assert cache.wait_producers(WAIT)


@pytest.mark.parametrize("leave", ["close", "sigkill"])
def test_cursor_is_done(cache_dir: Path, tmp_path: Path, spawn: Any, leave: str) -> None:
    """TestCursorIsDone: done only after the subscribers drop from >0 to 0, and it stays
    done: once the producer saw no reader left, every write and the close fail, even
    after a new reader has attached to the segment.

    The reader runs in another process and leaves by closing or by being killed
    (SIGKILL; found dead on the producer's next timed wait, window=0).
    """
    pipe = MechPipe(cache_dir, tmp_path, window=0, liveness=LIVENESS)
    procs = []
    try:
        parent, child = spawn.Pipe()
        p = spawn.Process(target=_pipe_reader_proc, args=(pipe.entry.base, pipe.path, 30.0, child))
        p.start()
        procs.append(p)
        _ask(parent, "attach")

        # One subscriber: not done; a write goes through once it is read.
        parent.send(("read", 1))
        assert pipe.writer.write(b"a") == 1
        assert _recv(parent) == ("data", b"a")
        assert not pipe.writer.broken

        # The only subscriber leaves: done.
        if leave == "close":
            assert _ask(parent, "close") == ("closed",)
            _join(p)
        else:
            os.kill(p.pid, signal.SIGKILL)
            p.join(WAIT)
            assert p.exitcode == -signal.SIGKILL
        with pytest.raises(BrokenPipeError):
            pipe.writer.write(b"b")
        assert pipe.writer.broken

        # Stays done, even with a new reader on the segment.
        parent2, child2 = spawn.Pipe()
        p2 = spawn.Process(
            target=_pipe_reader_proc, args=(pipe.entry.base, pipe.path, 30.0, child2)
        )
        p2.start()
        procs.append(p2)
        _ask(parent2, "attach")
        with pytest.raises(BrokenPipeError):
            pipe.writer.write(b"c")
        with pytest.raises(BrokenPipeError):
            pipe.writer.close()
        assert _ask(parent2, "close") == ("closed",)
        _join(p2)
    finally:
        pipe.close()
