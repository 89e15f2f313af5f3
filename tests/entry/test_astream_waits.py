"""astream waits never occupy threads: however many astreams wait in one process,
they use one helper thread in total (ipc.hub), so the loop's default executor and
other streams stay free."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import procs.astream
import pytest
from helpers import NOTICE_MARGIN, WAIT, writing
from procs.astream import gated_producer
from xproc import forbidden_create

import streamcache
from ipc.hub import hub

PARKED = 1000
HEAD, TAIL = b"h" * 4096, b"t" * 65536


@pytest.mark.timeout(120)
def test_a_thousand_parked_astreams_leave_the_loop_and_its_executor_free(
    cache_dir: Path, spawn: Any
) -> None:
    cache = streamcache.StreamCache(cache_dir, liveness=1.0, cleanup_interval=0)
    hit = b"x" * 4096
    cache.stream("hit", writing(hit)).read()
    wrote, go = spawn.Event(), spawn.Event()
    producer = spawn.Process(
        target=gated_producer, args=(str(cache_dir), "slow", HEAD, TAIL, wrote, go)
    )
    producer.start()
    assert wrote.wait(WAIT)

    async def reader(s: streamcache.AsyncStream, started: asyncio.Event) -> bytes:
        got = await s.read(len(HEAD))
        started.set()
        return got + await s.read()  # parks until the producer goes on

    async def unrelated_calls() -> None:
        """Seven astream hits and seven executor calls, each bounded: a loop or an
        executor held by the parked waits would answer only once the waits end, which
        they cannot before the test lets the producer go on. (How fast they answer is
        a benchmark's question, not this test's: a shared machine's load sets it.)"""
        loop = asyncio.get_running_loop()
        for _ in range(7):
            assert await asyncio.wait_for(read_hit(), WAIT) == hit
            assert await asyncio.wait_for(loop.run_in_executor(None, sum, [1, 2]), WAIT) == 3

    async def read_hit() -> bytes:
        async with cache.astream("hit", forbidden_create) as s:
            return await s.read()

    async def main() -> tuple[int, list[bytes]]:
        await unrelated_calls()
        threads_before = threading.active_count()  # the executor's thread included
        async with contextlib.AsyncExitStack() as stack:
            tasks = []
            for _ in range(PARKED):
                s = await stack.enter_async_context(cache.astream("slow", forbidden_create))
                started = asyncio.Event()
                tasks.append((asyncio.create_task(reader(s, started)), started))
            for _, started in tasks:
                await asyncio.wait_for(started.wait(), WAIT)
            deadline = time.monotonic() + WAIT
            while hub().watching < PARKED:
                assert time.monotonic() < deadline, f"only {hub().watching} parked"
                await asyncio.sleep(0.01)
            extra_threads = threading.active_count() - threads_before
            await unrelated_calls()
            assert not any(t.done() for t, _ in tasks), "a parked read ended before its bytes"
            go.set()
            bodies = await asyncio.wait_for(asyncio.gather(*(t for t, _ in tasks)), WAIT)
            return extra_threads, bodies

    extra_threads, bodies = asyncio.run(main())
    producer.join(WAIT)
    assert extra_threads <= 1, f"{extra_threads} threads started for {PARKED} waits"
    assert all(b == HEAD + TAIL for b in bodies)
    assert hub().watching == 0
    cache.stop()


def test_a_parked_astream_notices_its_killed_producer(cache_dir: Path, spawn: Any) -> None:
    cache = streamcache.StreamCache(cache_dir, liveness=0.3, cleanup_interval=0)
    wrote, go = spawn.Event(), spawn.Event()
    producer = spawn.Process(
        target=gated_producer, args=(str(cache_dir), "k", HEAD, TAIL, wrote, go)
    )
    producer.start()
    assert wrote.wait(WAIT)

    async def main() -> float:
        async with cache.astream("k", forbidden_create) as s:
            assert await s.read(len(HEAD)) == HEAD
            task = asyncio.create_task(s.read(1))
            deadline = time.monotonic() + WAIT
            while hub().watching < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            producer.kill()
            killed = time.monotonic()
            with pytest.raises(streamcache.ProducerDied):
                await asyncio.wait_for(task, WAIT)
            return time.monotonic() - killed

    noticed = asyncio.run(main())
    producer.join(WAIT)
    assert noticed < 0.3 + NOTICE_MARGIN, f"noticed after {noticed:.2f} s"  # liveness + margin


def test_astream_timeout_is_a_timeout_error(cache_dir: Path) -> None:
    cache = streamcache.StreamCache(cache_dir, liveness=0.5, cleanup_interval=0)
    release = threading.Event()

    def create(w: Any) -> None:
        w.write(b"a")
        release.wait(WAIT)

    async def main() -> None:
        async with cache.astream("k", create, timeout=0.2) as s:
            assert await s.read(1) == b"a"
            with pytest.raises(TimeoutError):
                await s.read(1)

    try:
        asyncio.run(main())
    finally:
        release.set()
        cache.wait_producers(WAIT)
        cache.stop()


def test_null_cache_astream_waits_without_threads() -> None:
    release = threading.Event()

    def create(w: Any) -> None:
        w.write(b"a")
        release.wait(WAIT)
        w.write(b"b")

    async def main() -> bytes:
        async with streamcache.NullCache().astream("k", create) as s:
            first = await s.read(1)
            task = asyncio.create_task(s.read())
            await asyncio.sleep(0.05)
            assert not task.done()
            loop = asyncio.get_running_loop()
            loop.call_soon(release.set)
            return first + await asyncio.wait_for(task, WAIT)

    assert asyncio.run(main()) == b"ab"


def test_a_producer_killed_between_writing_and_publishing_is_noticed_within_liveness(
    cache_dir: Path, spawn: Any
) -> None:
    # The reader first takes the bytes the dead producer wrote but never published,
    # then fails at once: not one liveness period later.
    liveness = 1.0
    wrote_head, wrote_tail = spawn.Event(), spawn.Event()
    producer = spawn.Process(
        target=procs.astream.producer_killed_before_publishing,
        args=(str(cache_dir), "k", HEAD, TAIL, wrote_head, wrote_tail),
    )
    producer.start()
    assert wrote_head.wait(WAIT)
    cache = streamcache.StreamCache(cache_dir, liveness=liveness, cleanup_interval=0)
    with cache.stream("k", forbidden_create, timeout=WAIT) as s:
        got = b""
        while len(got) < len(HEAD):
            got += s.read(len(HEAD) - len(got))
        assert wrote_tail.wait(WAIT)
        producer.kill()
        producer.join(WAIT)
        killed = time.monotonic()
        with pytest.raises(streamcache.ProducerDied):
            while chunk := s.read(1 << 20):
                got += chunk
        noticed = time.monotonic() - killed
    assert got == HEAD + TAIL
    assert noticed < liveness + NOTICE_MARGIN, f"noticed {noticed:.2f} s after the kill"
    cache.stop()


def test_a_null_cache_astream_that_timed_out_never_fails_the_create_writing_on() -> None:
    release, wrote = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def create(w: Any) -> None:
        w.write(b"a")
        release.wait(WAIT)
        try:
            w.write(b"b")  # the reader's cancelled wait is completed here
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            wrote.set()

    async def main() -> None:
        async with streamcache.NullCache().astream("k", create, timeout=0.1) as s:
            assert await s.read(1) == b"a"
            with pytest.raises(TimeoutError):
                await s.read(1)
            release.set()
            assert await asyncio.to_thread(wrote.wait, WAIT)

    asyncio.run(main())
    assert errors == []
