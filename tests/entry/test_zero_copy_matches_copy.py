"""A fetch into a dst with a descriptor (a pipe, a socket, a regular file) moves the
entry's bytes with sendfile; into a dst without one it copies them through Python. Both
paths must give the same bytes, or the same error, in every case: an empty, a small and
a large finished entry, an entry still being written by a producer in another process
(held to a small back-pressure window, so a follower whose place did not advance as it
sent would stall it), that producer killed mid-entry, and the dst's reader gone mid-way.

The dst of the zero-copy path is what callers hand over: a buffered file object with
unflushed bytes in it (fetch must flush them first), a blocking and a non-blocking
socket. The copy path's dst writes to the same kind of descriptor through an object
without ``fileno``. A last test checks, under strace, that the zero-copy path is the one
taken: the bytes go out by sendfile, none is read into the process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import procs_zero_copy
import pytest
from procs_inline import start_child
from xproc import WAIT, expect, forbidden_create, payload_bytes, wait_until, writer_of

import streamcache

KiB = 1 << 10
MiB = 1 << 20
SEED = "zero-copy"
PREFIX = b"written to dst before the fetch\n"
WINDOW = 256 * KiB  # the in-flight producer's back-pressure window
HEAD = WINDOW  # written before the follower attaches (the unread creating stream is at 0)
TOTAL = 6 * MiB + 3 * 64 * KiB
KINDS = ["pipe", "socket", "nonblocking-socket", "file"]
PATHS = ["sendfile", "copy"]


class NoDescriptor:
    """A dst writing to a descriptor without offering it: fetch must copy."""

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        self._write = write

    def write(self, data: bytes) -> int:
        self._write(bytes(data))
        return len(data)


def write_fd(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            view = view[os.write(fd, view) :]

    return write


@dataclass
class Outcome:
    data: bytes = b""
    error: tuple[str, int | None] | None = None
    errors_text: list[str] = field(default_factory=list)


class Target:
    """One dst of ``kind`` for ``path``, with whatever reads its other end: a thread
    draining a pipe or socket into ``received`` (which may close its end after
    ``close_after`` bytes), or the file read back at the end."""

    def __init__(self, kind: str, path: str, where: Path, close_after: int | None) -> None:
        self.kind = kind
        self.received = bytearray()
        self.reached: list[tuple[int, threading.Event]] = []
        self._lock = threading.Lock()
        self._close_after = close_after
        self._file = where / f"out-{kind}-{path}"
        self._closers: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self.dst: Any
        if kind == "file":
            if path == "sendfile":
                f = open(self._file, "wb")  # noqa: SIM115 - closed by close()
                f.write(PREFIX)  # left in its buffer: fetch must flush it first
                self.dst = f
                self._closers.append(f.close)
            else:
                fd = os.open(self._file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                self._closers.append(lambda: os.close(fd))
                write_fd(fd)(PREFIX)
                self.dst = NoDescriptor(write_fd(fd))
            return
        if kind == "pipe":
            r, w = os.pipe()
            read_end: Callable[[int], bytes] = lambda n: os.read(r, n)  # noqa: E731
            close_read = lambda: os.close(r)  # noqa: E731
            if path == "sendfile":
                f = open(w, "wb")  # noqa: SIM115 - closed by close()
                f.write(PREFIX)
                self.dst = f
                self._closers.append(f.close)
            else:
                self._closers.append(lambda: os.close(w))
                write_fd(w)(PREFIX)
                self.dst = NoDescriptor(write_fd(w))
        else:
            a, b = socket.socketpair()
            read_end = b.recv
            close_read = b.close
            self._closers.append(a.close)
            a.sendall(PREFIX)
            if path == "sendfile":
                if kind == "nonblocking-socket":
                    a.setblocking(False)
                self.dst = a
            else:
                self.dst = NoDescriptor(a.sendall)
        self._read_closed = False
        self._close_read = close_read
        self._thread = threading.Thread(target=self._drain, args=(read_end,), daemon=True)
        self._thread.start()

    def _drain(self, read: Callable[[int], bytes]) -> None:
        while chunk := read(256 * KiB):
            with self._lock:
                self.received += chunk
                n = len(self.received)
                for at, event in self.reached:
                    if n >= at:
                        event.set()
            if self._close_after is not None and n >= self._close_after:
                break
        self._close_read()
        self._read_closed = True

    def got(self) -> int:
        if self.kind == "file":
            return self._file.stat().st_size if self._file.exists() else 0
        with self._lock:
            return len(self.received)

    def when(self, n: int) -> threading.Event:
        """An event set once ``n`` bytes arrived at the other end."""
        event = threading.Event()
        if self.kind == "file":
            threading.Thread(
                target=lambda: (wait_until(lambda: self.got() >= n, WAIT, "bytes"), event.set()),
                daemon=True,
            ).start()
            return event
        with self._lock:
            self.reached.append((n, event))
            if len(self.received) >= n:
                event.set()
        return event

    def finish(self) -> bytes:
        """Close the dst; what its other end received, in full."""
        for close in self._closers:
            close()
        if self._thread is not None:
            self._thread.join(WAIT)
            assert not self._thread.is_alive(), "the drain never saw the end"
            if not self._read_closed:
                self._close_read()
            return bytes(self.received)
        return self._file.read_bytes()


def fetch_into(cache: streamcache.StreamCache, key: str, target: Target) -> Outcome:
    out = Outcome()
    try:
        cache.fetch(key, target.dst, forbidden_create, timeout=WAIT)
    except (OSError, streamcache.Error) as exc:
        out.error = (type(exc).__name__, getattr(exc, "errno", None))
        out.errors_text.append(repr(exc))
    out.data = target.finish()
    return out


@pytest.fixture
def make_cache(cache_dir: Path) -> Iterator[Callable[[], streamcache.StreamCache]]:
    made: list[streamcache.StreamCache] = []

    def make() -> streamcache.StreamCache:
        cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.stop()


def finished_case(
    make: Callable[[], streamcache.StreamCache], size: int, kind: str, where: Path
) -> dict[str, Outcome]:
    key = f"finished-{size}-{kind}"
    make().fetch(key, NoDescriptor(lambda b: None), writer_of(SEED, size, 64 * KiB))
    return {path: fetch_into(make(), key, Target(kind, path, where, None)) for path in PATHS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [0, 1000, 3 * MiB + 7], ids=["empty", "small", "large"])
def test_a_finished_entry_arrives_whole_either_way(
    make_cache: Callable[[], streamcache.StreamCache], tmp_path: Path, kind: str, size: int
) -> None:
    outcomes = finished_case(make_cache, size, kind, tmp_path)
    expected = PREFIX + payload_bytes(SEED, size, 64 * KiB)
    for path, got in outcomes.items():
        assert got.error is None, (path, got.errors_text)
        assert got.data == expected, f"{path}: {len(got.data)} bytes, {len(expected)} expected"


def in_flight(
    spawn: SpawnContext,
    cache_dir: Path,
    make: Callable[[], streamcache.StreamCache],
    kind: str,
    path: str,
    where: Path,
    kill: bool,
) -> Outcome:
    """Follow an entry a producer in another process is writing: it writes HEAD, the
    follower attaches, and once HEAD reached the dst's other end the producer writes
    the rest (or, with ``kill``, is killed)."""
    key = f"in-flight-{kind}-{path}-{kill}"
    wrote_head, go = spawn.Event(), spawn.Event()
    proc, out = start_child(
        spawn,
        procs_zero_copy.gated_producer,
        str(cache_dir),
        key,
        SEED,
        HEAD,
        TOTAL,
        WINDOW,
        wrote_head,
        go,
    )
    try:
        assert wrote_head.wait(WAIT), "the producer never wrote its head"
        target = Target(kind, path, where, None)
        arrived = target.when(len(PREFIX) + HEAD)

        def release() -> None:
            if not arrived.wait(WAIT):
                return  # the fetch fails or times out, and the test with it
            if kill:
                os.kill(proc.pid, signal.SIGKILL)
            else:
                go.set()

        releaser = threading.Thread(target=release, daemon=True)
        releaser.start()
        result = fetch_into(make(), key, target)
        releaser.join(WAIT)
        if not kill:
            expect(out, "done", WAIT)
        proc.join(WAIT)
        return result
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(WAIT)


@pytest.mark.parametrize("kind", KINDS)
def test_an_entry_being_written_arrives_whole_either_way(
    spawn: SpawnContext,
    cache_dir: Path,
    make_cache: Callable[[], streamcache.StreamCache],
    tmp_path: Path,
    kind: str,
) -> None:
    expected = PREFIX + payload_bytes(SEED, TOTAL, 64 * KiB)
    for path in PATHS:
        got = in_flight(spawn, cache_dir, make_cache, kind, path, tmp_path, kill=False)
        assert got.error is None, (path, got.errors_text)
        assert got.data == expected, f"{path}: {len(got.data)} bytes, {len(expected)} expected"


@pytest.mark.parametrize("kind", KINDS)
def test_a_producer_killed_mid_entry_fails_both_paths_alike(
    spawn: SpawnContext,
    cache_dir: Path,
    make_cache: Callable[[], streamcache.StreamCache],
    tmp_path: Path,
    kind: str,
) -> None:
    expected = PREFIX + payload_bytes(SEED, TOTAL, 64 * KiB)[:HEAD]
    for path in PATHS:
        got = in_flight(spawn, cache_dir, make_cache, kind, path, tmp_path, kill=True)
        assert got.error == ("ProducerDied", None), (path, got.errors_text)
        assert got.data == expected, f"{path}: {len(got.data)} bytes, {len(expected)} expected"


@pytest.mark.parametrize("kind", ["pipe", "socket", "nonblocking-socket"])
def test_a_reader_gone_mid_way_fails_both_paths_alike(
    make_cache: Callable[[], streamcache.StreamCache], tmp_path: Path, kind: str
) -> None:
    size = 8 * MiB
    key = f"reader-gone-{kind}"
    make_cache().fetch(key, NoDescriptor(lambda b: None), writer_of(SEED, size, 64 * KiB))
    errors = {}
    for path in PATHS:
        target = Target(kind, path, tmp_path, close_after=MiB)
        got = fetch_into(make_cache(), key, target)
        errors[path] = got.error
        assert len(PREFIX) + MiB <= len(got.data) < len(PREFIX) + size
    assert errors["sendfile"] == errors["copy"] == ("BrokenPipeError", 32), errors


FETCH_TO_PIPE = """
import os, sys
import streamcache
cache = streamcache.StreamCache(sys.argv[1], cleanup_interval=0)
r, w = (int(a) for a in sys.argv[2:4])
def refuse(w):
    raise RuntimeError("no create expected")
