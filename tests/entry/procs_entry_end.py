"""Child processes for tests/entry/test_entry_end.py (spawn context: module level)."""

from __future__ import annotations

from typing import Any

from xproc import WAIT, HashSink, payload_bytes, reporting

import streamcache


@reporting
def inline_creator(dir: str, key: str, size: int, wrote: Any, go: Any, *, out: Any) -> None:
    """Create ``key`` inline (fetch, no timeout): write ``size`` bytes, then wait for
    ``go`` before returning, so the entry is sealed and published only then."""
    cache = streamcache.StreamCache(dir, liveness=0.2, cleanup_interval=0)

    def create(w: Any) -> None:
        w.write(payload_bytes(key, size, size))
        wrote.set()
        if not go.wait(WAIT):
            raise TimeoutError("the test never let the producer finish")

    res = cache.fetch(key, HashSink(), create)
    out.put(("fetched", res.written, res.created))
