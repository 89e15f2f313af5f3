"""Fixtures of the entry tests: an inline producer in another process, stopped after its
first write, as the tests of attach races, producer death and reader close need it."""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import procs_inline
import pytest
from procs_inline import WAIT, GatedProducer, StartGated, start_child, wait_event


@pytest.fixture
def gated_producer(cache_dir: Path, spawn: SpawnContext) -> Iterator[StartGated]:
    """``start(key, tail_gate=False, **options)`` spawns a gated producer of ``key`` in
    ``cache_dir`` (``options`` go to the child: dst_ok, die_after_publish,
    discovery_interval, window) and returns once it has written ``b"head "``; its tail
    is ``b"tail"``.

    At teardown a producer still alive is killed, never released: a multiprocessing
    Event's set() waits for every sleeper to wake, and one killed in its wait (by the
    test, perhaps just before) never does."""
    started: list[GatedProducer] = []

    def start(key: str, *, tail_gate: bool = False, **options: Any) -> GatedProducer:
        written, go = spawn.Event(), spawn.Event()
        if tail_gate:
            options.update(wrote_tail=spawn.Event(), hold=spawn.Event())
        proc, out = start_child(
            spawn,
            procs_inline.gated_inline_producer,
            str(cache_dir),
            key,
            b"head ",
            b"tail",
            written,
            go,
            **options,
        )
        producer = GatedProducer(proc, out, go, options.get("wrote_tail"), options.get("hold"))
        started.append(producer)
        wait_event(written, "the producer's first write")
        return producer

    yield start
    for producer in started:
        if producer.proc.is_alive():
            producer.proc.kill()
        producer.proc.join(WAIT)