with open(w, "wb") as dst:
    n, created = cache.fetch("big", dst, refuse, timeout=60)
cache.stop()
assert n == int(sys.argv[4]) and not created, (n, created)
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_the_descriptor_path_never_reads_the_bytes_into_the_process(
    make_cache: Callable[[], streamcache.StreamCache], cache_dir: Path, tmp_path: Path
) -> None:
    size = 4 * MiB
    make_cache().fetch("big", NoDescriptor(lambda b: None), writer_of(SEED, size, 64 * KiB))
    r, w = os.pipe()
    log = tmp_path / "strace.log"
    argv = ["strace", "-f", "-qq", "-y", "-e", "trace=sendfile,splice,read,pread64,write"]
    argv += ["-o", str(log), sys.executable, "-c", FETCH_TO_PIPE]
    argv += [str(cache_dir), str(r), str(w), str(size)]
    drained = bytearray()

    def drain() -> None:
        while chunk := os.read(r, MiB):
            drained.extend(chunk)

    child = subprocess.Popen(argv, pass_fds=(w,))
    os.close(w)
    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    try:
        assert child.wait(WAIT) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)
    drainer.join(WAIT)
    os.close(r)
    if "Operation not permitted" in log.read_text()[:500] and not drained:
        pytest.skip("ptrace not permitted here")
    assert bytes(drained) == payload_bytes(SEED, size, 64 * KiB)
    # With -y each descriptor is shown with its path: the data file's lie in cache_dir.
    sent = 0
    through: list[str] = []
    for line in log.read_text().splitlines():
        call = line.split(None, 1)[-1]
        result = call.rsplit("=", 1)[-1].split()[0] if "=" in call else ""
        if not result.lstrip("-").isdigit():
            continue
        if call.startswith(("sendfile(", "splice(")):
            sent += int(result)
        elif call.startswith(("read(", "pread64(")) and str(cache_dir) in call:
            if int(result) > 4 * KiB:  # (a finished file's trailer is read to check it)
                through.append(call[:120])
        elif call.startswith("write(") and "pipe:" in call.split(",", 1)[0]:
            through.append(call[:120])
    assert sent == size, f"sendfile/splice moved {sent} of {size} bytes"
    assert not through, f"bytes went through the process: {through[:3]}"
