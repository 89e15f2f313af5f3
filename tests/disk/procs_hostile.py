"""Child-process functions for the restart, wipe and planted-object tests (spawn context),
and the test side: a wipe of /dev/shm, and the entry in flight the ``live_entry`` fixture
starts.

Each child reports through a multiprocessing queue ``out`` (``("error", traceback)`` on an
unexpected exception, via :func:`xproc.reporting`); every wait is bounded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import posix_ipc
from xproc import WAIT, HashSink, forbidden_create, payload, read_head, reporting

import ipc
import streamcache


@reporting
def producer(
    dir: str,
    key: str,
    seed: str,
    total: int,
    chunk: int,
    inline: bool,
    wrote_first: Any,
    release: Any,
    *,
    out: Any,
    pace: float = 0.0,
) -> None:
    """Create ``key``: inline (fetch without a timeout: create runs in this thread) or in
    a producer thread (fetch with a timeout). Write the first chunk, set ``wrote_first``,
    wait for ``release`` (unless ``pace`` > 0: then write a chunk every ``pace`` seconds
    until ``release`` is set, and the rest at once); report how the fetch ended."""
    cache = streamcache.StreamCache(dir, liveness=0.2, cleanup_interval=0)

    def create(w: Any) -> None:
        chunks = payload(seed, total, chunk)
        w.write(next(chunks))
        wrote_first.set()
        if pace <= 0 and not release.wait(WAIT):
            raise TimeoutError("the test never released the producer")
        for c in chunks:
            w.write(c)
            if pace > 0 and not release.is_set():
                time.sleep(pace)

    sink = HashSink()
    try:
        res = cache.fetch(key, sink, create, timeout=None if inline else WAIT)
    except streamcache.Error as exc:
        out.put(("ended", type(exc).__name__, str(exc), time.monotonic()))
    else:
        out.put(("ended", "ok", f"{res.written} {res.created}", time.monotonic()))
    # The producer thread (fetch with a timeout) may outlive the call: let it end.
    cache.wait_producers(WAIT)


@reporting
def reader(dir: str, key: str, first: int, *, out: Any) -> None:
    """Attach to ``key`` (never create), read ``first`` bytes, report, then read on;
    report how it ended (the exception's type and text) and when."""
    cache = streamcache.StreamCache(dir, liveness=0.2, cleanup_interval=0)
    try:
        with cache.stream(key, forbidden_create, timeout=WAIT) as s:
            head = read_head(s, first)
            out.put(("first", len(head), os.getpid()))
            n = len(head)
            for data in s:
                n += len(data)
        out.put(("ended", "ok", str(n), time.monotonic()))
    except (streamcache.Error, TimeoutError) as exc:
        out.put(("ended", type(exc).__name__, str(exc), time.monotonic()))


@reporting
def fetch_once(dir: str, key: str, seed: str, total: int, chunk: int, *, out: Any) -> None:
    """Fetch ``key`` (creating it with the payload if needed); report digest and created."""
    from xproc import writer_of

    cache = streamcache.StreamCache(dir, liveness=0.2, cleanup_interval=0)
    sink = HashSink()
    res = cache.fetch(key, sink, writer_of(seed, total, chunk), timeout=WAIT)
    out.put(("fetched", sink.hexdigest(), res.written, res.created))


@reporting
def fetch_with_planted_names(
    dir: str, key: str, token: str, seed: str, total: int, chunk: int, *, out: Any
) -> None:
    """Fetch ``key`` while the first random name the cache draws is ``token`` (whose
    /dev/shm names the test planted); report digest, created and the names drawn."""
    from xproc import writer_of

    import streamcache.disk.filestore as filestore

    drawn: list[str] = []
    real = filestore.random_token

    def forced() -> str:
        value = token if not drawn else real()
        drawn.append(value)
        return value

    filestore.random_token = forced
    cache = streamcache.StreamCache(dir, liveness=0.2, cleanup_interval=0)
    sink = HashSink()
    with cache.stream(key, writer_of(seed, total, chunk), timeout=WAIT) as s:
        for data in s:
            sink.write(data)
        created = s.created
    out.put(("fetched", sink.hexdigest(), sink.n, created, drawn))


# -- the test side -----------------------------------------------------------------------------


def wipe(cache_dir: Path) -> list[str]:
    """Unlink every IPC object of the cache, as RemoveIPC does."""
    names = []
    for obj in ipc.list_objects(ipc.prefix_for(cache_dir)):
        if obj.is_semaphore:
            posix_ipc.unlink_semaphore(obj.name)
        else:
            posix_ipc.unlink_shared_memory(obj.name)
        names.append(obj.name)
    return names


@dataclass
class LiveEntry:
    """An entry in flight: its :func:`producer`, which wrote its first chunk (a stalled one
    waits for ``release``), and :func:`reader` processes that read their first chunk of it.
    Each reports on its queue (``out``, ``reader_outs``)."""

    producer: BaseProcess
    out: Any
    release: Any
    readers: list[BaseProcess]
    reader_outs: list[Any]


StartLive = Callable[..., LiveEntry]  # the live_entry fixture
