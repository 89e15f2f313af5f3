"""Child-process functions for tests/entry/test_resume_after_producer_death.py (spawn
context). Each child reports through its queue ``out``; every wait is bounded."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from xproc import WAIT, payload, reporting

import streamcache
from streamcache import asgi, wsgi

# The producer's gate stays shut while the test spawns and attaches every reader, one
# after another (each bounded by the test): at load 40 that took more than WAIT.
GATE_WAIT = 10 * WAIT


class Payload:
    """A deterministic create: the payload ``seed`` of ``total`` bytes in ``chunk``-byte
    writes (picklable, so a spawned child can take one). ``flip_at``: that byte is
    changed (a create that is not deterministic). ``gate`` (started, go): after the
    first write, say so and wait for go. ``stop`` (at, reached): once ``at`` bytes are
    written, say so and write nothing more (the test kills the process then). ``pace``:
    seconds between writes (a slow create)."""

    def __init__(
        self,
        seed: str,
        total: int,
        chunk: int,
        *,
        flip_at: int | None = None,
        gate: tuple[Any, Any] | None = None,
        stop: tuple[int, Any] | None = None,
        pace: float = 0.0,
    ) -> None:
        self.seed, self.total, self.chunk = seed, total, chunk
        self.flip_at, self.gate, self.stop = flip_at, gate, stop
        self.pace = pace

    def __call__(self, w: Any) -> None:
        done = 0
        for i, c in enumerate(payload(self.seed, self.total, self.chunk)):
            if self.flip_at is not None and done <= self.flip_at < done + len(c):
                b = bytearray(c)
                b[self.flip_at - done] ^= 0xFF
                c = bytes(b)
            w.write(c)
            done += len(c)
            if self.pace:
                time.sleep(self.pace)  # a slow create: one chunk per pace seconds
            if i == 0 and self.gate is not None:
                started, go = self.gate
                started.set()
                if not go.wait(GATE_WAIT):
                    raise TimeoutError("never let go")
            if self.stop is not None and done >= self.stop[0]:
                self.stop[1].set()
                time.sleep(WAIT)  # killed here
                raise TimeoutError("never killed")


@reporting
def producer(dir: str, key: str, mode: str, create: Payload, *, out: Any) -> None:
    """Create ``key`` with ``resume=True``: inline (``fetch``, no timeout) or in a
    producer thread (``stream``); the test kills this process mid-entry."""
    cache = streamcache.StreamCache(dir, liveness=0.2, cleanup_interval=0)
    if mode == "inline":
        cache.fetch(key, _Sink(None, 0), create, resume=True)
    else:
        with cache.stream(key, create, timeout=WAIT, resume=True) as s:
            for _ in s:
                pass
    out.put(("finished",))


@reporting
def producer_killed_sealing(
    dir: str, key: str, stage: str, create: Payload, reached: Any, *, out: Any
) -> None:
    """Create ``key`` with ``resume=True`` in a producer thread, stopping inside the
    data file's sealing, after its last byte: once its mode says "sealing" (``stage``
    "mode") or once the trailer is written too ("trailer"). There it sets ``reached``
    and waits to be killed. The stop is put into Filestore.seal, in this process only:
    two syscalls apart, no kill from outside can land there on purpose."""
    import os

    from streamcache.disk import filestore

    seal = filestore.Filestore.seal

    def seal_then_stop(self: filestore.Filestore, fd: int, size: int, expires: float) -> None:
        if stage == "trailer":
            seal(self, fd, size, expires)
        else:
            os.fchmod(fd, filestore.SEALING_MODE)
        reached.set()
        time.sleep(GATE_WAIT)  # killed here
        raise TimeoutError("never killed")

    filestore.Filestore.seal = seal_then_stop  # type: ignore[method-assign]
    producer(dir, key, "thread", create, out=out)


class _Sink:
    """A dst keeping the sha256 and length of what it got; says "attached" on the
    first bytes (then, given ``hold``, waits for it to be set: its reader stays where it
    is meanwhile) and notes when it first got a byte past ``mark``."""

    def __init__(self, out: Any, mark: int, hold: Any = None) -> None:
        self._h = hashlib.sha256()
        self.n = 0
        self._out = out
        self._mark = mark
        self._hold = hold
        self.past_mark: float | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        b = bytes(data)
        if not self.n and b and self._out is not None:
            self._out.put(("attached",))
            if self._hold is not None and not self._hold.wait(GATE_WAIT):
                raise TimeoutError("never let go")
        self._h.update(b)
        self.n += len(b)
        if self.past_mark is None and self.n > self._mark:
            self.past_mark = time.monotonic()
        return len(b)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@reporting
def reader(
    dir: str,
    key: str,
    mode: str,
    create: Payload,
    mark: int,
    resume: bool,
    liveness: float,
    *,
    out: Any,
    hold: Any = None,
) -> None:
    """Read ``key`` by ``mode`` (fetch, stream or astream); report ("ok", bytes, sha256,
    when the first byte past ``mark`` came) or ("raised", type, message, bytes, sha256).
    ``hold``: an Event the reader waits for once it got its first bytes."""
    cache = streamcache.StreamCache(dir, liveness=liveness, cleanup_interval=0)
    sink = _Sink(out, mark, hold)
    try:
        if mode == "fetch":
            cache.fetch(key, sink, create, timeout=WAIT, resume=resume)
        elif mode == "stream":
            with cache.stream(key, create, timeout=WAIT, resume=resume) as s:
                for c in s:
                    sink.write(c)
        elif mode == "astream":

            async def main() -> None:
                async with cache.astream(key, create, timeout=WAIT, resume=resume) as s:
                    async for c in s:
                        sink.write(c)

            asyncio.run(main())
        elif mode == "wsgi":
            environ = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1"}
            body = wsgi.serve(
                cache, key, create, environ, lambda status, headers: None, resume=resume
            )
            try:
                for c in body:
                    sink.write(c)
            finally:
                body.close()  # type: ignore[attr-defined]
        else:
            asyncio.run(_asgi_get(cache, key, create, resume, sink))
    except Exception as exc:
        out.put(("raised", type(exc).__name__, str(exc), sink.n, sink.hexdigest()))
        return
    out.put(("ok", sink.n, sink.hexdigest(), sink.past_mark))


async def _asgi_get(
    cache: streamcache.StreamCache, key: str, create: Payload, resume: bool, sink: _Sink
) -> None:
    """One GET through the ASGI helper; the body's bytes go to ``sink``. The client never
    goes away; a body cut short raises."""
    scope = {"type": "http", "method": "GET", "headers": [], "http_version": "1.1"}
    ended = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await asyncio.wait_for(ended.wait(), WAIT)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sink.write(message.get("body", b""))
            if not message.get("more_body", False):
                ended.set()

    await asgi.serve(cache, key, create, scope, receive, send, timeout=WAIT, resume=resume)
    if not ended.is_set():
        raise ConnectionError("the body was cut short")
