"""Child-process functions around the inline creator (a fetch that misses runs create in
its caller's thread), shared by the tests of attach races, producer death, reader close,
create failures and reader independence (spawn context); and the test side of the
conversation with them.

Every child reports on a multiprocessing queue ``out``: its outcome, or ``("error",
traceback)`` on an unexpected exception. Every wait is bounded. Where a test needs a
crash or an interrupt at one exact point of the library, the child injects it there
(a SIGKILL of itself, or a KeyboardInterrupt raised by a trace function, as a signal
handler would); the library's code runs unchanged otherwise.
"""

from __future__ import annotations

import functools
import inspect
import io
import os
import queue
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from helpers import FailingDst, writing

import ipc
import streamcache.entry.writer
from streamcache import CreateError, StreamCache
from streamcache.lookup import Lookup

WAIT = 20.0
HOUR = 3600.0


def reporting(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def run(*args: Any, out: Any, **kwargs: Any) -> None:
        try:
            fn(*args, out=out, **kwargs)
        except BaseException:
            out.put(("error", traceback.format_exc()))
            raise

    return run


def forbidden_create(w: Any) -> None:
    raise AssertionError("this call must attach, not create")


class StallingDst:
    """Takes its first write; each later one waits for ``release`` (a client that stopped
    reading, as a TCP peer with a zero window), saying so on ``stalled``."""

    def __init__(self, stalled: Any, release: Any) -> None:
        self.stalled = stalled
        self.release = release
        self.got = bytearray()

    def write(self, b: bytes) -> int:
        if self.got:
            self.stalled.set()
            if not self.release.wait(WAIT):
                raise TimeoutError("the test never released the stalled client")
        self.got += b
        return len(b)


@reporting
def gated_inline_producer(
    dir: str,
    key: str,
    head: bytes,
    tail: bytes,
    written: Any,
    go: Any,
    *,
    out: Any,
    dst_ok: int = -1,
    die_after_publish: bool = False,
    discovery_interval: float | None = None,
    wrote_tail: Any = None,
    hold: Any = None,
    window: int | None = None,
) -> None:
    """Create ``key`` with an inline fetch: write ``head``, set ``written``, wait for ``go``,
    write ``tail`` (then, with ``wrote_tail``, say so and wait for ``hold``).

    ``dst_ok``: the fetch's dst takes that many writes, then fails. ``die_after_publish``:
    SIGKILL this process right after its data file became the finished entry (before the
    record is removed). ``discovery_interval``: how often the producer looks for IPC
    objects made by an attaching reader (widens the library's 1 ms window). ``window``:
    the cache's back-pressure window (default: the library's).
    """
    if discovery_interval is not None:
        streamcache.entry.writer._DISCOVERY_INTERVAL = discovery_interval
    extra = {} if window is None else {"window": window}
    cache = StreamCache(dir, max_age=HOUR, liveness=0.2, cleanup_interval=0, **extra)
    if die_after_publish:
        publish = cache._files.publish

        def publish_then_die(name: str, k: str) -> None:
            publish(name, k)
            os.kill(os.getpid(), signal.SIGKILL)

        cache._files.publish = publish_then_die  # type: ignore[method-assign]

    def create(w: Any) -> None:
        w.write(head)
        written.set()
        if not go.wait(WAIT):
            raise RuntimeError("the test never released the producer")
        w.write(tail)
        if wrote_tail is not None:
            wrote_tail.set()
            if not hold.wait(WAIT):
                raise RuntimeError("the test never released the producer")

    dst: Any = io.BytesIO() if dst_ok < 0 else FailingDst(dst_ok)
    try:
        res = cache.fetch(key, dst, create)
        out.put(("ok", res.written, res.created))
    except (CreateError, OSError) as exc:
        out.put((type(exc).__name__, str(exc)))


@reporting
def stalled_dst_producer(
    dir: str, key: str, chunks: list[bytes], stalled: Any, release: Any, *, out: Any
) -> None:
    """Create ``key`` with an inline fetch whose dst stalls after the first chunk."""
    cache = StreamCache(dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)

    def create(w: Any) -> None:
        for chunk in chunks:
            w.write(chunk)

    dst = StallingDst(stalled, release)
    res = cache.fetch(key, dst, create)
    out.put(("ok", res.written, res.created, bytes(dst.got) == b"".join(chunks)))


@reporting
def attacher_killed_making_bells(dir: str, key: str, *, out: Any) -> None:
    """Attach to ``key``'s inline entry, which has no IPC objects yet, so this process makes
    them; SIGKILL itself as it is about to make the second doorbell (the segment and the
    readers' doorbell exist by then)."""
    make = ipc.Doorbell.create.__func__  # type: ignore[attr-defined]

    def create(cls: type[ipc.Doorbell], name: str) -> ipc.Doorbell:
        if name.endswith("w"):
            os.kill(os.getpid(), signal.SIGKILL)
        return make(cls, name)  # type: ignore[no-any-return]

    ipc.Doorbell.create = classmethod(create)  # type: ignore[method-assign,assignment]
    cache = StreamCache(dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    cache.stream(key, forbidden_create, timeout=WAIT)
    out.put(("not killed",))


@reporting
def inline_creator_interrupted(dir: str, key: str, stop: Any, *, out: Any) -> None:
    """A fetch that misses is interrupted (KeyboardInterrupt, as from a SIGINT handler)
    after it claimed the entry and before its create started: raised by a trace function
    at the line of ``Lookup.find_or_claim`` that calls ``run_inline``. The process then lives on (a
    server whose request failed) until ``stop``."""
    cache = StreamCache(dir, max_age=HOUR, liveness=0.2, cleanup_interval=0)
    code = Lookup.find_or_claim.__code__
    lines, first = inspect.getsourcelines(Lookup.find_or_claim)
    target = next(first + i for i, line in enumerate(lines) if "run_inline(" in line)

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == target:
            sys.settrace(None)
            frame.f_trace = None
            raise KeyboardInterrupt
        return local

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    sys.settrace(trace)
    try:
        cache.fetch(key, io.BytesIO(), writing(b"never run"))
        out.put(("not interrupted",))
    except KeyboardInterrupt:
        out.put(("interrupted",))
    finally:
        sys.settrace(None)
    stop.wait(WAIT)


# -- the test's side ---------------------------------------------------------------------------


@dataclass
class GatedProducer:
    """A spawned inline creator (gated_inline_producer, started by the ``gated_producer``
    fixture) that has written its head and waits for ``go`` to write its tail; with a tail
    gate it then sets ``wrote_tail`` and waits for ``hold``. It reports its fetch's
    outcome on ``out``."""

    proc: BaseProcess
    out: Any
    go: Any
    wrote_tail: Any = None
    hold: Any = None


StartGated = Callable[..., GatedProducer]  # the gated_producer fixture


def start_child(spawn: SpawnContext, target: Callable[..., None], *args: Any, **kwargs: Any) -> Any:
    out = spawn.Queue()
    proc = spawn.Process(target=target, args=args, kwargs={**kwargs, "out": out}, daemon=True)
    proc.start()
    return proc, out


def get_report(out: Any, timeout: float = WAIT) -> tuple[Any, ...]:
    try:
        msg = out.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError("the child did not report in time") from None
    assert msg[0] != "error", msg[1]
    return tuple(msg)


def wait_event(event: Any, what: str, timeout: float = WAIT) -> None:
    assert event.wait(timeout), f"timed out waiting for {what}"


def read_exactly(s: streamcache.Stream, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.read(n - len(got))
        assert chunk, f"the entry ended after {len(got)} of {n} bytes"
        got += chunk
    return got
