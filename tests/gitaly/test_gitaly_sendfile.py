"""Gitaly's internal/streamcache/sendfile_test.go, ported.

Gitaly's pipeReader.WriteTo uses sendfile(2) when the destination is an *os.File
and a plain copy otherwise, and waits out EAGAIN on a non-blocking destination.
Here that is ``Stream.copy_to`` (what ``fetch`` runs): ``os.sendfile`` when ``dst``
has a usable ``fileno()``, ``dst.write`` otherwise; the in-flight entry is read by
a PipeReader (the creator's fetch), a finished one by a FileReader (a hit).

Whether the zero-copy path ran is seen without mocks: the file destination is a
real ``io.FileIO`` subclass that counts calls to its ``write`` method; sendfile
never calls it.
"""

from __future__ import annotations

import io
import os
import random
import select
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import streamcache

WAIT = 20.0  # bound for every wait in these tests
SIZE = 10 * 1024 * 1024


class CountingFile(io.FileIO):
    """A real, unbuffered file (or pipe end) that counts its ``write`` calls."""

    writes = 0

    def write(self, b: Any) -> int | None:
        self.writes += 1
        return super().write(b)


class WrappedFile:
    """Gitaly's wrappedFile: a writer around a file that does not expose its descriptor."""

    def __init__(self, f: io.FileIO) -> None:
        self._f = f

    def write(self, b: Any) -> int | None:
        return self._f.write(b)


def _chunked_create(data: bytes) -> Any:
    """A create writing ``data`` in uneven chunks (Gitaly: iotest.HalfReader + io.Copy),
    so the producer blocks and resumes many times under window=0."""

    def create(w: Any) -> None:
        rng = random.Random(1)
        i = 0
        while i < len(data):
            n = rng.randint(1, 64 * 1024)
            w.write(data[i : i + n])
            i += n

    return create


def _unexpected_create(w: Any) -> None:
    w.write(b"UNEXPECTED CREATE")


@pytest.mark.parametrize("dst_kind", ["os.File", "non-file writer", "wrapped file"])
def test_pipe_write_to(cache_dir: Path, tmp_path: Path, dst_kind: str) -> None:
    """TestPipe_WriteTo: 10 MiB written in chunks reaches dst whole, by sendfile into a
    real file ("os.File") and by plain copies into a writer without a descriptor
    ("non-file writer": io.BytesIO; "wrapped file": Gitaly's wrappedFile). Both for the
    creator reading the entry in flight (window=0) and for a later hit."""
    data = os.urandom(SIZE)
    cache = streamcache.StreamCache(cache_dir, window=0, cleanup_interval=0)
    key = f"write-to-{dst_kind}"

    for round_, create in enumerate((_chunked_create(data), _unexpected_create)):
        path = tmp_path / f"out{round_}"
        f = CountingFile(path, "wb")
        dst: Any = {"os.File": f, "non-file writer": io.BytesIO(), "wrapped file": WrappedFile(f)}[
            dst_kind
        ]
        try:
            res = cache.fetch(key, dst, create, timeout=WAIT)
        finally:
            f.close()
        assert res == (SIZE, round_ == 0)
        out = dst.getvalue() if dst_kind == "non-file writer" else path.read_bytes()
        received = len(out)
        assert received == SIZE
        assert out == data  # plain ==, not a 10 MiB assertion diff
        if dst_kind == "os.File":
            assert f.writes == 0, "the file should have been written by sendfile only"
        elif dst_kind == "wrapped file":
            assert f.writes > 0, "a writer without a descriptor gets plain copies"
        assert cache.wait_producers(WAIT)


class _SlowDrain(threading.Thread):
    """Drains a pipe's read end: first waits until the pipe is full (its write end polls
    not writable, so the writer's next write must get EAGAIN), then reads it in small
    pieces until EOF."""

    def __init__(self, rfd: int, wfd: int) -> None:
        super().__init__(daemon=True)
        self.rfd = rfd
        self.wfd = wfd
        self.was_full = False
        self.writer_done = threading.Event()  # set before the write end is closed
        self.data = bytearray()
        self.error: BaseException | None = None

    def _full(self) -> bool:
        poller = select.poll()
        poller.register(self.wfd, select.POLLOUT)
        return not poller.poll(0)

    def run(self) -> None:
        try:
            deadline = time.monotonic() + WAIT
            while not self._full():
                if self.writer_done.is_set():
                    break
                if time.monotonic() > deadline:
                    raise AssertionError("the pipe never filled up")
                time.sleep(0.001)
            else:
                self.was_full = True
            while chunk := os.read(self.rfd, 4096):
                self.data += chunk
                if time.monotonic() > deadline + WAIT:
                    raise AssertionError("draining took too long")
        except BaseException as exc:
            self.error = exc


@pytest.mark.parametrize("entry", ["in flight", "finished"])
def test_pipe_write_to_eagain(cache_dir: Path, entry: str) -> None:
    """TestPipe_WriteTo_EAGAIN: fetch 10 MiB into a non-blocking OS pipe that another
    thread drains slowly, starting only once the pipe is full, so sendfile hits EAGAIN;
    it is waited out and all bytes arrive intact, by sendfile alone.

    "in flight": the creator's fetch (PipeReader, window=0); "finished": the entry is
    complete first (Gitaly's case), then a hit (FileReader) writes to the pipe.
    """
    data = os.urandom(SIZE)
    cache = streamcache.StreamCache(cache_dir, window=0, cleanup_interval=0)
    key = "eagain"
    create = _chunked_create(data)
    if entry == "finished":
        sink = io.BytesIO()
        assert cache.fetch(key, sink, create, timeout=WAIT) == (SIZE, True)
        assert sink.getvalue() == data
        create = _unexpected_create
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    drain = _SlowDrain(rfd, wfd)
    dst = CountingFile(wfd, "wb")
    try:
        drain.start()
        res = cache.fetch(key, dst, create, timeout=WAIT)
    finally:
        drain.writer_done.set()
        dst.close()
        drain.join(2 * WAIT)
        os.close(rfd)
    assert not drain.is_alive()
    assert drain.error is None, drain.error
    assert drain.was_full, "the pipe should have been full (EAGAIN) at some point"
    assert res == (SIZE, entry == "in flight")
    received = len(drain.data)
    assert received == SIZE
    assert bytes(drain.data) == data
    assert dst.writes == 0, "the pipe should have been written by sendfile only"
    assert cache.wait_producers(WAIT)


def test_pipe_write_to_eagain_bypass(cache_dir: Path) -> None:
    """TestPipe_WriteTo_EAGAIN on a first request that Gitaly's admission
    (min_occurrences=1) sends past the cache, straight into dst: EAGAIN
    must not lose bytes there either."""
    data = os.urandom(1024 * 1024)
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    drain = _SlowDrain(rfd, wfd)
    dst = open(wfd, "wb", buffering=0)  # noqa: SIM115
    try:
        with streamcache.new(streamcache.Config(dir=cache_dir, min_occurrences=1)) as cache:
            drain.start()
            res = cache.fetch("bypass", dst, _chunked_create(data), timeout=WAIT)
    finally:
        drain.writer_done.set()
        dst.close()
        drain.join(2 * WAIT)
        os.close(rfd)
    assert drain.error is None, drain.error
    assert res == (len(data), True)
    received = len(drain.data)
    assert received == len(data), "bytes were lost"
    assert bytes(drain.data) == data
