"""Child processes for tests/test_astream_waits.py (spawn context: module level)."""

from __future__ import annotations

from typing import Any

from xproc import WAIT, HashSink

import streamcache


def gated_producer(dir: str, key: str, head: bytes, tail: bytes, wrote: Any, go: Any) -> None:
    """Create ``key``: write ``head``, wait for ``go``, write ``tail``."""
    cache = streamcache.StreamCache(dir, liveness=1.0, cleanup_interval=0)

    def create(w: Any) -> None:
        w.write(head)
        wrote.set()
        if not go.wait(WAIT * 2):
            raise TimeoutError("the test never let the producer finish")
        w.write(tail)

    cache.fetch(key, HashSink(), create, timeout=WAIT * 2)
