"""Child-process bodies for tests/test_lifecycle.py (spawn context needs them importable)."""

from __future__ import annotations

import threading
from typing import Any

import streamcache


def create_then_exit(cache_dir: str, key: str, chunks: int, attached: Any, left: Any) -> None:
    """Create an entry, read one chunk, leave the stream and return normally while the
    producer still has bytes to write for a reader in another process."""
    cache = streamcache.StreamCache(cache_dir, window=65536)

    def create(w: Any) -> None:
        for i in range(chunks):
            w.write(bytes([i % 256]) * 65536)

    with cache.stream(key, create) as s:
        s.read(1)
        attached.wait(30)  # the other process's reader is in: now leave early
    left.set()
    # Returning ends the process: the interpreter first joins the producer thread.


def attach_and_hang(cache_dir: str, key: str, attached: Any) -> None:
    """Attach to an entry in flight, read a byte, report, then hang until killed."""
    cache = streamcache.StreamCache(cache_dir)

    def create(w: Any) -> None:
        raise AssertionError("must attach, not create")

    with cache.stream(key, create, timeout=30) as s:
        s.read(1)
        attached.set()
        threading.Event().wait(60)
