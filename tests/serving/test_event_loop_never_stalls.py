"""No loop of the library holds the event loop for longer than one chunk's work.

An HTTP/1.0 request for an entry of unknown size needs the whole entry before it can
send a Content-Length: it drains a stored entry in flight (or spools an entry the
cache does not keep to a temporary file), then sends it. An HTTP/1.1 request sends
chunk by chunk. Every step of that must let the loop's other tasks run between two
chunks, whether or not the bytes are already written, and whether or not the server's
``send`` yields (uvicorn's returns at once while its transport has room).

A heartbeat task on the same loop takes a turn whenever the loop lets it and records
the worst gap between two turns. The gap that is checked is the file I/O the loop's
thread did in it (rchar + wchar of /proc/thread-self/io), and the response chunks sent
in it: the work of one hold of the loop, which a busy machine does not change. Gaps in
time are only reported. On a loaded virtual machine they say little: the blocking
loops held the loop for 80-180 ms wall (20-58 ms of CPU) with this lead, but the loops
fixed showed gaps of up to 176 ms wall, and 80 ms of the loop thread's own CPU time
(time the host took, charged to whichever thread ran: a bare Python loop sees the same).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT
from http_harness import scope
from procs.astream import gated_producer
from xproc import forbidden_create

import streamcache
from ipc.hub import hub
from streamcache.asgi import serve
from streamcache.serving.http import BLOCK

KEY = "lead"
LEAD = 64 << 20  # written before the request arrives: 256 chunks of 256 KiB
TAIL = b"t" * 4096
# What one hold of the loop may move through the loop's thread: one chunk, and room for
# the heartbeat's reads of its counters and a lookup in the index. The blocking loops
# moved the whole lead in one hold (64 MiB; 128 MiB spooling it); the loops fixed move
# at most 257 KiB, a chunk (256 KiB) and the rest.
ONE_CHUNK = BLOCK + (64 << 10)

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/thread-self/io"), reason="needs Linux's per-thread I/O counts"
)


def io_bytes() -> int:
    """Bytes this thread has read and written through system calls so far."""
    fd = os.open("/proc/thread-self/io", os.O_RDONLY)
    try:
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    fields = dict(line.split(b": ") for line in text.splitlines())
    return int(fields[b"rchar"]) + int(fields[b"wchar"])


class Heartbeat:
    """A task that yields with ``sleep(0)`` in a loop: it runs between any two steps of
    the other tasks, so a gap between two of its turns is one step's hold."""

    def __init__(self) -> None:
        self.worst_io = 0  # bytes moved by the loop's thread between two turns
        self.worst_cpu = 0.0  # CPU seconds of the loop's thread between two turns
        self.worst_wall = 0.0  # wall seconds between two turns
        self.worst_chunks = 0  # response chunks sent between two turns
        self.turns = 0
        self._chunks = 0
        self._stop = False

    async def run(self) -> None:
        io, cpu, wall = io_bytes(), time.thread_time(), time.perf_counter()
        while not self._stop:
            await asyncio.sleep(0)
            now_io, now_cpu, now_wall = io_bytes(), time.thread_time(), time.perf_counter()
            self.worst_io = max(self.worst_io, now_io - io)
            self.worst_cpu = max(self.worst_cpu, now_cpu - cpu)
            self.worst_wall = max(self.worst_wall, now_wall - wall)
            io, cpu, wall = now_io, now_cpu, now_wall
            self._chunks = 0
            self.turns += 1

    def sent(self) -> None:
        """A chunk of the response went out."""
        self._chunks += 1
        self.worst_chunks = max(self.worst_chunks, self._chunks)

    def stop(self) -> None:
        self._stop = True

    def check(self) -> None:
        figures = (
            f"worst gap: {self.worst_io} bytes moved, {self.worst_chunks} chunks sent, "
            f"{self.worst_wall * 1000:.1f} ms wall, {self.worst_cpu * 1000:.1f} ms CPU; "
            f"{self.turns} turns"
        )
        assert self.worst_io <= ONE_CHUNK, f"the loop was held for more than a chunk: {figures}"
        # Also when the bytes are there and send returns at once (as uvicorn's does
        # while its transport has room), the loop runs between two chunks.
        assert self.worst_chunks <= 1, f"chunks went out in one hold: {figures}"


async def request(
    cache: Any, create: Any, version: str, expected: bytes, heartbeat: Heartbeat
) -> None:
    """One request through ``serve`` with the heartbeat beside it; checks the response:
    exactly ``expected``, with a Content-Length for HTTP/1.0."""
    got = 0
    head: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal got
        if message["type"] == "http.response.start":
            head.update(message)
            return
        body = message.get("body", b"")
        assert body == expected[got : got + len(body)], f"wrong bytes at {got}"
        got += len(body)
        if body:
            heartbeat.sent()

    beating = asyncio.ensure_future(heartbeat.run())
    try:
        await asyncio.sleep(0)  # the heartbeat's first turn comes before the request
        await serve(cache, KEY, create, scope(http_version=version), receive, send)
    finally:
        heartbeat.stop()
        await beating
    assert head["status"] == 200
    if version == "1.0":
        assert (b"content-length", str(len(expected)).encode()) in head["headers"]
    assert got == len(expected)


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), WAIT * 2)

    asyncio.run(bounded())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_request_joining_an_entry_far_ahead_holds_the_loop_one_chunk_at_a_time(
    cache_dir: Path, spawn: Any, version: str
) -> None:
    """The producer (another process) has written LEAD bytes of an entry of unknown
    size and waits. The request reads them (HTTP/1.0: drains them, HTTP/1.1: sends
    them), catches up and parks; then the producer ends the entry."""
    lead = os.urandom(LEAD)
    wrote, go = spawn.Event(), spawn.Event()
    producer = spawn.Process(
        target=gated_producer, args=(str(cache_dir), KEY, lead, TAIL, wrote, go)
    )
    producer.start()
    cache = streamcache.StreamCache(cache_dir, liveness=1.0, cleanup_interval=0)
    try:
        assert wrote.wait(WAIT)
        info = cache.peek(KEY)
        assert info is not None and info.size is None and info.produced == LEAD
        heartbeat = Heartbeat()

        async def release() -> None:
            """Let the producer end the entry once the request waits for it."""
            while hub().watching == 0:
                await asyncio.sleep(0.001)
            go.set()

        async def main() -> None:
            releasing = asyncio.ensure_future(release())
            try:
                await request(cache, forbidden_create, version, lead + TAIL, heartbeat)
            finally:
                releasing.cancel()
            assert go.is_set(), "the request never waited for the producer"

        run(main)
        heartbeat.check()
    finally:
        go.set()
        producer.join(WAIT)
        cache.stop()
    assert producer.exitcode == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_request_on_a_cache_that_keeps_nothing_holds_the_loop_one_chunk_at_a_time(
    version: str,
) -> None:
    """NullCache: HTTP/1.0 spools the entry to a temporary file, then sends it; HTTP/1.1
    sends it as create writes it."""
    part = os.urandom(1 << 20)
    parts = LEAD // len(part)

    def create(w: Any) -> None:
        for _ in range(parts):
            w.write(part)

    heartbeat = Heartbeat()
    run(lambda: request(streamcache.NullCache(), create, version, part * parts, heartbeat))
    heartbeat.check()
