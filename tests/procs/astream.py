"""Child processes for tests/entry/test_astream_waits.py,
tests/serving/test_event_loop_never_stalls.py and tests/test_failure_logging.py (spawn
context: module level)."""

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


def producer_killed_before_publishing(
    dir: str, key: str, head: bytes, tail: bytes, wrote_head: Any, wrote_tail: Any
) -> None:
    """Create ``key``: write and publish ``head``; then write ``tail`` to the data file
    but never publish it (the test kills this process in between, as a SIGKILL landing
    between the producer's write and its publish would)."""
    import threading

    from ipc.channel import Channel

    publish = Channel.publish
    never = threading.Event()

    def publish_once_more(self: Channel, offset: int, waiter: Any) -> Any:
        if offset > len(head):
            wrote_tail.set()
            never.wait(WAIT * 2)
        return publish(self, offset, waiter)

    Channel.publish = publish_once_more  # type: ignore[method-assign]
    cache = streamcache.StreamCache(dir, liveness=1.0, cleanup_interval=0)

    def create(w: Any) -> None:
        w.write(head)
        wrote_head.set()
        w.write(tail)

    cache.stream(key, create).read()
