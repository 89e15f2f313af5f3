"""Second review of the protocol: finished entries by name, text records, kept stripe
descriptors, the inline creator, lazily made IPC objects, futex readers.

Each test shows one problem found in review (an xfail(strict=True) whose reason starts
with "BUG:" while the library has it) or covers a path no other test takes. Children
live in tests/review2_procs.py.
"""

from __future__ import annotations

import inspect
import io
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import review2_procs
from conftest import ipc_objects
from helpers import finished_entries, finished_size, index_records, wait_until

import ipc
import streamcache
from streamcache import StreamCache
from streamcache.cache import LAYOUT, ipc_base, key_hash
from streamcache.index import Index
from streamcache.pipe import _Reader, unlink_entry_ipc

WAIT = 20.0
HOUR = 3600.0
KEY = "review2"


def _start(spawn: SpawnContext, target: Callable[..., None], *args: Any, **kwargs: Any) -> Any:
    out = spawn.Queue()
    proc = spawn.Process(target=target, args=args, kwargs={**kwargs, "out": out}, daemon=True)
    proc.start()
    return proc, out


def _get(out: Any, timeout: float = WAIT) -> tuple[Any, ...]:
    try:
        msg = out.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError("the child did not report in time") from None
    assert msg[0] != "error", msg[1]
    return tuple(msg)


def _wait(event: Any, what: str, timeout: float = WAIT) -> None:
    assert event.wait(timeout), f"timed out waiting for {what}"


def _base(cache_dir: Path, key: str) -> str:
    rec = Index(str(cache_dir / LAYOUT)).read(key_hash(key))
    assert rec is not None, "the entry has a record while in flight"
    return ipc_base(ipc.prefix_for(cache_dir), rec.file)


def _objects_of(cache_dir: Path, base: str) -> list[str]:
    return [name for name in ipc_objects(cache_dir) if name.startswith("/" + base)]


