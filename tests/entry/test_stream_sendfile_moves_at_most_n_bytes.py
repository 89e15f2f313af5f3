"""``Stream.sendfile(fd, n)`` moves at most ``n`` bytes of the stream to a descriptor and
advances the stream's place by as many, so that a reader can mix it with ``read``
(a header read, a payload sent): together they give the entry's bytes in order, from a
finished entry and from one a producer in another process is still writing, to a pipe,
a socket and a regular file. A producer killed mid-entry fails it as a read does, and a
descriptor sendfile refuses (a file opened with O_APPEND) raises before any byte moved.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import procs_zero_copy
import pytest
from procs_inline import start_child
from xproc import WAIT, expect, forbidden_create, payload_bytes, writer_of

import streamcache
from streamcache.entry.sink import NO_SENDFILE

KiB = 1 << 10
MiB = 1 << 20
SEED = "sendfile-n"
WINDOW = 256 * KiB
TOTAL = 3 * MiB + 5 * 64 * KiB
# Sizes taken in turn: the first, third... by read, the others by sendfile.
STEPS = [5, 1, 5, 70_000, 5, MiB + 3, 5, 0, 7, 2 * MiB]
KINDS = ["pipe", "socket", "file"]


class Out:
    """A descriptor of ``kind`` and whatever collects what arrives at its other end."""

    def __init__(self, kind: str, where: Path) -> None:
        self.kind = kind
        self.received = bytearray()
        self._thread: threading.Thread | None = None
        self._path = where / f"out-{kind}"
        if kind == "file":
            self.fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            return
        if kind == "pipe":
            r, self.fd = os.pipe()
            read: Callable[[], bytes] = lambda: os.read(r, 256 * KiB)  # noqa: E731
            close: Callable[[], None] = lambda: os.close(r)  # noqa: E731
        else:
            a, b = socket.socketpair()
            self._sock = a
            self.fd = a.fileno()
            read = lambda: b.recv(256 * KiB)  # noqa: E731
            close = b.close
        self._thread = threading.Thread(target=self._drain, args=(read, close), daemon=True)
        self._thread.start()

    def _drain(self, read: Callable[[], bytes], close: Callable[[], None]) -> None:
        while chunk := read():
            self.received += chunk
        close()

    def finish(self) -> bytes:
        if self.kind == "socket":
            self._sock.close()
        else:
            os.close(self.fd)
        if self._thread is None:
            return self._path.read_bytes()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the drain never saw the end"
        return bytes(self.received)


Taken = list[tuple[str, bytes | int]]  # ("read", bytes) or ("sent", how many)


def take(s: streamcache.Stream, fd: int) -> tuple[Taken, BaseException | None]:
    """The stream to its end, in STEPS' sizes over again, read (the even steps) and
    sent to ``fd`` (the odd ones, each checked to move at most what was asked): what
    each step took, and the error that ended it, if any."""
    steps: Taken = []
    i = 0
    try:
        while True:
            n = STEPS[i % len(STEPS)]
            i += 1
            if i % 2 == 0:
                sent = s.sendfile(fd, n)
                assert 0 <= sent <= n, (sent, n)
                steps.append(("sent", sent))
                if n and not sent:
                    return steps, None
            else:
                data = s.read(n)
                steps.append(("read", data))
                if n and not data:
                    return steps, None
    except (OSError, streamcache.Error) as exc:
        return steps, exc


def merged(steps: Taken, sent: bytes) -> bytes:
    """The stream's bytes as ``take``'s steps and the descriptor's other end saw them."""
    out = bytearray()
    at = 0
    for _, what in steps:
        if isinstance(what, bytes):
            out += what
        else:
            out += sent[at : at + what]
            at += what
    assert at == len(sent), (at, len(sent))
    return bytes(out)


def store(cache: streamcache.StreamCache, key: str, create: Callable[[Any], None]) -> None:
    with open(os.devnull, "wb") as devnull:
        cache.fetch(key, devnull, create)


