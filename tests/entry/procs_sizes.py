"""Child processes for tests/entry/test_sizes_and_ranges.py (spawn context: module level)."""

from __future__ import annotations

from multiprocessing.connection import Connection

import streamcache


def stream_reader(dir: str, key: str, start: int, conn: Connection) -> None:
    """Open ``key``'s stream from ``start`` (never creating), report what it sees of
    the entry before reading, then on "read" read it to the end and report that."""
    cache = streamcache.StreamCache(dir, liveness=0.5, cleanup_interval=0)

    def never(w: object) -> None:
        raise AssertionError("the reader must attach, not create")

    try:
        with cache.stream(key, never, timeout=30, start=start) as s:
            conn.send(("opened", s.created, s.size, s.position))
            while True:
                cmd = conn.recv()
                if cmd == "state":
                    conn.send(("state", s.size, s.produced, s.position))
                elif cmd == "read":
                    data = s.read()
                    conn.send(("read", data, s.position, s.size))
                    return
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
