"""Child-process functions for tests/entry/test_zero_copy_matches_copy.py (spawn context)."""

from __future__ import annotations

import threading
from typing import Any

from xproc import WAIT, payload, reporting

import streamcache

CHUNK = 64 << 10


@reporting
def gated_producer(
    dir: str,
    key: str,
    seed: str,
    head: int,
    total: int,
    window: int,
    wrote_head: Any,
    go: Any,
    *,
    out: Any,
) -> None:
    """Create ``key``: the payload ``seed``'s first ``head`` bytes, then ``wrote_head``;
    after ``go``, the rest up to ``total`` bytes. The creating stream is left unread,
    so the cache's back-pressure window (``window``) holds the producer to its
    fastest follower in another process."""
    cache = streamcache.StreamCache(dir, window=window, liveness=0.2, cleanup_interval=0)

    created = threading.Event()

    def create(w: Any) -> None:
        done = 0
        for chunk in payload(seed, total, CHUNK):
            if done == head:
                wrote_head.set()
                if not go.wait(WAIT):
                    raise TimeoutError("never told to go on")
            w.write(chunk)
            done += len(chunk)
        created.set()

    try:
        with cache.stream(key, create, timeout=WAIT):
            if not created.wait(WAIT):
                raise TimeoutError("create did not finish")
    finally:
        cache.stop()
    out.put(("done",))
