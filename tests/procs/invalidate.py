"""Child processes for tests/test_invalidate.py (spawn context: module level).

Each child reports through a multiprocessing queue ``out`` (``("error", traceback)`` on an
unexpected exception, via :func:`xproc.reporting`); every wait is bounded.
"""

from __future__ import annotations

from typing import Any

from xproc import WAIT, HashSink, payload, reporting

import streamcache

HOUR = 3600.0


@reporting
def gated_producer(
    dir: str,
    key: str,
    seed: str,
    total: int,
    chunk: int,
    inline: bool,
    wrote_first: Any,
    go: Any,
    *,
    out: Any,
) -> None:
    """Create ``key`` with the payload ``seed``: write its first chunk, set
    ``wrote_first``, wait for ``go``, write the rest. ``inline``: a fetch without a
    timeout (create runs in the fetch's thread), else with one (a producer thread)."""
    cache = streamcache.StreamCache(dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)

    def create(w: Any) -> None:
        chunks = payload(seed, total, chunk)
        w.write(next(chunks))
        wrote_first.set()
        if not go.wait(WAIT):
            raise TimeoutError("the test never released the producer")
        for c in chunks:
            w.write(c)

    sink = HashSink()
    res = cache.fetch(key, sink, create, timeout=None if inline else WAIT)
    out.put(("fetched", sink.hexdigest(), res.written, res.created))
    out.put(("producers-done", cache.wait_producers(WAIT)))


@reporting
def fetch_once(dir: str, key: str, seed: str, total: int, chunk: int, *, out: Any) -> None:
    """Fetch ``key`` once, offering a create that writes the payload ``seed``."""
    cache = streamcache.StreamCache(dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)

    def create(w: Any) -> None:
        for c in payload(seed, total, chunk):
            w.write(c)

    sink = HashSink()
    res = cache.fetch(key, sink, create, timeout=WAIT)
    out.put(("fetched", sink.hexdigest(), res.written, res.created))
