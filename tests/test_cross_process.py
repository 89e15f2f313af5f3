"""The cache across processes: one producer host-wide, streaming, back pressure, crashes,
fork and thread safety (docs/design.md, "The cross-process protocol" and "Failure model").

Every test runs real processes (spawn context or os.fork) on real shared memory and
files, synchronised by events and queues; every wait is bounded. Child functions live in
tests/xproc.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xproc
from helpers import finished_size, open_segment
from xproc import HashSink, expect, payload, payload_bytes, payload_chunk, payload_sha

import ipc
import streamcache
from ipc.channel import Channel, unlink_channel
from streamcache.cache import LAYOUT, channel_base, key_hash
from streamcache.disk.filestore import Filestore
from streamcache.disk.index import Index, Record

MiB = 1 << 20
KiB = 1 << 10


def _index(cache_dir: Path) -> Index:
    return Index(str(cache_dir / LAYOUT))


@pytest.fixture
def no_fork_warning() -> Iterator[None]:
    # Python >= 3.12 warns about fork() in a multi-threaded process; these tests fork on
    # purpose (that is what gunicorn --preload does).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# -- 1. storm ---------------------------------------------------------------------------------


def test_storm_16_processes_one_create(cache_dir: Path, spawn: Any, tmp_path: Path) -> None:
    """16 processes released together fetch one cold 32 MiB key: create runs once host-wide,
    everyone gets the same bytes, and the disk holds one copy (Gitaly's
    TestCache_manyConcurrentWrites, across processes)."""
    n, total, chunk = 16, 32 * MiB, 1 * MiB
    streamcache.StreamCache(cache_dir).stop()  # prepare the directory once
    count_path = str(tmp_path / "creates")
    barrier = spawn.Barrier(n)
    out = spawn.Queue()
    procs = [
        spawn.Process(
            target=xproc.storm_fetch,
            args=(str(cache_dir), "storm", "storm-seed", total, chunk, count_path, barrier),
            kwargs={"out": out},
        )
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [expect(out, "fetched", timeout=45) for _ in range(n)]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0

    want = payload_sha("storm-seed", total, chunk)
    assert {r[1] for r in results} == {want}
    assert all(r[2] == total for r in results)
    creators = [r[0] for r in results if r[3]]
    assert len(creators) == 1, f"created flags: {[r[3] for r in results]}"
    assert xproc.read_lines(count_path) == [str(creators[0])]
    assert len(xproc.data_files(cache_dir)) == 1
    assert finished_size(cache_dir, "storm") == total


# -- 2. streaming while the producer is still writing -----------------------------------------


def test_reader_gets_bytes_before_slow_producer_finishes(cache_dir: Path, spawn: Any) -> None:
    """A reader in another process gets the first chunk while the producer is blocked
    before writing the rest: the entry is streamed, not delivered when complete."""
    total, chunk = 4 * MiB, 64 * KiB
    wrote_first, release = spawn.Event(), spawn.Event()
    pq, rq = spawn.Queue(), spawn.Queue()
    producer = spawn.Process(
        target=xproc.slow_producer,
        args=(str(cache_dir), "slow", "slow-seed", total, chunk, wrote_first, release),
        kwargs={"out": pq},
    )
    producer.start()
    try:
        assert wrote_first.wait(20), "the producer never wrote its first chunk"
        reader = spawn.Process(
            target=xproc.first_then_rest_reader,
            args=(str(cache_dir), "slow", chunk),
            kwargs={"out": rq},
        )
        reader.start()
        assert expect(rq, "attached") == (False,)
        (head,) = expect(rq, "first")
        # The producer is still inside create, blocked on `release`, which nobody set.
        assert head == payload_chunk("slow-seed", 0, chunk)
        assert not release.is_set() and producer.is_alive() and pq.empty()
    finally:
        release.set()
    want = payload_sha("slow-seed", total, chunk)
    assert expect(rq, "done") == (want, total)
    assert expect(pq, "fetched") == (want, total, True)
    producer.join(10)
    reader.join(10)
    assert producer.exitcode == 0 and reader.exitcode == 0


# -- 3. back pressure across processes --------------------------------------------------------


def _reader_slot_position(seg: ipc.Segment, pid: int) -> int | None:
    return next((r.position for r in seg.reader_list() if r.reader.pid == pid), None)


def _start_bp_pair(
    cache_dir: Path, spawn: Any, key: str, seed: str, total: int, chunk: int, window: int
) -> tuple[Any, Any, Any, Any, Any, Any, ipc.Segment, int]:
    """A back-pressured producer process and one commanded reader process on ``key``.

    Returns (producer, reader, producer queue, reader queue, commands, progress, the
    entry's segment attached through its index record, the reader's pid)."""
    attached = spawn.Event()
    progress = spawn.Value("q", 0)
    pq, rq, commands = spawn.Queue(), spawn.Queue(), spawn.Queue()
    producer = spawn.Process(
        target=xproc.bp_producer,
        args=(str(cache_dir), key, seed, total, chunk, window, attached, progress),
        kwargs={"out": pq},
    )
    producer.start()
    assert expect(pq, "created") == (True,)
    rec = _index(cache_dir).read(key_hash(key))
    assert rec is not None and rec.pid == producer.pid
    seg = open_segment(cache_dir, rec)
    reader = spawn.Process(
        target=xproc.commanded_reader,
        args=(str(cache_dir), key, attached, commands),
        kwargs={"out": rq},
    )
    reader.start()
    created, reader_pid = expect(rq, "attached")
    assert created is False
    return producer, reader, pq, rq, commands, progress, seg, reader_pid


def _wait_blocked_beyond(seg: ipc.Segment, offset: int) -> int:
    """Wait until the producer is blocked by back pressure at an offset above ``offset``."""
    xproc.wait_until(
        lambda: seg.producer_waiting and seg.offset > offset,
        20,
        f"the producer to block past offset {offset}",
    )
    return seg.offset


def test_back_pressure_across_processes(cache_dir: Path, spawn: Any) -> None:
    """The producer (process A) stops within window + one write of the only reader
    (process B); B's progress alone releases it, step by step; all bytes arrive
    (Gitaly's TestPipe_backpressure, across processes)."""
    window, chunk, total = 1 * MiB, 128 * KiB, 6 * MiB
    producer, reader, pq, rq, commands, progress, seg, rpid = _start_bp_pair(
        cache_dir, spawn, "bp", "bp-seed", total, chunk, window
    )
    try:
        # Before B reads anything the producer runs a window (plus one write) ahead of 0.
        offset = _wait_blocked_beyond(seg, 0)
        assert window < offset <= window + chunk, offset
        assert progress.value == offset - chunk
        pos = 0
        for step in range(4):
            commands.put(chunk)  # B reads one write's worth, then stalls on its queue
            (pos,) = expect(rq, "pos")
            assert pos == (step + 1) * chunk
            offset = _wait_blocked_beyond(seg, offset)
            # B's position is published in its slot of the shared segment.
            assert _reader_slot_position(seg, rpid) == pos
            # Blocked only because it is more than a window ahead, and by at most one write.
            assert window < offset - pos <= window + chunk, (offset, pos)
            # The blocked write has not returned; every earlier one has.
            assert progress.value == offset - chunk
            assert offset < total
        commands.put("all")
        assert expect(rq, "done") == (payload_sha("bp-seed", total, chunk), total)
        assert expect(pq, "create-ok") == (total,)
        assert expect(pq, "exit") == (True,)
    finally:
        seg.close()
    producer.join(10)
    reader.join(10)
    assert producer.exitcode == 0 and reader.exitcode == 0
    assert finished_size(cache_dir, "bp") == total


# -- 4. SIGKILL of the producer ---------------------------------------------------------------


def test_sigkill_producer_mid_stream(cache_dir: Path, spawn: Any) -> None:
    """kill -9 of the producer: every reader process gets ProducerDied; the next fetch
    creates afresh and succeeds; no IPC object is left behind."""
    chunk = 64 * KiB
    wrote_first = spawn.Event()
    pq = spawn.Queue()
    producer = spawn.Process(
        target=xproc.stuck_producer,
        args=(str(cache_dir), "doomed", "doomed-seed", chunk, wrote_first),
        kwargs={"out": pq},
    )
    producer.start()
    assert wrote_first.wait(20)
    queues = [spawn.Queue() for _ in range(3)]
    readers = [
        spawn.Process(
            target=xproc.dying_reader, args=(str(cache_dir), "doomed", chunk), kwargs={"out": q}
        )
        for q in queues
    ]
    for r in readers:
        r.start()
    for q in queues:
        assert expect(q, "attached") == (False,)
        assert expect(q, "first") == (payload_chunk("doomed-seed", 0, chunk),)
    os.kill(producer.pid, signal.SIGKILL)
    producer.join(10)
    assert producer.exitcode == -signal.SIGKILL
    for q in queues:
        name, is_died, is_create_error, text = expect(q, "ended")
        assert (name, is_died, is_create_error) == ("ProducerDied", True, True), text
    for r in readers:
        r.join(10)
        assert r.exitcode == 0

    cache = streamcache.StreamCache(cache_dir, liveness=0.2)
    try:
        sink = io.BytesIO()
        res = cache.fetch("doomed", sink, xproc.writer_of("fresh", 3 * MiB, chunk), timeout=20)
        assert res == (3 * MiB, True)
        assert sink.getvalue() == payload_bytes("fresh", 3 * MiB, chunk)
        assert cache.wait_producers(10)
    finally:
        cache.stop()
    # The dead producer's file and IPC objects are gone without any cleanup pass.
    assert len(xproc.data_files(cache_dir)) == 1
    assert xproc.ipc_names(cache_dir) == []


# -- 5. SIGKILL of the only reader under back pressure ----------------------------------------


def test_sigkill_only_reader_breaks_blocked_producer(cache_dir: Path, spawn: Any) -> None:
    """kill -9 of the only reader while the producer (another process) is blocked on it:
    the producer's write raises BrokenPipeError, and the entry leaves the index."""
    window, chunk, total = 1 * MiB, 128 * KiB, 8 * MiB
    producer, reader, pq, rq, commands, _progress, seg, _rpid = _start_bp_pair(
        cache_dir, spawn, "orphan", "orphan-seed", total, chunk, window
    )
    try:
        offset = _wait_blocked_beyond(seg, 0)
        assert window < offset <= window + chunk
        commands.put(chunk)
        (pos,) = expect(rq, "pos")
        offset = _wait_blocked_beyond(seg, offset)
        assert window < offset - pos <= window + chunk
        os.kill(reader.pid, signal.SIGKILL)  # left unreaped (a zombie) for now
        name, text = expect(pq, "create-failed")
        assert name == "BrokenPipeError", text
        assert expect(pq, "exit") == (True,)
    finally:
        seg.close()
    producer.join(10)
    assert producer.exitcode == 0
    reader.join(10)
    assert reader.exitcode == -signal.SIGKILL
    h = key_hash("orphan")
    assert _index(cache_dir).read(h) is None
    assert not os.path.lexists(_index(cache_dir).record_path(h))

    cache = streamcache.StreamCache(cache_dir, liveness=0.2)
    try:
        sink = HashSink()
        res = cache.fetch("orphan", sink, xproc.writer_of("again", 2 * MiB, chunk), timeout=20)
        assert res == (2 * MiB, True)
        assert sink.hexdigest() == payload_sha("again", 2 * MiB, chunk)
        assert cache.wait_producers(10)
    finally:
        cache.stop()


# -- 6. fork while a thread is producing ------------------------------------------------------


def _send(fd: int, obj: object) -> None:
    os.write(fd, (json.dumps(obj) + "\n").encode())


class _Lines:
    """Reads JSON lines a forked child writes to a pipe, each wait bounded."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def get(self, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if not xproc.readable(self.fd, left):
                raise AssertionError("no message from the forked child in time")
            data = os.read(self.fd, 65536)
            if not data:
                raise AssertionError(f"the forked child closed its pipe; got {self.buf!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        if "error" in msg:
            raise AssertionError(f"the forked child failed:\n{msg['error']}")
        return msg


def _child_fetch_report(
    cache: streamcache.StreamCache, key: str, seed: str, total: int
) -> dict[str, Any]:
    sink = HashSink()
    res = cache.fetch(key, sink, xproc.writer_of(seed, total, 64 * KiB), timeout=20)
    return {"sha": sink.hexdigest(), "written": res.written, "created": res.created}


def test_fork_while_a_thread_is_producing(cache_dir: Path, no_fork_warning: None) -> None:
    """A thread of this process is mid-entry when the process forks: the child streams
    the same entry to the end once the parent's producer goes on, and can create and
    fetch its own key."""
    total, chunk = 3 * MiB, 64 * KiB
    cache = streamcache.StreamCache(cache_dir, liveness=0.2)
    first, release = threading.Event(), threading.Event()

    def create(w: Any) -> None:
        chunks = payload("fork-seed", total, chunk)
        w.write(next(chunks))
        first.set()
        if not release.wait(20):
            raise TimeoutError("never released")
        for c in chunks:
            w.write(c)

    result: dict[str, Any] = {}

    def parent_fetch() -> None:
        sink = HashSink()
        try:
            result["res"] = cache.fetch("forked", sink, create, timeout=30)
            result["sha"] = sink.hexdigest()
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=parent_fetch)
    t.start()
    pid = -1
    try:
        assert first.wait(20)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(r)
                with cache.stream("forked", xproc.forbidden_create, timeout=20) as s:
                    _send(w, {"attached": s.created})
                    sink = HashSink()
                    n = s.copy_to(sink)
                _send(w, {"same": sink.hexdigest(), "written": n})
                _send(w, {"own": _child_fetch_report(cache, "child-own", "child-seed", MiB)})
                cache.wait_producers(10)
                code = 0
            except BaseException:
                import traceback

                _send(w, {"error": traceback.format_exc()})
            finally:
                os._exit(code)
        os.close(w)
        lines = _Lines(r)
        assert lines.get() == {"attached": False}
        release.set()
        assert lines.get() == {"same": payload_sha("fork-seed", total, chunk), "written": total}
        own = lines.get()["own"]
        assert own == {
            "sha": payload_sha("child-seed", MiB, 64 * KiB),
            "written": MiB,
            "created": True,
        }
        assert xproc.wait_pid(pid, 20) == 0
        pid = -1
        os.close(r)
    finally:
        release.set()
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        t.join(20)
        cache.stop()
    assert "error" not in result, result.get("error")
    assert result["res"] == (total, True)
    assert result["sha"] == payload_sha("fork-seed", total, chunk)
    assert cache.wait_producers(10)


# -- 7. SIGKILL inside the index's critical section -------------------------------------------


def test_sigkill_inside_index_lock(cache_dir: Path, spawn: Any) -> None:
    """A process killed while holding a key's index lock stripe blocks nobody after the
    kernel releases its lock."""
    cache = streamcache.StreamCache(cache_dir, liveness=0.2)
    h = key_hash("locked-key")
    locked, out = spawn.Event(), spawn.Queue()
    holder = spawn.Process(
        target=xproc.hold_index_lock, args=(str(cache_dir), h, locked), kwargs={"out": out}
    )
    holder.start()
    try:
        assert locked.wait(20), "the child never took the lock"
        # The stripe really is held by the child: a non-waiting attempt fails.
        with pytest.raises(TimeoutError):
            with _index(cache_dir).locked(h, 0):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        sink = io.BytesIO()
        res = cache.fetch("locked-key", sink, xproc.writer_of("lk", 100_000, 4096), timeout=20)
        assert res == (100_000, True)
        assert sink.getvalue() == payload_bytes("lk", 100_000, 4096)
        assert cache.wait_producers(10)
    finally:
        cache.stop()
    holder.join(10)
    assert holder.exitcode == -signal.SIGKILL


# -- 8. fork after construction ---------------------------------------------------------------


class PassCountingCache(streamcache.StreamCache):
    """A StreamCache whose cleanup passes (real ones) are recorded with the pid that ran them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.passes: list[tuple[int, bool]] = []
        self.pass_errors: list[BaseException] = []
        self.pass_done = threading.Event()
        super().__init__(*args, **kwargs)

    def forget_passes(self) -> None:
        """In a forked child, before its first use: passes are counted anew."""
        self.passes = []
        self.pass_errors = []
        self.pass_done = threading.Event()

    def gc(self) -> Any:
        try:
            report = super().gc()
        except BaseException as exc:
            self.pass_errors.append(exc)
            raise
        self.passes.append((os.getpid(), report.ran))
        self.pass_done.set()
        return report


def _fork_child_main(cache: PassCountingCache, w: int, index: int, count_path: str) -> None:
    cache.forget_passes()
    # A hit on the entry the parent made before the fork.
    sink = HashSink()
    res = cache.fetch("pre", sink, xproc.forbidden_create, timeout=20)
    _send(w, {"pre": [sink.hexdigest(), res.written, res.created]})

    # A key every child (and the parent) asks for at once: one create in all.
    def shared_create(wr: Any) -> None:
        xproc.append_line(count_path, str(os.getpid()))
        for c in payload("shared-seed", 2 * MiB, 64 * KiB):
            wr.write(c)

    sink = HashSink()
    res = cache.fetch("shared", sink, shared_create, timeout=20)
    _send(w, {"shared": [sink.hexdigest(), res.written, res.created]})
    _send(w, {"own": _child_fetch_report(cache, f"own-{index}", f"own-seed-{index}", MiB)})
    # The child's own cleanup loop runs passes without error.
    ok = cache.pass_done.wait(20)
    _send(
        w,
        {
            "passes": [list(p) for p in cache.passes],
            "errors": [repr(e) for e in cache.pass_errors],
            "ok": ok,
        },
    )
    cache.stop()
    cache.wait_producers(10)


def test_fork_after_construction(cache_dir: Path, tmp_path: Path, no_fork_warning: None) -> None:
    """A cache built before fork (gunicorn --preload) works in every child and still in the
    parent: hits, misses, one create for a key everyone wants, and cleanup loops on both
    sides of the fork."""
    count_path = str(tmp_path / "shared-creates")
    cache = PassCountingCache(cache_dir, liveness=0.2, cleanup_interval=0.1)
    children: dict[int, _Lines] = {}
    try:
        pre = payload_bytes("pre-seed", MiB, 64 * KiB)
        sink = io.BytesIO()
        assert cache.fetch("pre", sink, xproc.writer_of("pre-seed", MiB, 64 * KiB)) == (MiB, True)
        assert sink.getvalue() == pre
        assert cache.pass_done.wait(20), "the parent's cleanup loop never ran before the fork"
        for i in range(3):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    os.close(r)
                    _fork_child_main(cache, w, i, count_path)
                    code = 0
                except BaseException:
                    import traceback

                    _send(w, {"error": traceback.format_exc()})
                finally:
                    os._exit(code)
            os.close(w)
            children[pid] = _Lines(r)

        # The parent goes on too: the shared key, a miss of its own, and its cleanup loop.
        before = len(cache.passes)

        def shared_create(wr: Any) -> None:
            xproc.append_line(count_path, str(os.getpid()))
            for c in payload("shared-seed", 2 * MiB, 64 * KiB):
                wr.write(c)

        sink2 = HashSink()
        assert cache.fetch("shared", sink2, shared_create, timeout=20).written == 2 * MiB
        assert sink2.hexdigest() == payload_sha("shared-seed", 2 * MiB, 64 * KiB)
        mine = HashSink()
        assert cache.fetch("parent-own", mine, xproc.writer_of("p", MiB, 4096), timeout=20) == (
            MiB,
            True,
        )
        xproc.wait_until(lambda: len(cache.passes) > before, 20, "a parent pass after the fork")
        assert all(pid == os.getpid() for pid, _ in cache.passes)

        pre_sha = hashlib.sha256(pre).hexdigest()
        shared_sha = payload_sha("shared-seed", 2 * MiB, 64 * KiB)
        for i, (pid, lines) in enumerate(children.items()):
            assert lines.get() == {"pre": [pre_sha, MiB, False]}
            got = lines.get()["shared"]
            assert got[:2] == [shared_sha, 2 * MiB]
            assert lines.get()["own"] == {
                "sha": payload_sha(f"own-seed-{i}", MiB, 64 * KiB),
                "written": MiB,
                "created": True,
            }
            report = lines.get()
            assert report["ok"] and report["errors"] == []
            assert report["passes"] and all(p == pid for p, _ in report["passes"])
            assert xproc.wait_pid(pid, 20) == 0
            os.close(lines.fd)
        children.clear()
        assert len(xproc.read_lines(count_path)) == 1
        assert cache.pass_errors == []
    finally:
        for pid, lines in children.items():
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(lines.fd)
        cache.stop()
        cache.wait_producers(10)


# -- 9. pid reuse -----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["self", "other process"])
def test_pid_reuse_is_not_life(cache_dir: Path, spawn: Any, who: str) -> None:
    """A producer identity whose pid is alive but whose start time differs is dead: the
    liveness check says so, and a fetch on a key whose in-flight record (and segment)
    names it creates afresh instead of waiting for a producer that will never write.

    Independent of uptime: start times count from boot, so the dead process's start is
    taken between boot and the live one's (the pid's earlier owner started earlier),
    never below 0. tests/ipc/test_uptime_independence.py runs this test a few seconds
    after (a time namespace's) boot."""
    stop = spawn.Event()
    idler = None
    if who == "self":
        pid, start = ipc.current_process()
    else:
        out = spawn.Queue()
        idler = spawn.Process(target=xproc.idle, args=(stop,), kwargs={"out": out})
        idler.start()
        pid, start = expect(out, "started")
        assert ipc.start_time(pid) == start
    try:
        # Only a process started at boot (tick 0) has no earlier start to take.
        wrong = start / 2 if start >= 0.1 else start + 1000.0
        assert wrong >= 0 and abs(wrong - start) >= 0.05
        assert ipc.is_alive(pid, start)
        assert not ipc.is_alive(pid, wrong)
        assert not ipc.is_alive(pid, start + 1000.0)

        cache = streamcache.StreamCache(cache_dir, liveness=0.2)
        root = str(cache_dir / LAYOUT)
        h = key_hash("reused")
        # A plausible in-flight entry made by "pid": a partly written data file, a real
        # segment that names the producer and has a live reader, and its record.
        files = Filestore(root)
        name = f"{'ab' * 8}-{pid:x}-0"  # a data file name carries its creator's pid
        os.makedirs(os.path.dirname(files.path(name)), mode=0o700, exist_ok=True)
        fd = os.open(files.path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        stale = b"stale partial bytes"
        os.write(fd, stale)
        os.close(fd)
        prefix = ipc.prefix_for(cache_dir)
        entry = Channel.create(prefix, ipc.ProcessId(pid, wrong), 64, channel_base(prefix, name))
        try:
            entry.seg.publish_offset(len(stale))
            claimed = entry.seg.claim_slot(ipc.current_process())
            assert claimed is not None and claimed.index == 0
            now = time.time()
            rec = Record(h, name, pid, wrong, now + 300)
            index = Index(root)
            with index.locked(h, 5):
                index.write(rec)

            sink = io.BytesIO()
            res = cache.fetch("reused", sink, xproc.writer_of("real", 300_000, 4096), timeout=10)
            assert res == (300_000, True)
            assert sink.getvalue() == payload_bytes("real", 300_000, 4096)
            assert cache.wait_producers(10)
            assert index.read(h) is None, "the entry is finished: no record left"
            assert finished_size(cache_dir, "reused") == 300_000
            assert not os.path.exists(files.path(name))  # the stale file was discarded
            assert entry.base not in {o.base for o in ipc.list_objects(ipc.prefix_for(cache_dir))}
        finally:
            entry.close()
            unlink_channel(entry.base)
            cache.stop()
    finally:
        stop.set()
        if idler is not None:
            idler.join(10)


# -- 10. threads ------------------------------------------------------------------------------


def test_many_threads_many_keys(cache_dir: Path) -> None:
    """Many threads of one process fetch many keys at once (gthread workers): every key is
    created once, every thread gets every key's bytes."""
    threads_n, keys = 12, [f"k{i}" for i in range(6)]
    sizes = {k: (i + 1) * 384 * KiB + 7 for i, k in enumerate(keys)}
    cache = streamcache.StreamCache(cache_dir, window=256 * KiB, liveness=0.2)
    creates: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    got: dict[tuple[int, str], tuple[str, int, bool]] = {}

    def create_for(key: str) -> Any:
        def create(w: Any) -> None:
            with lock:
                creates[key] += 1
            for c in payload(key, sizes[key], 32 * KiB):
                w.write(c)

        return create

    def worker(i: int) -> None:
        try:
            order = list(keys)
            random.Random(i).shuffle(order)
            barrier.wait(20)
            for key in order:
                if i % 3 == 0:
                    with cache.stream(key, create_for(key), timeout=20) as s:
                        sink = HashSink()
                        for chunk in s:
                            sink.write(chunk)
                        got[(i, key)] = (sink.hexdigest(), sink.n, s.created)
                else:
                    sink = HashSink()
                    res = cache.fetch(key, sink, create_for(key), timeout=20)
                    got[(i, key)] = (sink.hexdigest(), res.written, res.created)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    try:
        for t in ts:
            t.start()
        for t in ts:
            t.join(25)
        assert not any(t.is_alive() for t in ts), "a fetching thread hung"
        assert errors == []
        assert cache.wait_producers(10)
    finally:
        cache.stop()
    assert creates == Counter(dict.fromkeys(keys, 1))
    for key in keys:
        want = payload_sha(key, sizes[key], 32 * KiB)
        results = [got[(i, key)] for i in range(threads_n)]
        assert {(sha, n) for sha, n, _ in results} == {(want, sizes[key])}
        assert sum(created for _, _, created in results) == 1
    assert len(xproc.data_files(cache_dir)) == len(keys)
