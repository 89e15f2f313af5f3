"""Gitaly's internal/streamcache/pipe_test.go, ported.

Gitaly's pipe (one writer, many readers, each with a cursor) is here
``streamcache/entry/pipe.py``: an :class:`EntryWriter` appending to the entry's data file and
publishing its offset in a shared-memory :class:`ipc.Segment`, and
:class:`PipeReader` objects, one slot each, in any process. The tests go through
the public API (``StreamCache.stream`` / ``fetch`` with ``window=0``, Gitaly's
back-pressure rule) where that is the natural reading, and through
EntryWriter/PipeReader/Channel directly, with real shared memory and readers in other
processes, where the Go test is about the pipe mechanics.

Child-process functions live at module level (spawn context).
"""

from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from helpers import ask as _ask
from helpers import join_ok as _join
from helpers import recv as _recv
from helpers import wait_until as _wait_until

import ipc
import streamcache
from ipc.channel import Channel, unlink_channel
from streamcache.deadline import deadline_for
from streamcache.entry.pipe import CHUNK, PipeReader
from streamcache.entry.writer import EntryWriter
from streamcache.errors import describe

LIVENESS = 0.2
WAIT = 20.0  # bound for every wait in these tests


# -- helpers -------------------------------------------------------------------------


def _cache(cache_dir: Path | str, window: int = 0) -> streamcache.StreamCache:
    return streamcache.StreamCache(cache_dir, window=window, liveness=LIVENESS, cleanup_interval=0)


def _unexpected_create(w: Any) -> None:
    """A create that must never run (the entry exists); writes a marker if it does."""
    w.write(b"UNEXPECTED CREATE")


def _hello_create(w: Any) -> None:
    w.write(b"hello world")


