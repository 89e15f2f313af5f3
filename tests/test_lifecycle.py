"""Life cycle across processes: graceful exit, IPC objects only while writing, cleanup."""

from __future__ import annotations

import io
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import procs.lifecycle
import pytest
from helpers import writing

import ipc
import streamcache
from streamcache.cache import LAYOUT
from streamcache.disk.index import Index


def wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)


def test_graceful_exit_lets_producers_finish(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    """A process that exits normally first finishes its producers for other readers."""
    chunks = 64
    attached, left = spawn.Event(), spawn.Event()
    streamcache.StreamCache(cache_dir, cleanup_interval=0)
    child = spawn.Process(
        target=procs.lifecycle.create_then_exit,
        args=(str(cache_dir), "k", chunks, attached, left),
    )
    child.start()
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    index = Index(str(cache_dir / LAYOUT))
    from streamcache.cache import key_hash

    wait_until(lambda: index.read(key_hash("k")) is not None, 30)

    def no_create(w: Any) -> None:
        raise AssertionError("must attach to the child's entry")

    with cache.stream("k", no_create, timeout=30) as s:
        assert not s.created
        attached.set()
        assert left.wait(30)
        data = s.read()
    child.join(30)
    assert child.exitcode == 0
    assert data == b"".join(bytes([i % 256]) * 65536 for i in range(chunks))
    assert cache.fetch("k", io.BytesIO(), no_create).created is False


def test_ipc_objects_exist_only_while_writing(cache_dir: Path) -> None:
    gate = threading.Event()

    def create(w: Any) -> None:
        w.write(b"a")
        gate.wait(10)
        w.write(b"b")

    with streamcache.StreamCache(cache_dir, cleanup_interval=0) as cache:
        prefix = ipc.prefix_for(cache_dir)
        with cache.stream("k", create) as s:
            assert s.read(1) == b"a"
            assert len(ipc.list_objects(prefix)) == 3
            gate.set()
            assert s.read() == b"b"
        # The segment says "done" only after the record does, and the producer
        # unlinks right after; the reader may get there first.
        cache.wait_producers(10)
        assert ipc.list_objects(prefix) == []
        assert cache.fetch("k", io.BytesIO(), create).created is False
        assert ipc.list_objects(prefix) == []


def test_background_loop_evicts(cache_dir: Path) -> None:
    with streamcache.StreamCache(cache_dir, max_age=0.05, cleanup_interval=0.05) as cache:
        cache.fetch("k", io.BytesIO(), writing(b"x"))
        index = Index(str(cache_dir / LAYOUT))
        data = cache_dir / LAYOUT / "data"
        # A pass removes the record, then the file: wait for both.
        wait_until(lambda: not list(index.keys()) and not list(data.glob("*/*")))


def test_one_cleanup_at_a_time(cache_dir: Path) -> None:
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    index = Index(str(cache_dir / LAYOUT))
    with index.cleanup_lock() as mine:
        assert mine
        assert cache.gc().ran is False
    assert cache.gc().ran is True


def test_stop_ends_the_loop_and_fetch_still_works(cache_dir: Path) -> None:
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0.05)
    cache.fetch("k", io.BytesIO(), writing(b"x"))
    names = {t.name for t in threading.enumerate()}
    assert "streamcache-cleanup" in names
    cache.stop()
    wait_until(lambda: "streamcache-cleanup" not in {t.name for t in threading.enumerate()})
    assert cache.fetch("k", io.BytesIO(), writing(b"x")).created is False


@pytest.mark.parametrize("window", [0, 1, 65536])
def test_windows_deliver_everything(cache_dir: Path, window: int) -> None:
    data = bytes(range(256)) * 4096
    with streamcache.StreamCache(cache_dir, window=window) as cache:

        def create(w: Any) -> None:
            for i in range(0, len(data), 10_000):
                w.write(data[i : i + 10_000])

        dst = io.BytesIO()
        assert cache.fetch("k", dst, create) == (len(data), True)
        assert dst.getvalue() == data


def test_unblocked_producer_notices_dead_readers(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    """With a window so large it never blocks, a producer whose only reader was
    SIGKILLed still stops (BrokenPipeError) within about `liveness`."""
    cache = streamcache.StreamCache(cache_dir, window=2**40, liveness=0.2, cleanup_interval=0)
    attached = spawn.Event()
    first_written = threading.Event()
    outcome: dict[str, BaseException | None] = {}

    def create(w: Any) -> None:
        w.write(b"x" * 4096)
        first_written.set()
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                w.write(b"y" * 4096)
                time.sleep(0.001)  # a slow producer, so the test does not fill the disk
        except BrokenPipeError as exc:
            outcome["error"] = exc
            raise
        outcome["error"] = None

    with cache.stream("k", create):
        assert first_written.wait(10)
        child = spawn.Process(
            target=procs.lifecycle.attach_and_hang, args=(str(cache_dir), "k", attached)
        )
        child.start()
        assert attached.wait(30)
    # Only the child reads now; kill it without reaping (a zombie is dead too).
    child.kill()
    assert cache.wait_producers(25)
    assert isinstance(outcome.get("error"), BrokenPipeError)
    child.join(10)
    assert cache.fetch("k", io.BytesIO(), writing(b"new")).created


def test_attach_racing_the_last_reader_leaving_creates_afresh(cache_dir: Path) -> None:
    """The race between a fetch attaching and the entry's last reader leaving: the
    producer saw no reader and failed with BrokenPipeError before the attached stream
    read a byte. The stream then looks the key up again and creates afresh instead of
    failing. The race window is made wide by releasing the new reader's slot by hand."""
    from streamcache.entry.pipe import PipeReader

    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    go = threading.Event()

    def first(w: Any) -> None:
        assert go.wait(10)
        w.write(b"first")

    first_stream = cache.stream("k", first)
    late = cache.stream("k", writing(b"second"))
    assert not late.created
    source = late._source
    assert isinstance(source, PipeReader) and source._slot is not None
    source._slot.release()  # as if it had not claimed its slot yet
    first_stream.close()  # the last counted reader leaves
    go.set()  # the producer writes, finds no reader: BrokenPipeError
    assert cache.wait_producers(10)
    with late:
        assert late.read() == b"second"
        assert late.created
    assert cache.fetch("k", io.BytesIO(), first).created is False
