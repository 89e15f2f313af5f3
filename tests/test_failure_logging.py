"""A failed entry is one log line on the "streamcache" logger, never a traceback per
reader: the producer's process logs its create's failure, and of the readers of a
killed producer only the one that removes the entry logs it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT
from procs.astream import gated_producer
from xproc import forbidden_create

import streamcache

READERS = 4


def _read_all(s: streamcache.Stream, errors: list[BaseException]) -> None:
    try:
        with s:
            s.read()
    except BaseException as exc:
        errors.append(exc)


def test_a_failing_create_is_one_warning_for_all_its_readers(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = streamcache.StreamCache(cache_dir, liveness=0.5, cleanup_interval=0)
    attached = threading.Barrier(2)

    def create(w: Any) -> None:
        w.write(b"x" * 100)
        attached.wait(WAIT)  # every reader is attached before the failure
        raise OSError("the disk is on fire")

    errors: list[BaseException] = []
    caplog.set_level(logging.DEBUG, logger="streamcache")
    with cache.stream("k", create) as mine:
        assert mine.read(100) == b"x" * 100
        others = [cache.stream("k", forbidden_create, timeout=WAIT) for _ in range(READERS - 1)]
        readers = [threading.Thread(target=_read_all, args=(s, errors)) for s in others]
        for t in readers:
            t.start()
        # The creator's stream and READERS - 1 threads attach; then create fails.
        attached.wait(WAIT)
        with pytest.raises(streamcache.CreateError, match="disk is on fire"):
            mine.read()
        for t in readers:
            t.join(WAIT)
    cache.wait_producers(WAIT)
    cache.stop()
    assert len(errors) == READERS - 1
    assert all(isinstance(e, streamcache.CreateError) for e in errors)
    records = [r for r in caplog.records if r.name == "streamcache"]
    assert [r.levelno for r in records] == [logging.WARNING], records
    assert "disk is on fire" in records[0].getMessage()
    assert records[0].exc_info is None


def test_a_killed_producer_is_one_warning_for_all_its_readers(
    cache_dir: Path, spawn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    wrote, go = spawn.Event(), spawn.Event()
    producer = spawn.Process(
        target=gated_producer, args=(str(cache_dir), "k", b"h" * 10, b"t", wrote, go)
    )
    producer.start()
    assert wrote.wait(WAIT)
    cache = streamcache.StreamCache(cache_dir, liveness=0.3, cleanup_interval=0)
    caplog.set_level(logging.DEBUG, logger="streamcache")
    streams = [cache.stream("k", forbidden_create, timeout=WAIT) for _ in range(READERS)]
    errors: list[BaseException] = []

    def read(s: streamcache.Stream) -> None:
        try:
            s.read()
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=read, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    producer.kill()
    producer.join(WAIT)
    for t in threads:
        t.join(WAIT)
    cache.stop()
    assert len(errors) == READERS
    assert all(isinstance(e, streamcache.ProducerDied) for e in errors), errors
    records = [r for r in caplog.records if r.name == "streamcache"]
    assert [r.levelno for r in records] == [logging.WARNING], records
    assert "died" in records[0].getMessage()


def test_readers_leaving_is_not_a_warning(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = streamcache.StreamCache(cache_dir, liveness=0.5, cleanup_interval=0)
    caplog.set_level(logging.DEBUG, logger="streamcache")

    def create(w: Any) -> None:
        while True:
            w.write(b"x" * 65536)  # BrokenPipeError once the only reader left

    with cache.stream("k", create) as s:
        s.read(10)
    cache.wait_producers(WAIT)
    cache.stop()
    levels = [r.levelno for r in caplog.records if r.name == "streamcache"]
    assert levels == [logging.DEBUG], caplog.records