def _fds_into(directory: Path) -> list[str]:
    """Targets of this process's open descriptors that lie under ``directory``, but for
    the index's lock files (a process keeps those open for its whole life)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)) and not target.endswith(".lock"):
            found.append(target)
    return found


class CountingBell:
    """A real doorbell that also counts its waits and timeouts (in the waiting process)."""

    def __init__(self, bell: ipc.Doorbell) -> None:
        self._bell = bell
        self.waits = 0
        self.timeouts = 0
        self._cond = threading.Condition()

    def ring(self, times: int = 1) -> None:
        self._bell.ring(times)

    def wait(self, timeout: float) -> bool:
        rang = self._bell.wait(timeout)
        with self._cond:
            self.waits += 1
            self.timeouts += not rang
            self._cond.notify_all()
        return rang

    def wait_timeouts(self, n: int, timeout: float = WAIT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.timeouts >= n, timeout):
                raise AssertionError(f"the writer did not time out {n} times")

    def close(self) -> None:
        self._bell.close()


class MechPipe:
    """A bare pipe for the mechanics tests: a data file, an entry's real IPC objects
    (named under the cache dir's prefix, so the leak check covers them) and an EntryWriter."""

    def __init__(self, cache_dir: Path, tmp_path: Path, window: int, liveness: float) -> None:
        cache_dir.mkdir(mode=0o700, exist_ok=True)
        self.path = str(tmp_path / "pipe-data")
        self.wfd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.entry = Channel.create(ipc.prefix_for(cache_dir), ipc.current_process(), 64)
        self.seg = self.entry.seg
        self.writer = EntryWriter(self.wfd, self.entry, window, liveness)
        self._closed = False

    def finish(self) -> None:
        """What the producer does after create returned: check, publish done, wake readers."""
        self.writer.close()
        self.seg.finish(self.writer.offset)
        self.entry.ring_all()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.seg.state == ipc.STATE_WRITING:
            self.seg.fail("test ended")
            self.entry.ring_all()
        unlink_channel(self.entry.base)
        self.entry.close()
        os.close(self.wfd)


# -- child processes (spawn) -----------------------------------------------------------


def _stream_readers_proc(cache_dir: str, key: str, ids: list[int], q: Any) -> None:
    """Several reader threads in one process, each streaming ``key`` to its end."""
    cache = _cache(cache_dir)

    def run(i: int) -> None:
        try:
            with cache.stream(key, _unexpected_create, timeout=WAIT) as s:
                q.put(("attached", i))
                data = s.read()
                q.put(("result", i, s.created, data, None))
        except BaseException as exc:
            q.put(("result", i, None, b"", describe(exc)))

    threads = [threading.Thread(target=run, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)


def _fetch_proc(cache_dir: str, key: str, q: Any) -> None:
    """One fetch of ``key`` into a BytesIO; reports (created, bytes) or the error."""
    try:
        out = io.BytesIO()
        res = _cache(cache_dir).fetch(key, out, _unexpected_create, timeout=WAIT)
        q.put((res.created, out.getvalue(), None))
    except BaseException as exc:
        q.put((None, b"", describe(exc)))


def _controlled_stream_proc(cache_dir: str, key: str, conn: Connection) -> None:
    """A reader of ``key`` driven by commands: ("read", n), ("close",)."""
    cache = _cache(cache_dir)
    s = cache.stream(key, _unexpected_create, timeout=WAIT)
    conn.send(("attached", s.created))
    while True:
        cmd = conn.recv()
        try:
            if cmd[0] == "read":
                conn.send(("data", s.read(cmd[1])))
            elif cmd[0] == "close":
                s.close()
                conn.send(("closed",))
                return
        except BaseException as exc:
            conn.send(("error", describe(exc)))


def _pipe_reader_proc(base: str, path: str, liveness: float, conn: Connection) -> None:
    """A bare PipeReader in its own process, driven by commands.

    ("attach",) claims a slot; ("read", n) reads up to n bytes; ("readall",) reads to
    the end; ("close",) leaves. Each read also reports the producer's lead over this
    reader (segment offset minus position) as observed just before reading.
    """
    entry = Channel.open(base)
    fd = os.open(path, os.O_RDONLY)
    seg = entry.seg
    reader: PipeReader | None = None
    while True:
        cmd = conn.recv()
        try:
            if cmd[0] == "attach":
                slot = seg.claim_slot(ipc.current_process())
                reader = PipeReader(fd, entry, slot, liveness, None, None)
                conn.send(("attached", None if slot is None else slot.index))
            elif cmd[0] == "read":
                assert reader is not None
                lead = seg.offset - reader.position
                data = reader.read(cmd[1], deadline_for(WAIT, ipc.SYSTEM))
                conn.send(("data", data, lead))
            elif cmd[0] == "readall":
                assert reader is not None
                deadline = deadline_for(WAIT, ipc.SYSTEM)
                parts, leads = [], []
                while True:
                    leads.append(seg.offset - reader.position)
                    chunk = reader.read(CHUNK, deadline)
                    if not chunk:
                        break
                    parts.append(chunk)
                conn.send(("data", b"".join(parts), max(leads)))
            elif cmd[0] == "close":
                assert reader is not None
                reader.close()
                conn.send(("closed",))
                return
        except BaseException as exc:
            conn.send(("error", describe(exc)))


def _opener_proc(cache_dir: str, key: str, n: int, start: Any, q: Any) -> None:
    """``n`` threads that, once ``start`` is set, open ``key``, maybe read it, and close."""
    cache = _cache(cache_dir)

    def run(i: int) -> None:
        if not start.wait(WAIT):
            q.put(("unexpected", "start was never set"))
            return
        try:
            with cache.stream(key, _hello_create, timeout=WAIT) as s:
                data = s.read() if i % 2 else None
                q.put(("ok", s.created, data))
        except streamcache.CreateError as exc:
            q.put(("create_error", type(exc).__name__, str(exc)))
        except BaseException as exc:
            q.put(("unexpected", describe(exc)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    q.put(("ready",))
    for t in threads:
        t.join(WAIT)


# -- tests -----------------------------------------------------------------------------


def test_pipe(cache_dir: Path, spawn: Any) -> None:
    """TestPipe: 1 writer, 10 readers (in several processes); each gets all bytes exactly.

    The writer writes 4096 random bytes one byte per write, under window=0, after all
    ten readers are attached: the creator's own stream here and 3 x 3 reader threads
    in three other processes.
    """
    cache = _cache(cache_dir)
    key = "test-pipe"
    data = os.urandom(4096)
    all_attached = threading.Event()

    def create(w: Any) -> None:
        if not all_attached.wait(WAIT):
            raise AssertionError("readers did not attach")
        for i in range(len(data)):
            assert w.write(data[i : i + 1]) == 1

    q = spawn.Queue()
    groups = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with cache.stream(key, create, timeout=WAIT) as s0:
        assert s0.created
        procs = [
            spawn.Process(target=_stream_readers_proc, args=(str(cache_dir), key, g, q))
            for g in groups
        ]
        for p in procs:
            p.start()
        results: dict[int, tuple[Any, bytes, Any]] = {}
        attached = 0
        while attached < 9:
            msg = q.get(timeout=WAIT)
            if msg[0] == "attached":
                attached += 1
            else:
                raise AssertionError(f"reader {msg[1]} failed before writing began: {msg}")
        all_attached.set()
        out0 = s0.read()
    while len(results) < 9:
        msg = q.get(timeout=WAIT)
        if msg[0] == "result":
            results[msg[1]] = (msg[2], msg[3], msg[4])
    for p in procs:
        _join(p)
    assert cache.wait_producers(WAIT)

    assert out0 == data
    for i in range(1, 10):
        created, out, err = results[i]
        assert err is None, f"reader {i}: {err}"
        assert created is False, f"reader {i} ran create"
        assert out == data, f"reader {i} got {len(out)} bytes, not the input"


def test_pipe_read_after_close(cache_dir: Path, spawn: Any) -> None:
    """TestPipe_readAfterClose: after the writer finished, a new reader reads all from 0.

    Closing the finished writer again fails (Gitaly: the second Close errors). New
    readers, here and in another process, read the whole entry from offset 0.
    """
    cache = _cache(cache_dir)
    key = "read-after-close"
    text = b"hello world"
    writers: list[Any] = []

    def create(w: Any) -> None:
        writers.append(w)
        for i in range(len(text)):
            w.write(text[i : i + 1])

    with cache.stream(key, create, timeout=WAIT) as s1:
        assert s1.created
        assert s1.read() == text
    assert cache.wait_producers(WAIT), "the writer should have finished"

    # The finished writer's second close fails (Gitaly: errWriterAlreadyClosed).
    with pytest.raises((ValueError, OSError)):
        writers[0].close()

    # A new reader in this process and one in another process: from offset 0, a hit.
    with cache.stream(key, _unexpected_create, timeout=WAIT) as s2:
        assert not s2.created
        assert s2.read() == text
    q = spawn.Queue()
    p = spawn.Process(target=_fetch_proc, args=(str(cache_dir), key, q))
    p.start()
    created, out, err = q.get(timeout=WAIT)
    _join(p)
    assert err is None, err
    assert (created, out) == (False, text)


def test_pipe_read_after_close_stale_writer(cache_dir: Path, tmp_path: Path) -> None:
    """TestPipe_readAfterClose (writer side): once finished, the writer is closed and a
    late write touches no file. Gitaly's pipe returns errWriterAlreadyClosed; here a
    ``create`` that kept ``w`` and writes after returning must not write anywhere."""
    cache = _cache(cache_dir)
    writers: list[Any] = []

    def create(w: Any) -> None:
        writers.append(w)
        w.write(b"hello world")

    out = io.BytesIO()
    assert cache.fetch("stale-writer", out, create, timeout=WAIT) == (11, True)
    assert cache.wait_producers(WAIT)
    w = writers[0]
    # An unrelated file opened afterwards takes the lowest free descriptor numbers,
    # so one of these reuses the number the writer held.
    victims = []
    try:
        for i in range(64):
            victims.append(os.open(tmp_path / f"victim{i}", os.O_RDWR | os.O_CREAT, 0o600))
        with pytest.raises((ValueError, OSError)):
            w.write(b"LATE")
        touched = [fd for fd in victims if os.fstat(fd).st_size]
    finally:
        for fd in victims:
            os.close(fd)
    assert touched == [], "a late write through a finished writer landed in another file"
    assert w.closed


class _Progress:
    """Writes returned by the writer thread, with a condition to wait on."""

    def __init__(self) -> None:
        self.count = 0
        self.error: BaseException | None = None
        self.done = False
        self.cond = threading.Condition()

    def wait_for(self, pred: Callable[[], bool], what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(pred, WAIT):
                raise AssertionError(f"timed out waiting for {what}")


def _write_bytes(
    w: EntryWriter, data: bytes, progress: _Progress, after: Callable[[], None]
) -> None:
    """Gitaly's writeBytes: one byte per write, counting writes that returned."""
    try:
        for i in range(len(data)):
            assert w.write(data[i : i + 1]) == 1
            with progress.cond:
                progress.count += 1
                progress.cond.notify_all()
        after()
    except BaseException as exc:
        with progress.cond:
            progress.error = exc
    finally:
        with progress.cond:
            progress.done = True
            progress.cond.notify_all()


def test_pipe_backpressure(cache_dir: Path, tmp_path: Path, spawn: Any) -> None:
    """TestPipe_backpressure: with window=0 the writer is at most one write ahead of
    the fastest reader; it blocks, resumes when the reader reads, and loses nothing.

    The reader runs in another process. "Blocked" is shown without timing: the writer's
    own doorbell waits time out three times in a row while its offset stays put.
    """
    text = b"hello world"
    pipe = MechPipe(cache_dir, tmp_path, window=0, liveness=0.05)
    bell = CountingBell(pipe.entry.writer_bell)
    pipe.entry.writer_bell = bell  # type: ignore[assignment]
    parent, child = spawn.Pipe()
    proc = spawn.Process(target=_pipe_reader_proc, args=(pipe.entry.base, pipe.path, 30.0, child))
    progress = _Progress()
    writer_thread = threading.Thread(
        target=_write_bytes, args=(pipe.writer, text, progress, pipe.finish)
    )
    try:
        proc.start()
        slot = _ask(parent, "attach")[1]
        assert slot is not None
        writer_thread.start()

        def position() -> int:
            info = pipe.seg.slot_info(slot)
            return info.position if info is not None else 0

        output = b""
        for step in (1, 2):
            _, data, lead = _ask(parent, "read", 1)
            assert len(data) == 1
            assert lead <= 1
            output += data
            # The writer wrote one byte more, then blocks: it waits (and times out,
            # since nobody reads) again and again without writing.
            _wait_until(lambda step=step: pipe.seg.offset == step + 1, "the next write")
            bell.wait_timeouts(bell.timeouts + 3)
            assert pipe.seg.offset == step + 1, "writer should be blocked one write ahead"
            assert position() == step
            with progress.cond:
                assert progress.count == step, "the blocked write must not have returned"
                assert progress.error is None

        _, rest, max_lead = _ask(parent, "readall")
        output += rest
        progress.wait_for(lambda: progress.done, "the writer to finish")
        assert progress.error is None, describe(progress.error)
        assert output == text
        assert max_lead <= 1, "the writer got more than one write ahead of the reader"
        assert progress.count == len(text)
        assert pipe.seg.state == ipc.STATE_DONE
        _ask(parent, "close")
        _join(proc)
    finally:
        pipe.close()
        writer_thread.join(WAIT)


def test_pipe_close_when_all_readers_leave(cache_dir: Path, spawn: Any) -> None:
    """TestPipe_closeWhenAllReadersLeave: the writer goes on while any reader is left;
    when all leave before it finishes, its next write raises BrokenPipeError, the entry
    fails and leaves the index.

    Readers: the creator's stream here (pr1) and one in another process (pr2).
    """
    cache = _cache(cache_dir)
    key = "all-readers-leave"
    text = b"hello world"
    go = threading.Event()
    progress = _Progress()

    def create(w: Any) -> None:
        if not go.wait(WAIT):
            raise AssertionError("not started")
        try:
            for i in range(len(text)):
                w.write(text[i : i + 1])
                with progress.cond:
                    progress.count += 1
                    progress.cond.notify_all()
        except BaseException as exc:
            with progress.cond:
                progress.error = exc
                progress.cond.notify_all()
            raise

    pr1 = cache.stream(key, create, timeout=WAIT)
    try:
        assert pr1.created
        parent, child = spawn.Pipe()
        proc = spawn.Process(target=_controlled_stream_proc, args=(str(cache_dir), key, child))
        proc.start()
        assert _recv(parent) == ("attached", False), "pr2 should attach to the entry in flight"
        go.set()

        # Nobody reads: the first write cannot return (window=0).
        with progress.cond:
            assert progress.count == 0 and progress.error is None, "writer should still be blocked"

        pr1.close()
        # pr2 is left: the writer must still work. pr2 reads one byte, which lets the
        # first write return; the writer is then blocked in its second write.
        assert _ask(parent, "read", 1) == ("data", b"h")
        progress.wait_for(lambda: progress.count == 1 or progress.error is not None, "1st write")
        assert progress.error is None, "writer should not fail while a reader is left"

        assert _ask(parent, "close") == ("closed",)
        _join(proc)
        progress.wait_for(lambda: progress.error is not None, "the writer to fail")
        assert isinstance(progress.error, BrokenPipeError)
        assert progress.count == 1
        assert cache.wait_producers(WAIT)
    finally:
        go.set()
        pr1.close()

    # The failed entry left the index: the next fetch creates afresh.
    out = io.BytesIO()
    assert cache.fetch(key, out, _hello_create, timeout=WAIT) == (11, True)
    assert out.getvalue() == text


def test_pipe_close_wrong_order(cache_dir: Path) -> None:
    """TestPipe_closeWrongOrder: the last reader closes before the writer, so the pipe
    breaks: the next write and the close raise BrokenPipeError, the data file is closed,
    and a new open does not attach to the broken entry (it creates afresh)."""
    cache = _cache(cache_dir)
    key = "wrong-order"
    wrote_hello = threading.Event()
    reader_closed = threading.Event()
    outcome: dict[str, BaseException | None] = {}

    def create(w: Any) -> None:
        w.write(b"hello")
        wrote_hello.set()
        if not reader_closed.wait(WAIT):
            raise AssertionError("reader never closed")
        for what, op in (("write", lambda: w.write(b"world")), ("close", w.close)):
            try:
                op()
                outcome[what] = None
            except BaseException as exc:
                outcome[what] = exc

    s = cache.stream(key, create, timeout=WAIT)
    try:
        assert s.created
        got = b""
        while len(got) < 5:
            chunk = s.read(5 - len(got))
            assert chunk, "unexpected end"
            got += chunk
        assert got == b"hello"
        assert wrote_hello.wait(WAIT)
    finally:
        s.close()  # the last reader leaves before the writer is done
        reader_closed.set()
    assert cache.wait_producers(WAIT)

    assert isinstance(outcome["write"], BrokenPipeError), "writes should fail"
    assert isinstance(outcome["close"], BrokenPipeError), "closing should fail"
    assert _fds_into(cache_dir) == [], "the data file should be closed"

    # "Opening should fail": the broken entry is gone, a new open creates afresh.
    with cache.stream(key, _hello_create, timeout=WAIT) as s2:
        assert s2.created
        assert s2.read() == b"hello world"


def test_pipe_close_wrong_order_writes_nothing(cache_dir: Path, tmp_path: Path) -> None:
    """TestPipe_closeWrongOrder (file side): the write that fails because all readers
    left writes nothing: Gitaly checks before writing ("prevent writing bytes no-one
    will read")."""
    pipe = MechPipe(cache_dir, tmp_path, window=1 << 20, liveness=LIVENESS)
    try:
        rfd = os.open(pipe.path, os.O_RDONLY)
        reader_entry = Channel.open(pipe.entry.base)
        slot = reader_entry.seg.claim_slot(ipc.current_process())
        reader = PipeReader(rfd, reader_entry, slot, LIVENESS, None, None)
        assert pipe.writer.write(b"hello") == 5
        reader.close()
        with pytest.raises(BrokenPipeError):
            pipe.writer.write(b"world")
        assert os.fstat(pipe.wfd).st_size == 5, "the refused write reached the file"
    finally:
        pipe.close()


@pytest.mark.parametrize(
    ("content", "window"),
    [(b"", 0), (b"hello world", 64)],
    ids=["empty", "hello"],
)
def test_pipe_close_order_happy(cache_dir: Path, spawn: Any, content: bytes, window: int) -> None:
    """TestPipe_closeOrderHappy: the writer finishes first (its reader has read nothing
    yet), so readers get everything then EOF, and new readers can still open: hits,
    here and in another process. ("empty" is Gitaly's case; "hello" needs a window so
    the writer can finish before anyone reads.)"""
    cache = _cache(cache_dir, window=window)
    key = "close-order-happy"

    def create(w: Any) -> None:
        if content:
            w.write(content)

    pr1 = cache.stream(key, create, timeout=WAIT)
    assert pr1.created
    assert cache.wait_producers(WAIT), "the writer should finish before anyone reads"
    try:
        assert pr1.read() == content
        assert pr1.read(1) == b"", "EOF"

        with cache.stream(key, _unexpected_create, timeout=WAIT) as pr2:
            assert not pr2.created, "opening a reader after a normal close should succeed"
            assert pr2.read() == content
    finally:
        pr1.close()

    q = spawn.Queue()
    p = spawn.Process(target=_fetch_proc, args=(str(cache_dir), key, q))
    p.start()
    created, out, err = q.get(timeout=WAIT)
    _join(p)
    assert err is None, err
    assert (created, out) == (False, content)


def test_pipe_concurrency(cache_dir: Path, spawn: Any) -> None:
    """TestPipe_concurrency: the writer finishing, its reader closing and 100 new
    readers opening (4 processes x 25 threads) all race; no deadlock, no exception
    other than the documented CreateError (entry broken because all readers left),
    every byte read is right, and the key works afterwards."""
    cache = _cache(cache_dir)
    key = "concurrency"
    text = b"hello world"
    start = spawn.Event()

    def create(w: Any) -> None:
        if not start.wait(WAIT):
            raise AssertionError("not started")
        w.write(text)

    s0 = cache.stream(key, create, timeout=WAIT)
    assert s0.created

    def close_s0() -> None:
        if start.wait(WAIT):
            s0.close()

    closer = threading.Thread(target=close_s0)
    closer.start()
    q = spawn.Queue()
    nprocs, nthreads = 4, 25
    procs = [
        spawn.Process(target=_opener_proc, args=(str(cache_dir), key, nthreads, start, q))
        for _ in range(nprocs)
    ]
    results: list[tuple[Any, ...]] = []
    try:
        for p in procs:
            p.start()
        ready = 0
        while ready < nprocs:
            msg = q.get(timeout=WAIT)
            if msg[0] == "ready":
                ready += 1
            else:
                results.append(msg)
        start.set()
        while len(results) < nprocs * nthreads:
            try:
                msg = q.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"deadlock? only {len(results)} openers finished") from None
            if msg[0] != "ready":
                results.append(msg)
        for p in procs:
            _join(p)
    finally:
        start.set()
        closer.join(WAIT)
        s0.close()
    assert not closer.is_alive()
    assert cache.wait_producers(WAIT)

    unexpected = [r for r in results if r[0] == "unexpected"]
    assert unexpected == []
    for r in results:
        if r[0] == "ok" and r[2] is not None:
            assert r[2] == text
        elif r[0] == "create_error":
            assert r[1] == "CreateError" and "BrokenPipeError" in r[2], r

    # The key is consistent afterwards: one fetch, then a hit with the same bytes.
    out = io.BytesIO()
    assert cache.fetch(key, out, _hello_create, timeout=WAIT).written == len(text)
    assert out.getvalue() == text
    out = io.BytesIO()
    assert cache.fetch(key, out, _unexpected_create, timeout=WAIT) == (len(text), False)
    assert out.getvalue() == text
