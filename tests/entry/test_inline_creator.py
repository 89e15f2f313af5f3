"""The creating fetch runs ``create`` in its own thread and hands each write to its dst.

What that changes for the creator, checked with real processes: a dst that fails
mid-entry does not take the entry from the other readers (and the creator's fetch
raises the dst's error once create returns); with no other reader, the producer's
next write gets BrokenPipeError and the entry fails; a fetch with a timeout still
creates in a producer thread, so the caller can leave at its deadline.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, FailingDst, data_files, finished_entries, index_records, writing
from procs.gitaly import child_produce_gated, child_wait, result_of, start, wait_event

import ipc
import streamcache
from ipc.channel import SEGMENT
from ipc.naming import object_name
from streamcache import StreamCache
from streamcache.cache import LAYOUT, channel_base, key_hash
from streamcache.disk.index import Index

HOUR = 3600.0
KEY = "inline"


def test_dst_failing_leaves_the_entry_to_the_other_readers(cache_dir: Path, spawn: Any) -> None:
    attached = spawn.Event()
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)
    proc = None
    chunks = [bytes([65 + i]) * 1000 for i in range(5)]

    def create(w: Any) -> None:
        nonlocal proc, q
        w.write(chunks[0])
        proc, q = start(spawn, child_wait, str(cache_dir), KEY, attached)
        wait_event(attached, "the other process to attach")
        for chunk in chunks[1:]:
            w.write(chunk)  # the dst fails on the first of these: create goes on

    q: Any = None
    dst = FailingDst(ok=1)
    try:
        with pytest.raises(ConnectionResetError):
            cache.fetch(KEY, dst, create)
        assert bytes(dst.got) == chunks[0]
        assert proc is not None
        assert result_of(q, proc) == ("ok", b"".join(chunks), False)
        out = io.BytesIO()
        assert cache.fetch(KEY, out, create) == (5000, False), "the entry was published"
        assert out.getvalue() == b"".join(chunks)
    finally:
        cache.stop()


def test_dst_failing_with_no_other_reader_fails_the_entry(cache_dir: Path) -> None:
    seen: list[BaseException] = []

    def create(w: Any) -> None:
        w.write(b"first")
        try:
            w.write(b"second")  # dst fails on this one; nobody else reads
        except BrokenPipeError as exc:
            seen.append(exc)
            raise
        w.write(b"never")

    cache = StreamCache(cache_dir, max_age=HOUR)
    try:
        with pytest.raises(ConnectionResetError):
            cache.fetch(KEY, FailingDst(ok=1), create)
        assert len(seen) == 1, "the producer's write after dst failed is a BrokenPipeError"
        assert index_records(cache_dir) == [] and data_files(cache_dir) == []
        out = io.BytesIO()
        assert cache.fetch(KEY, out, writing(b"fresh")) == (5, True)
        assert out.getvalue() == b"fresh"
    finally:
        cache.stop()


def test_create_error_reaches_the_inline_creator_as_create_error(cache_dir: Path) -> None:
    def create(w: Any) -> None:
        w.write(b"partial")
        raise ValueError("boom")

    cache = StreamCache(cache_dir, max_age=HOUR)
    try:
        dst = io.BytesIO()
        with pytest.raises(streamcache.CreateError, match="ValueError: boom") as err:
            cache.fetch(KEY, dst, create)
        assert isinstance(err.value.__cause__, ValueError)
        assert dst.getvalue() == b"partial"
        assert finished_entries(cache_dir) == [] and index_records(cache_dir) == []
    finally:
        cache.stop()


def test_keyboard_interrupt_in_inline_create_fails_the_entry_and_propagates(
    cache_dir: Path,
) -> None:
    def create(w: Any) -> None:
        w.write(b"partial")
        raise KeyboardInterrupt

    cache = StreamCache(cache_dir, max_age=HOUR)
    try:
        with pytest.raises(KeyboardInterrupt):
            cache.fetch(KEY, io.BytesIO(), create)
        assert data_files(cache_dir) == [] and index_records(cache_dir) == []
    finally:
        cache.stop()


def test_fetch_with_timeout_creates_in_a_thread(cache_dir: Path) -> None:
    threads: list[str] = []

    def create(w: Any) -> None:
        threads.append(threading.current_thread().name)
        w.write(b"x")

    cache = StreamCache(cache_dir, max_age=HOUR)
    try:
        assert cache.fetch(KEY, io.BytesIO(), create, timeout=10) == (1, True)
        assert cache.fetch("other", io.BytesIO(), create) == (1, True)
        assert cache.wait_producers(10)
        me = threading.current_thread().name
        assert threads[0] != me and threads[0].startswith("streamcache-producer")
        assert threads[1] == me
    finally:
        cache.stop()


# -- IPC objects made by the first reader that attaches --------------------------------------


def test_attach_after_the_last_write_gets_the_end(cache_dir: Path, spawn: Any) -> None:
    """The inline creator has no IPC objects; a reader attaching after its last write
    makes them. The producer writes nothing more, so it can only find them when it ends:
    the reader must still get every byte and the end (or the failure), not hang."""
    for fail in (False, True):
        key = f"{KEY}-{fail}"
        produced, go = spawn.Event(), spawn.Event()
        proc, q = start(
            spawn, child_produce_gated, str(cache_dir), key, b"all of it", b"", fail, produced, go
        )
        cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)
        try:
            wait_event(produced, "the producer's last write")
            with cache.stream(key, _forbidden, timeout=WAIT) as s:
                assert not s.created
                assert s.read(100) == b"all of it", "bytes written before the attach are read"
                go.set()
                if fail:
                    with pytest.raises(streamcache.CreateError, match="test error"):
                        s.read()
                else:
                    assert s.read() == b""
            outcome = result_of(q, proc)
            assert outcome[0] == ("CreateError" if fail else "ok"), outcome
        finally:
            go.set()
            cache.stop()


def test_entry_evicted_in_flight_still_ends_for_its_readers(cache_dir: Path, spawn: Any) -> None:
    """An inline creator's entry expires while in flight and cleanup evicts its record
    after a reader made its IPC objects: the producer can no longer learn their name from
    the record, yet finds them (the name derives from its data file) and ends them."""
    produced, go = spawn.Event(), spawn.Event()
    proc, q = start(
        spawn, child_produce_gated, str(cache_dir), KEY, b"head ", b"tail", False, produced, go
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)
    try:
        wait_event(produced, "the producer's first write")
        with cache.stream(KEY, _forbidden, timeout=WAIT) as s:
            assert s.read(5) == b"head "
            later = StreamCache(
                cache_dir, clock=lambda: time.time() + 10 * HOUR, cleanup_interval=0
            )
            assert later.gc().expired == 1, "the in-flight record was evicted"
            assert index_records(cache_dir) == []
            go.set()
            assert s.read() == b"tail"
        assert result_of(q, proc) == ("ok", b"head tail", True)
        out = io.BytesIO()
        assert cache.fetch(KEY, out, writing(b"new")) == (3, True), "evicted: a miss"
    finally:
        go.set()
        cache.stop()


def _forbidden(w: Any) -> None:
    raise AssertionError("this fetch must attach, not create")


def test_leftovers_of_a_dead_attacher_are_replaced(cache_dir: Path, spawn: Any) -> None:
    """A process that died while making an entry's IPC objects leaves some of them under
    the entry's derived name (here: a segment with no doorbells, naming a dead producer).
    The next reader to attach never opens them: it unlinks and makes fresh ones."""
    produced, go = spawn.Event(), spawn.Event()
    proc, q = start(
        spawn, child_produce_gated, str(cache_dir), KEY, b"head ", b"tail", False, produced, go
    )
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)
    try:
        wait_event(produced, "the producer's first write")
        rec = Index(str(cache_dir / LAYOUT)).read(key_hash(KEY))
        assert rec is not None
        base = channel_base(ipc.prefix_for(cache_dir), rec.file)
        stale = ipc.Segment.create(object_name(base, SEGMENT), ipc.ProcessId(1, 0.0), 4)
        stale.close()
        with cache.stream(KEY, _forbidden, timeout=WAIT) as s:
            assert s.read(5) == b"head "
            go.set()
            assert s.read() == b"tail"
        assert result_of(q, proc) == ("ok", b"head tail", True)
    finally:
        go.set()
        cache.stop()


def _look_before_each_write() -> None:
    """The producer looks for an attached reader at most every millisecond; before
    every write here, so that the write after an attach sees it, whatever the timing."""
    import streamcache.entry.writer

    streamcache.entry.writer._DISCOVERY_INTERVAL = 0.0


def child_creator_into_socket(
    cache_dir: str, chunks: list[bytes], sock: Any, written: Any, go: Any, q: Any
) -> None:
    """Create KEY writing ``chunks`` (the first, then the rest once ``go``), copying it
    into ``sock``, a socket whose peer stops reading after the first chunk."""
    _look_before_each_write()
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)

    def create(w: Any) -> None:
        w.write(chunks[0])
        written.set()
        if not go.wait(WAIT):
            raise TimeoutError("never told to go on")
        for chunk in chunks[1:]:
            w.write(chunk)

    try:
        with sock, sock.makefile("wb", buffering=0) as dst:
            res = cache.fetch(KEY, dst, create)
        q.put(("ok", res.written, res.created))
    finally:
        cache.stop()


def test_creator_client_paces_nobody_once_another_reader_attached(
    cache_dir: Path, spawn: Any
) -> None:
    """The creator copies into a real socket whose peer stops reading once it has the
    first chunk (a stalled client). Once another reader attached, the creator's copy
    moves to a thread reading the file: the producer and the other reader go on and get
    every byte while the client stalls, and the client still gets every byte after."""
    chunks = [bytes([65 + i]) * (1 << 20) for i in range(4)]  # far more than socket buffers
    ours, theirs = socket.socketpair()
    written, go = spawn.Event(), spawn.Event()
    proc, q = start(spawn, child_creator_into_socket, str(cache_dir), chunks, theirs, written, go)
    theirs.close()
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)
    try:
        got = bytearray()
        ours.settimeout(WAIT)
        while len(got) < len(chunks[0]):
            got += ours.recv(1 << 16)
        wait_event(written, "the creator's first write")
        with cache.stream(KEY, _forbidden, timeout=WAIT) as s:
            assert not s.created
            go.set()  # the client (ours) reads nothing more until the reader has it all
            assert s.read() == b"".join(chunks), "all bytes while the creator's client stalls"
        while len(got) < 4 << 20:
            more = ours.recv(1 << 20)
            assert more, "the client's connection closed early"
            got += more
        assert bytes(got) == b"".join(chunks)
        assert result_of(q, proc) == ("ok", 4 << 20, True)
    finally:
        go.set()
        ours.close()
        cache.stop()


class _SlowThenStalled:
    """A client with no descriptor: the first write is quick, the second slow (50 ms,
    over the 10 ms a write may take before the copy moves to a thread), later ones wait
    for ``release``."""

    def __init__(self, release: Any) -> None:
        self.release = release
        self.got = bytearray()
        self.writes = 0

    def write(self, b: bytes) -> int:
        self.writes += 1
        if self.writes == 2:
            time.sleep(0.05)
        elif self.writes > 2 and not self.release.wait(WAIT):
            raise TimeoutError("never released")
        self.got += b
        return len(b)


def child_creator_slow_client(
    cache_dir: str, chunks: list[bytes], written: Any, go: Any, release: Any, q: Any
) -> None:
    _look_before_each_write()
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)

    def create(w: Any) -> None:
        w.write(chunks[0])
        written.set()
        if not go.wait(WAIT):
            raise TimeoutError("never told to go on")
        for chunk in chunks[1:]:
            w.write(chunk)

    dst = _SlowThenStalled(release)
    try:
        res = cache.fetch(KEY, dst, create)
        q.put(("ok", res.written, res.created, bytes(dst.got)))
    finally:
        cache.stop()


def test_slow_creator_client_hands_its_copy_over(cache_dir: Path, spawn: Any) -> None:
    """A creator's client without a descriptor keeps the copy in the producer's writes
    until one write to it is slow; then the copy moves to a thread, and the client
    stalling after that holds back neither the producer nor the other reader."""
    chunks = [bytes([65 + i]) * 4096 for i in range(5)]
    written, go, release = spawn.Event(), spawn.Event(), spawn.Event()
    proc, q = start(spawn, child_creator_slow_client, str(cache_dir), chunks, written, go, release)
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)
    try:
        wait_event(written, "the creator's first write")
        with cache.stream(KEY, _forbidden, timeout=WAIT) as s:
            go.set()
            assert s.read() == b"".join(chunks), "all bytes while the creator's client stalls"
        release.set()
        assert result_of(q, proc) == ("ok", 5 * 4096, True, b"".join(chunks))
    finally:
        go.set()
        release.set()
        cache.stop()
