"""Many astreams of one entry parked in one process share its producer's liveness
check: one reader checks per period and its verdict stands for the others (see
ipc.hub). The checks are counted, not timed; a death and a progress still reach
every reader, however the readers that owned the hub's words come and go."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT
from procs.astream import gated_producer
from xproc import forbidden_create

import streamcache
from ipc.hub import hub
from streamcache.entry.pipe import PipeReader

HEAD, TAIL = b"h" * 4096, b"t" * 65536


async def park(
    cache: streamcache.StreamCache,
    stack: contextlib.AsyncExitStack,
    n: int,
    parked_before: int = 0,
) -> list[asyncio.Task[bytes]]:
    """``n`` astreams of "k", each read past HEAD and parked until the rest comes."""

    async def reader(s: streamcache.AsyncStream, started: asyncio.Event) -> bytes:
        got = await s.read(len(HEAD))
        started.set()
        return got + await s.read()

    tasks = []
    for _ in range(n):
        s = await stack.enter_async_context(cache.astream("k", forbidden_create))
        started = asyncio.Event()
        tasks.append(asyncio.create_task(reader(s, started)))
        await asyncio.wait_for(started.wait(), WAIT)
    deadline = time.monotonic() + WAIT
    while hub().watching < parked_before + n:
        assert time.monotonic() < deadline, f"only {hub().watching} parked"
        await asyncio.sleep(0.01)
    return tasks


def start_producer(cache_dir: Path, spawn: Any) -> tuple[Any, Any]:
    wrote, go = spawn.Event(), spawn.Event()
    producer = spawn.Process(
        target=gated_producer, args=(str(cache_dir), "k", HEAD, TAIL, wrote, go)
    )
    producer.start()
    assert wrote.wait(WAIT)
    return producer, go


def test_parked_readers_of_one_entry_check_its_producer_about_once_per_period(
    cache_dir: Path, spawn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers, liveness, periods = 200, 0.2, 5
    checks = 0
    check_producer = PipeReader._check_producer

    def counted(self: PipeReader) -> None:
        nonlocal checks
        checks += 1
        check_producer(self)

    monkeypatch.setattr(PipeReader, "_check_producer", counted)
    cache = streamcache.StreamCache(cache_dir, liveness=liveness, cleanup_interval=0)
    producer, go = start_producer(cache_dir, spawn)

    async def main() -> tuple[int, float, list[bytes]]:
        async with contextlib.AsyncExitStack() as stack:
            tasks = await park(cache, stack, readers)
            before, t0 = checks, time.monotonic()
            await asyncio.sleep(periods * liveness)  # time passing is what is observed
            counted_checks, elapsed = checks - before, time.monotonic() - t0
            go.set()
            bodies = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
            return counted_checks, elapsed, bodies

    counted_checks, elapsed, bodies = asyncio.run(main())
    producer.join(WAIT)
    cache.stop()
    assert all(b == HEAD + TAIL for b in bodies)
    # Each reader on its own would check elapsed/liveness times (about 1000 here); shared,
    # the entry is checked about once per period. The bound leaves room for a period
    # begun before the count and a handed-out check that lapsed on a loaded machine.
    periods_seen = elapsed / liveness
    assert 1 <= counted_checks <= 3 * (periods_seen + 2), (counted_checks, periods_seen)


def test_every_parked_reader_learns_of_its_producers_death(cache_dir: Path, spawn: Any) -> None:
    cache = streamcache.StreamCache(cache_dir, liveness=0.3, cleanup_interval=0)
    producer, _ = start_producer(cache_dir, spawn)

    async def main() -> list[BaseException | bytes]:
        async with contextlib.AsyncExitStack() as stack:
            tasks = await park(cache, stack, 50)
            producer.kill()
            return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)

    outcomes = asyncio.run(main())
    producer.join(WAIT)
    cache.stop()
    assert all(isinstance(o, streamcache.ProducerDied) for o in outcomes), outcomes[:3]


def test_progress_reaches_the_last_parked_reader_after_the_others_closed(
    cache_dir: Path, spawn: Any
) -> None:
    """The hub sleeps on one mapping of a channel's word for all its readers; when that
    reader leaves, the others must not sleep on a word nobody rings. A liveness far
    beyond the test's bound means a lost wake-up shows as a timeout, not a delay."""
    cache = streamcache.StreamCache(cache_dir, liveness=3 * WAIT, cleanup_interval=0)
    producer, go = start_producer(cache_dir, spawn)

    async def main() -> bytes:
        async with contextlib.AsyncExitStack() as last:
            async with contextlib.AsyncExitStack() as others:
                first = await park(cache, others, 5)  # the first parked owns the word
                survivor = (await park(cache, last, 1, parked_before=5))[0]
                for t in first:
                    t.cancel()
                await asyncio.gather(*first, return_exceptions=True)
            go.set()  # the others' streams are closed and unmapped by now
            return await asyncio.wait_for(survivor, WAIT)

    assert asyncio.run(main()) == HEAD + TAIL
    producer.join(WAIT)
    cache.stop()
