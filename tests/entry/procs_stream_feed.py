"""Child-process functions for tests/entry/test_stream_creator_fed_in_process.py (spawn
context): readers in other processes of the entry a ``stream()`` creator makes."""

from __future__ import annotations

from typing import Any

from xproc import WAIT, forbidden_create, reporting

import streamcache


@reporting
def attach_and_read(dir: str, key: str, attached: Any, *, out: Any) -> None:
    """Attach to ``key`` in flight with ``stream()``, say so, read it to the end; report
    ("read", bytes) or ("raised", class name, text, bytes before it)."""
    cache = streamcache.StreamCache(dir, cleanup_interval=0, registry=None)
    try:
        with cache.stream(key, forbidden_create, timeout=WAIT) as s:
            assert not s.created, "the reader created the entry instead of attaching"
            attached.set()
            got = bytearray()
            try:
                for chunk in s:
                    got += chunk
            except streamcache.CreateError as exc:
                out.put(("raised", type(exc).__name__, str(exc), bytes(got)))
                return
        out.put(("read", bytes(got)))
    finally:
        cache.stop()
