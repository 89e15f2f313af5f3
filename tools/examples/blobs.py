"""What the example apps serve: a slow, deterministic blob per key, and the cache.

``/blob/<key>?size=N`` is N bytes (default 64 MiB) made at about 50 MiB/s, standing in
for any expensive producer (a pack file, an export, a rendered video). The first
request for a key runs :func:`make`; every concurrent request streams the same bytes
as they are written; later ones are hits served from the finished file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import streamcache
from streamcache.base import CacheBase

MiB = 1 << 20
RATE = 50 * MiB  # bytes per second the producer makes
CHUNK = 256 * 1024


def open_cache() -> CacheBase:
    """The cache in ``$STREAMCACHE_DIR`` (a directory in the temp dir by default).

    Every worker process of the server opens the same directory: one producer per key
    on the host. ``min_occurrences=0`` caches from the first request (Gitaly's default
    of 1 sends the first request for a key straight to its producer, uncached)."""
    path = os.environ.get("STREAMCACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "streamcache-example"
    )
    return streamcache.new(streamcache.Config(dir=path, max_age=300.0, min_occurrences=0))


def blob_request(path: str, query: str) -> tuple[str, Callable[[Any], None]] | None:
    """The key and create of ``/blob/<key>?size=N``; None for any other path."""
    if not path.startswith("/blob/") or len(path) == len("/blob/"):
        return None
    key = path[len("/blob/") :]
    size = int(parse_qs(query).get("size", [str(64 * MiB)])[-1])

    def make(w: Any) -> None:
        w.set_size(size)  # announced: every response gets a Content-Length at once
        block = hashlib.sha256(key.encode()).digest() * (CHUNK // 32)
        t0 = time.monotonic()
        for pos in range(0, size, CHUNK):
            w.write(block[: min(CHUNK, size - pos)])
            time.sleep(max(0.0, t0 + (pos + CHUNK) / RATE - time.monotonic()))

    return key, make
