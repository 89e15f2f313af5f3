"""What the test apps serve, configured through the environment.

``GET /blob/<key>?size=N&rate=R&announce=1&resume=1&hold=H`` streams the entry ``key``
of the cache in ``$STREAMCACHE_APP_DIR``. Its bytes are :func:`pattern` of the key, so a
test checks any range of any body without keeping it. The create that makes an entry
appends a line ``<epoch> create <pid> <key>`` to ``$STREAMCACHE_APP_EVENTS`` before its
first byte and ``<epoch> end <pid> <key>`` after its last (one ``write`` on an O_APPEND
file: lines from many processes never mix), so a test counts creates and finds the
producing process. ``rate`` paces the producer (bytes per second), ``announce=1`` makes
create call ``w.set_size(size)`` first, ``resume=1`` passes ``resume=True`` (the create
is deterministic: a reader carries the entry on if its producer dies), ``hold=H`` makes
create stop after its first H bytes until the file :func:`go_file` of the key exists
(up to HOLD_LIMIT seconds). ``GET /ping`` answers ``pong`` at once.

Environment: ``STREAMCACHE_APP_DIR`` (required), ``STREAMCACHE_APP_EVENTS`` (required),
``STREAMCACHE_APP_LIVENESS`` (seconds, default 1), ``STREAMCACHE_APP_SIZE`` and
``STREAMCACHE_APP_RATE`` (defaults for the query's size and rate).
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

MiB = 1 << 20
PERIOD = 1_048_573  # a prime: the pattern never lines up with power-of-two chunks
CHUNK = 256 * 1024
HOLD_LIMIT = 300.0  # seconds a held create waits for its go file, at most


@functools.lru_cache(maxsize=64)
def _base(key: str) -> bytes:
    data = random.Random(f"streamcache-test:{key}").randbytes(PERIOD)
    return data + data


def pattern(key: str, start: int, length: int) -> bytes:
    """Bytes ``start`` to ``start + length`` of the body of ``key``."""
    base = _base(key)
    parts = []
    while length > 0:
        off = start % PERIOD
        n = min(length, PERIOD)
        parts.append(base[off : off + n])
        start += n
        length -= n
    return b"".join(parts)


@dataclass(frozen=True)
class Request:
    """What the query of ``/blob/<key>`` asks the create to do."""

    key: str
    size: int
    rate: float
    announce: bool
    resume: bool = False
    hold: int | None = None


def parse(path: str, query: str) -> Request | None:
    """The blob request of ``path`` and ``query``, or None when the path is not a blob."""
    if not path.startswith("/blob/"):
        return None
    q = {k: v[-1] for k, v in parse_qs(query).items()}
    return Request(
        key=path[len("/blob/") :],
        size=int(q.get("size", os.environ.get("STREAMCACHE_APP_SIZE", 64 * MiB))),
        rate=float(q.get("rate", os.environ.get("STREAMCACHE_APP_RATE", 50 * MiB))),
        announce=q.get("announce", "1") == "1",
        resume=q.get("resume", "0") == "1",
        hold=int(q["hold"]) if "hold" in q else None,
    )


def log_event(event: str, key: str) -> None:
    line = f"{time.time():.6f} {event} {os.getpid()} {key}\n".encode()
    fd = os.open(os.environ["STREAMCACHE_APP_EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def go_file(key: str) -> str:
    """The file whose existence lets a held create of ``key`` go on (``hold=``)."""
    return f"{os.environ['STREAMCACHE_APP_EVENTS']}.{key}.go"


def _wait_for_go(key: str) -> None:
    deadline = time.monotonic() + HOLD_LIMIT
    while not os.path.exists(go_file(key)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {go_file(key)} within {HOLD_LIMIT} s")
        time.sleep(0.01)


def creator(req: Request) -> Callable[[Any], None]:
    """The create for ``req``: the key's pattern at ``req.rate`` bytes per second."""

    def create(w: Any) -> None:
        log_event("create", req.key)
        if req.announce:
            w.set_size(req.size)
        t0 = time.monotonic()
        pos = 0
        while pos < req.size:
            if pos == req.hold:
                _wait_for_go(req.key)
            n = min(CHUNK, req.size - pos)
            if req.hold is not None and pos < req.hold:
                n = min(n, req.hold - pos)
            w.write(pattern(req.key, pos, n))
            pos += n
            ahead = t0 + pos / req.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        log_event("end", req.key)

    return create


def cache_options() -> dict[str, Any]:
    """The StreamCache arguments of the environment."""
    return {
        "dir": os.environ["STREAMCACHE_APP_DIR"],
        "liveness": float(os.environ.get("STREAMCACHE_APP_LIVENESS", "1")),
    }