@pytest.fixture
def cache(cache_dir: Path) -> Iterator[streamcache.StreamCache]:
    c = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    yield c
    c.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_finished_entry_read_and_sent_in_turn_arrives_whole(
    cache: streamcache.StreamCache, tmp_path: Path, kind: str
) -> None:
    key = f"finished-{kind}"
    expected = payload_bytes(SEED, TOTAL, 64 * KiB)
    store(cache, key, writer_of(SEED, TOTAL, 64 * KiB))
    out = Out(kind, tmp_path)
    with cache.stream(key, forbidden_create, timeout=WAIT) as s:
        steps, error = take(s, out.fd)
        assert s.position == TOTAL
    assert error is None, repr(error)
    assert merged(steps, out.finish()) == expected


def follow(
    spawn: SpawnContext, cache: streamcache.StreamCache, kind: str, where: Path, kill: bool
) -> tuple[bytes, BaseException | None]:
    """Read and send an entry a producer in another process writes: it writes one
    window, the reader attaches, then the producer writes the rest (or is killed)."""
    key = f"in-flight-{kind}-{kill}"
    wrote_head, go = spawn.Event(), spawn.Event()
    proc, q = start_child(
        spawn,
        procs_zero_copy.gated_producer,
        str(cache.dir),
        key,
        SEED,
        WINDOW,
        TOTAL,
        WINDOW,
        wrote_head,
        go,
    )
    try:
        assert wrote_head.wait(WAIT), "the producer never wrote its head"
        out = Out(kind, where)
        with cache.stream(key, forbidden_create, timeout=WAIT) as s:
            assert s.sendfile(out.fd, 3) == 3  # attached before the producer goes on
            if kill:
                os.kill(proc.pid, signal.SIGKILL)
            else:
                go.set()
            steps, error = take(s, out.fd)
        if not kill:
            expect(q, "done", WAIT)
        proc.join(WAIT)
        return merged([("sent", 3), *steps], out.finish()), error
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(WAIT)


@pytest.mark.parametrize("kind", KINDS)
def test_an_entry_being_written_read_and_sent_in_turn_arrives_whole(
    spawn: SpawnContext, cache: streamcache.StreamCache, tmp_path: Path, kind: str
) -> None:
    got, error = follow(spawn, cache, kind, tmp_path, kill=False)
    assert error is None, repr(error)
    assert got == payload_bytes(SEED, TOTAL, 64 * KiB)


@pytest.mark.parametrize("kind", KINDS)
def test_a_producer_killed_mid_entry_fails_sendfile_as_a_read(
    spawn: SpawnContext, cache: streamcache.StreamCache, tmp_path: Path, kind: str
) -> None:
    got, error = follow(spawn, cache, kind, tmp_path, kill=True)
    assert isinstance(error, streamcache.ProducerDied), repr(error)
    assert got == payload_bytes(SEED, TOTAL, 64 * KiB)[: len(got)]
    assert len(got) == WINDOW


def test_a_descriptor_sendfile_refuses_raises_before_any_byte_moved(
    cache: streamcache.StreamCache, tmp_path: Path
) -> None:
    key = "append"
    expected = payload_bytes(SEED, 100_000, 64 * KiB)
    store(cache, key, writer_of(SEED, 100_000, 64 * KiB))
    path = tmp_path / "appended"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with cache.stream(key, forbidden_create, timeout=WAIT) as s:
            assert s.read(10) == expected[:10]
            with pytest.raises(OSError) as caught:
                s.sendfile(fd, 1000)
            assert caught.value.errno in NO_SENDFILE
            assert caught.value.errno == errno.EINVAL
            assert s.position == 10
            assert s.read(MiB) == expected[10:]
            assert s.sendfile(fd, 1000) == 0  # at the end: nothing to refuse
    finally:
        os.close(fd)
    assert path.read_bytes() == b""
