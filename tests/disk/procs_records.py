"""Child-process functions for tests/disk/test_records.py (spawn context).

Each child reports through a multiprocessing queue ``out`` (``("error", traceback)`` on an
unexpected exception, via :func:`xproc.reporting`); every wait is bounded.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from helpers import writing
from xproc import WAIT, HashSink, forbidden_create, reporting

import streamcache
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.index import Index


@reporting
def emfile_fetch(dir: str, key: str, *, out: Any) -> None:
    """Fetch ``key`` (in flight in another process) with exactly one free descriptor, as a
    busy server near its RLIMIT_NOFILE does; report whether the live record survived."""
    cache = streamcache.StreamCache(dir, liveness=0.2, cleanup_interval=0)
    index = Index(os.path.join(dir, LAYOUT))
    h = key_hash(key)
    # Warm up every import and code path first, so no lazy open happens below.
    cache.fetch("warm-up", HashSink(), writing(b"x"), timeout=WAIT)
    assert index.read(h) is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The lowest free descriptor number f and the next one g: with the limit at g, f is
    # the only descriptor this process can still open.
    f = os.open(os.devnull, os.O_RDONLY)
    g = os.open(os.devnull, os.O_RDONLY)
    os.close(f)
    os.close(g)
    outcome = "attached"
    resource.setrlimit(resource.RLIMIT_NOFILE, (g, hard))  # one descriptor left
    try:
        with cache.stream(key, forbidden_create, timeout=5):
            pass
    except BaseException as exc:  # any failure is acceptable here
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    rec = index.read(h)
    out.put(("outcome", outcome, rec is not None))
