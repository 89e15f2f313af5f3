"""Fixtures of the disk tests: an entry in flight in real processes, for the tests that
kill or wipe everything under it."""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path

import procs_hostile
import pytest
from procs_hostile import LiveEntry, StartLive
from xproc import WAIT, expect


@pytest.fixture
def live_entry(cache_dir: Path, spawn: SpawnContext) -> Iterator[StartLive]:
    """``start(key, seed, total, chunk, inline=..., pace=0.0, readers=2)`` spawns a
    producer of ``key`` (an inline creator or a producer thread writing ``total`` bytes
    of ``seed``: a chunk every ``pace`` seconds until ``release``, or with ``pace`` 0
    stalled after its first chunk until then) and ``readers`` readers, and returns once
    each has read a chunk.

    At teardown every one still alive is killed, never released: a multiprocessing
    Event's set() waits for every sleeper to wake, and one killed in its wait (by the
    test, perhaps just before) never does."""
    started: list[BaseProcess] = []

    def start(
        key: str,
        seed: str,
        total: int,
        chunk: int,
        *,
        inline: bool,
        pace: float = 0.0,
        readers: int = 2,
    ) -> LiveEntry:
        wrote, release, pout = spawn.Event(), spawn.Event(), spawn.Queue()
        prod = spawn.Process(
            target=procs_hostile.producer,
            args=(str(cache_dir), key, seed, total, chunk, inline, wrote, release),
            kwargs={"out": pout, "pace": pace},
        )
        prod.start()
        started.append(prod)
        entry = LiveEntry(prod, pout, release, [], [])
        assert wrote.wait(WAIT)
        for _ in range(readers):
            q = spawn.Queue()
            r = spawn.Process(
                target=procs_hostile.reader, args=(str(cache_dir), key, chunk), kwargs={"out": q}
            )
            r.start()
            started.append(r)
            entry.readers.append(r)
            entry.reader_outs.append(q)
        for q in entry.reader_outs:
            expect(q, "first")
        return entry

    yield start
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(WAIT)
