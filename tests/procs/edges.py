"""Child processes for the tests of the cache's edges: default admission, pickling,
unusable directories (spawn context: module level)."""

from __future__ import annotations

import hashlib
import os
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import streamcache

WAIT = 30.0


def payload(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest() * 4096  # 128 KiB


def counting_create(log: str, key: str) -> Any:
    """A create that notes each run as one line in the file ``log``."""

    def create(w: Any) -> None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        data = payload(key)
        for i in range(0, len(data), 16384):
            w.write(data[i : i + 16384])

    return create


def first_request(dir: str, key: str, log: str, barrier: Barrier, out: Queue[Any]) -> None:
    """The pattern of docs/guide/use.md: ``new(Config(dir=...))`` with its defaults, then one
    fetch of ``key`` released together with the other processes' by ``barrier``."""
    try:
        with streamcache.new(streamcache.Config(dir=dir)) as cache:
            barrier.wait(WAIT)
            sink = _Sink()
            written, created = cache.fetch(key, sink, counting_create(log, key))
            out.put((written, created, sink.data == payload(key)))
    except Exception as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, b: bytes) -> int:
        self.data += bytes(b)
        return len(b)