def _read_exactly(s: streamcache.Stream, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.read(n - len(got))
        assert chunk, f"the entry ended after {len(got)} of {n} bytes"
        got += chunk
    return got


# -- 1. an attacher killed while making the IPC objects ---------------------------------------


def test_objects_of_an_attacher_killed_halfway_do_not_outlive_the_entry(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    written, go = threading.Event(), threading.Event()
    result: list[Any] = []

    def create(w: Any) -> None:
        w.write(b"head ")
        written.set()
        if not go.wait(WAIT):
            raise RuntimeError("never released")
        w.write(b"tail")

    def produce() -> None:
        out = io.BytesIO()
        result.append((cache.fetch(KEY, out, create), out.getvalue()))

    producer = threading.Thread(target=produce)
    producer.start()
    base = ""
    try:
        _wait(written, "the producer's first write")
        base = _base(cache_dir, KEY)
        proc, _ = _start(spawn, review2_procs.attacher_killed_making_bells, str(cache_dir), KEY)
        proc.join(WAIT)
        assert proc.exitcode == -signal.SIGKILL
        assert _objects_of(cache_dir, base), "the killed attacher left part of the objects"
        go.set()
        producer.join(WAIT)
        assert result and result[0][1] == b"head tail", result
        assert finished_size(cache_dir, KEY) == 9
        cache.gc()
        # This process (the producer) lives on, as a server does.
        assert _objects_of(cache_dir, base) == [], "objects of a finished entry leaked"
    finally:
        go.set()
        producer.join(WAIT)
        if base:
            unlink_entry_ipc(base)


def test_reader_after_an_attacher_killed_halfway_reads_the_entry(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """The killed attacher's leftovers name a live producer; the next reader replaces them
    (it may not open them) and the producer, which could not open the partial set, finds
    the new one and publishes to it: the reader gets every byte and the end."""
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    written, go = spawn.Event(), spawn.Event()
    producer, pout = _start(
        spawn,
        review2_procs.gated_inline_producer,
        str(cache_dir),
        KEY,
        b"head ",
        b"tail",
        written,
        go,
    )
    try:
        _wait(written, "the producer's first write")
        base = _base(cache_dir, KEY)
        proc, _ = _start(spawn, review2_procs.attacher_killed_making_bells, str(cache_dir), KEY)
        proc.join(WAIT)
        assert proc.exitcode == -signal.SIGKILL
        assert _objects_of(cache_dir, base), "the killed attacher left part of the objects"
        with cache.stream(KEY, review2_procs.forbidden_create, timeout=WAIT) as s:
            assert not s.created
            assert _read_exactly(s, 5) == b"head "
            go.set()
            assert s.read() == b"tail"
        assert _get(pout) == ("ok", 9, True)
        producer.join(WAIT)
        assert _objects_of(cache_dir, base) == []
    finally:
        go.set()


# -- 2. close() racing the end of a read in another thread ------------------------------------


def _pause_at(fn: Callable[..., Any], needle: str, paused: threading.Event, resume: Any) -> None:
    """In the calling thread, stop once at the line of ``fn`` holding ``needle``: set
    ``paused``, wait for ``resume`` (a breakpoint; the code runs unchanged)."""
    code = fn.__code__
    lines, first = inspect.getsourcelines(fn)
    target = next(first + i for i, line in enumerate(lines) if needle in line)

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == target:
            sys.settrace(None)
            frame.f_trace = None
            paused.set()
            resume.wait(WAIT)
        return local

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    sys.settrace(trace)


def test_close_racing_the_end_of_a_read_releases_the_slot(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    written, go = spawn.Event(), spawn.Event()
    # The creator's dst takes the head only: after the tail, this test's reader is the
    # entry's only reader. Window 0 (Gitaly's rule): the producer waits for that reader.
    _producer, pout = _start(
        spawn,
        review2_procs.gated_inline_producer,
        str(cache_dir),
        KEY,
        b"head ",
        b"tail",
        written,
        go,
        dst_ok=1,
        window=0,
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    paused, resume = threading.Event(), threading.Event()
    errors: dict[str, BaseException | None] = {}
    try:
        _wait(written, "the producer's first write")
        s = cache.stream(KEY, review2_procs.forbidden_create)
        assert _read_exactly(s, 5) == b"head "

        def read() -> None:
            try:
                s.read(1)
                errors["read"] = None
            except BaseException as exc:
                errors["read"] = exc

        def close() -> None:
            _pause_at(_Reader.close, "self._leave()", paused, resume)
            try:
                s.close()
                errors["close"] = None
            except BaseException as exc:
                errors["close"] = exc
            finally:
                sys.settrace(None)

        reader = threading.Thread(target=read)
        reader.start()
        source = s._source
        wait_until(lambda: source._busy == 1, "the reading thread to be inside read()")
        closer = threading.Thread(target=close)
        closer.start()
        _wait(paused, "close() to reach _leave")
        # The reading thread wakes on its timed wait (liveness), sees the stream closed
        # and leaves read(), releasing the reader's mappings and descriptor.
        reader.join(WAIT)
        assert not reader.is_alive()
        resume.set()
        closer.join(WAIT)
        assert isinstance(errors["read"], ValueError), errors
        problems = []
        if errors["close"] is not None:
            problems.append(f"close() raised {errors['close']!r}")
        go.set()
        # The producer writes the tail; its dst fails; no reader is left: the entry fails.
        try:
            outcome: tuple[Any, ...] = _get(pout, 5.0)
        except AssertionError:
            outcome = ("no outcome: the producer waits for the closed reader",)
        if outcome[0] != "ConnectionResetError":
            problems.append(repr(outcome))
        assert not problems, problems
    finally:
        resume.set()
        go.set()


# -- 3. the producer killed between publishing the entry and removing its record --------------


def test_reader_of_an_entry_published_just_before_the_kill_gets_it_all(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    written, go = spawn.Event(), spawn.Event()
    producer, _ = _start(
        spawn,
        review2_procs.gated_inline_producer,
        str(cache_dir),
        KEY,
        b"head ",
        b"tail",
        written,
        go,
        die_after_publish=True,
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    try:
        _wait(written, "the producer's first write")
        got = b""
        with cache.stream(KEY, review2_procs.forbidden_create, timeout=WAIT) as s:
            got += _read_exactly(s, 5)
            go.set()
            try:
                got += s.read()
                error = None
            except streamcache.CreateError as exc:
                error = exc
        producer.join(WAIT)
        assert producer.exitcode == -signal.SIGKILL
        assert finished_size(cache_dir, KEY) == 9, "the entry was published complete"
        assert error is None, f"the reader of a complete entry got {error!r}"
        assert got == b"head tail"
    finally:
        go.set()


# -- 4. the inline creator interrupted before its create started ------------------------------


def test_inline_creator_interrupted_before_create_leaves_no_entry(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    stop = spawn.Event()
    proc, out = _start(spawn, review2_procs.inline_creator_interrupted, str(cache_dir), KEY, stop)
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    try:
        assert _get(out) == ("interrupted",)
        sink = io.BytesIO()
        try:
            res = cache.fetch(KEY, sink, lambda w: w.write(b"fresh"), timeout=3.0)
        except TimeoutError:
            raise AssertionError(
                "the next fetch waited for a creator that was interrupted"
            ) from None
        assert res == (5, True)
        assert sink.getvalue() == b"fresh"
    finally:
        stop.set()
        proc.join(WAIT)


# -- 5. the inline creator's dst sets the pace of every reader --------------------------------


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="LIMITATION: a creator whose dst has no descriptor (a Python object) keeps its "
    "copy inside the producer's writes until one write to it takes over 10 ms; one that "
    "blocks indefinitely holds the producer, and the readers, until it returns (with a "
    "descriptor the copy moves to a thread as soon as another reader attaches: "
    "test_inline_creator.py::test_creator_client_paces_nobody_once_another_reader_"
    "attached)",
)
def test_a_stalled_creator_client_does_not_stall_the_other_readers(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    chunks = [bytes([65 + i]) * 4096 for i in range(4)]
    stalled, release = spawn.Event(), spawn.Event()
    proc, out = _start(
        spawn, review2_procs.stalled_dst_producer, str(cache_dir), KEY, chunks, stalled, release
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    try:
        _wait(stalled, "the creator's client to stall")
        got = b""
        try:
            with cache.stream(KEY, review2_procs.forbidden_create, timeout=3.0) as s:
                assert not s.created
                for chunk in s:
                    got += chunk
        except TimeoutError:
            pass
        assert got == b"".join(chunks), f"read {len(got)} of {len(b''.join(chunks))} bytes"
        release.set()
        assert _get(out) == ("ok", len(got), True, True)
    finally:
        release.set()
        proc.join(WAIT)


# -- 6. bytes written between an attach and the producer's next look --------------------------


def test_bytes_written_after_an_attach_reach_the_reader_while_create_blocks(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    written, go, wrote_tail, hold = (spawn.Event() for _ in range(4))
    proc, out = _start(
        spawn,
        review2_procs.gated_inline_producer,
        str(cache_dir),
        KEY,
        b"head ",
        b"tail",
        written,
        go,
        discovery_interval=HOUR,
        wrote_tail=wrote_tail,
        hold=hold,
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    try:
        _wait(written, "the producer's first write")
        with cache.stream(KEY, review2_procs.forbidden_create, timeout=3.0) as s:
            assert _read_exactly(s, 5) == b"head "
            go.set()
            _wait(wrote_tail, "the producer's second write")
            try:
                tail = _read_exactly(s, 4)
            except TimeoutError:
                tail = b""
            assert tail == b"tail", "the written tail never reached the attached reader"
            hold.set()
            assert s.read() == b""
        assert _get(out) == ("ok", 9, True)
    finally:
        go.set()
        hold.set()
        proc.join(WAIT)


def test_reader_past_the_published_offset_still_learns_the_producer_died(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """The reader above has read bytes found in the file beyond the published offset; if
    the producer is then SIGKILLed, the reader still notices (ProducerDied) instead of
    waiting for an offset that will never rise."""
    written, go, wrote_tail, hold = (spawn.Event() for _ in range(4))
    proc, _out = _start(
        spawn,
        review2_procs.gated_inline_producer,
        str(cache_dir),
        KEY,
        b"head ",
        b"tail",
        written,
        go,
        discovery_interval=HOUR,
        wrote_tail=wrote_tail,
        hold=hold,
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    try:
        _wait(written, "the producer's first write")
        with cache.stream(KEY, review2_procs.forbidden_create, timeout=WAIT) as s:
            assert _read_exactly(s, 5) == b"head "
            go.set()
            _wait(wrote_tail, "the producer's second write")
            assert _read_exactly(s, 4) == b"tail"
            # (Its Events are never set after this: a multiprocessing Event's set() waits
            # for every sleeper to wake, and a killed one never does.)
            os.kill(proc.pid or 0, signal.SIGKILL)
            proc.join(WAIT)
            with pytest.raises(streamcache.ProducerDied):
                s.read()
    finally:
        if proc.exitcode is None:
            go.set()
            hold.set()
            proc.join(WAIT)
    cache.gc()


# -- 7. stripe locks and fork ------------------------------------------------------------------


def _child_tries_stripe(root: str, h: str, w: int, r: int) -> None:
    """In a forked child: report whether the stripe of ``h`` is free (0.3 s), then wait for
    the parent's go and take it (5 s)."""
    code = 1
    try:
        index = Index(root)
        try:
            with index.locked(h, 0.3):
                os.write(w, b"got-it-while-parent-held\n")
        except TimeoutError:
            os.write(w, b"busy\n")
        os.read(r, 1)
        with index.locked(h, 5.0):
            os.write(w, b"taken\n")
        code = 0
    finally:
        os._exit(code)


def _readline(fd: int, timeout: float = WAIT) -> bytes:
    import select

    buf = b""
    while not buf.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, "the forked child did not answer in time"
        chunk = os.read(fd, 64)
        assert chunk, "the forked child closed its pipe"
        buf += chunk
    return buf.strip()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_does_not_share_a_held_stripe(cache_dir: Path, spawn: SpawnContext) -> None:
    """A process forks while holding a stripe (on its kept descriptor): the child must wait
    for it (a child flocking the inherited open file description would get it at once:
    two holders, two producers), and the child's exit must not free the parent's lock."""
    StreamCache(cache_dir, cleanup_interval=0)
    root = str(cache_dir / LAYOUT)
    index = Index(root)
    h = key_hash(KEY)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = -1
    try:
        with index.locked(h, 5.0):
            pid = os.fork()
            if pid == 0:
                _child_tries_stripe(root, h, from_child_w, to_child_r)
            assert _readline(from_child_r) == b"busy"
            # A second child that exits at once closes its copy of the descriptor.
            pid2 = os.fork()
            if pid2 == 0:
                os._exit(0)
            os.waitpid(pid2, 0)
            checker = spawn.Process(target=_never_locks, args=(root, h), daemon=True)
            checker.start()
            checker.join(WAIT)
            assert checker.exitcode == 0, "the stripe was free while this process held it"
        os.write(to_child_w, b"g")
        assert _readline(from_child_r) == b"taken"
        _, status = os.waitpid(pid, 0)
        pid = -1
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
            os.close(fd)


def _never_locks(root: str, h: str) -> None:
    try:
        with Index(root).locked(h, 0.3):
            sys.exit(1)
    except TimeoutError:
        sys.exit(0)


# -- 8. records: garbage of every kind is ignored and replaced ---------------------------------


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
    assert cache.fetch(KEY, sink, lambda w: w.write(b"fresh")) == (5, True)
    assert sink.getvalue() == b"fresh"
    assert index_records(cache_dir) == []
    assert len(finished_entries(cache_dir)) == 1


def test_record_round_trip_stays_a_fast_symlink(cache_dir: Path) -> None:
    """A record names its producer (pid from the data file's name) and start time exactly
    enough for the liveness check, and stays under 60 bytes for the largest pid."""
    from streamcache.index import Record

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


# -- 9. a killed inline producer with an attached reader ------------------------------------


def test_gc_after_killed_inline_producer_with_attached_reader_leaves_nothing(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """An inline producer SIGKILLed after a reader made its IPC objects: the reader learns
    of the death (ProducerDied), and a cleanup pass leaves no object and no file."""
    written, go = spawn.Event(), spawn.Event()
    proc, _ = _start(
        spawn,
        review2_procs.gated_inline_producer,
        str(cache_dir),
        KEY,
        b"head ",
        b"tail",
        written,
        go,
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    _wait(written, "the producer's first write")
    with cache.stream(KEY, review2_procs.forbidden_create, timeout=WAIT) as s:
        assert _read_exactly(s, 5) == b"head "
        assert ipc_objects(cache_dir), "the attaching reader made the objects"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(WAIT)
        with pytest.raises(streamcache.ProducerDied):
            s.read()
    cache.gc()
    assert ipc_objects(cache_dir) == []
    assert index_records(cache_dir) == []
    assert not list((cache_dir / LAYOUT).glob("data/*/*"))
    sink = io.BytesIO()
    assert cache.fetch(KEY, sink, lambda w: w.write(b"again")) == (5, True)
