"""Serve a cache entry from an ASGI app (http scope: uvicorn, hypercorn, granian).

::

    from streamcache.asgi import serve as aserve

    async def app(scope, receive, send):
        await aserve(cache, key, create, scope, receive, send,
                     content_type="application/octet-stream", headers=())

The rules are :mod:`streamcache.wsgi`'s (docs/design.md, "Serving over HTTP"; the I/O-free part is
:mod:`streamcache.serving.http`). What differs:

- The client going away is seen only on ``receive()`` (under uvicorn ``send()`` after
  a disconnect returns quietly), so ``receive()`` is watched for ``http.disconnect``
  while the response is prepared and sent; on it the sending stops and the astream
  is closed at once.
- A producer failing after the first byte: the helper logs its line (as wsgi's) and
  returns without the final body message. uvicorn then closes the connection (logging
  "ASGI callable returned without completing response." at ERROR, one line, no
  traceback); an exception instead would log a traceback per reader.
- Zero copy: ``http.response.zerocopysend`` (the ASGI extension), or
  ``http.response.zerocopy``, when ``scope["extensions"]`` offers it, with an explicit
  offset and count (the entry's data file has a trailer past the data).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import IO, Any, TypeVar

from ..base import CacheBase, check_resume
from ..entry.create_types import Create
from ..entry.stream import AsyncStream
from ..errors import CreateError
from . import http
from .http import BLOCK, ByteRange, Headers, RangeSpec, Unsatisfiable

__all__ = ["serve"]

log = logging.getLogger("streamcache")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The extension's name in the ASGI spec, then the other name docs/design.md's "Serving over
# HTTP" gives it.
ZEROCOPY = ("http.response.zerocopysend", "http.response.zerocopy")

T = TypeVar("T")


async def serve(
    cache: CacheBase,
    key: str,
    create: Create,
    scope: Mapping[str, Any],
    receive: Receive,
    send: Send,
    content_type: str = "application/octet-stream",
    headers: Iterable[tuple[str, str]] = (),
    *,
    timeout: float | None = None,
    idle_timeout: float | None = None,
    resume: bool = False,
) -> None:
    """Answer the http request of ``scope`` with the entry of ``key`` (``create`` makes
    it on a miss). ``timeout``, ``idle_timeout`` and ``resume`` are ``cache.astream``'s."""
    extra = http.check_arguments(key, create, content_type, headers, timeout, idle_timeout)
    if not isinstance(scope, Mapping):
        raise TypeError(f"scope must be a mapping, not {type(scope).__name__}")
    if scope.get("type") != "http":
        raise ValueError(f"serve answers http scopes, not {scope.get('type')!r}")
    if not callable(receive) or not callable(send):
        raise TypeError("receive and send must be callables")
    method = scope.get("method", "GET")
    if method == "HEAD":
        info = cache.peek(key)
        status, head = http.success_headers(
            content_type, extra, None if info is None else info.size
        )
        await _start(send, status, head)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    fields = scope.get("headers", ())
    request = _Request(
        cache,
        key,
        create,
        http.Waits(timeout, idle_timeout, check_resume(resume)),
        http.wanted_range(
            method,
            http.header_value(fields, b"range"),
            http.header_value(fields, b"if-range"),
            extra,
        ),
        http.is_http10(scope.get("http_version")),
    )
    extensions = scope.get("extensions") or {}
    zerocopy = next((name for name in ZEROCOPY if name in extensions), None)
    body = asyncio.ensure_future(request.respond(send, content_type, extra, zerocopy))
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({body, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (body, gone):
            task.cancel()
        await asyncio.wait({body, gone})  # the body task closes its astream on the way out
    if not body.cancelled() and body.exception() is not None:
        raise body.exception()  # type: ignore[misc]
    if not gone.cancelled() and gone.exception() is not None:
        raise gone.exception()  # type: ignore[misc]


async def _disconnected(receive: Receive) -> None:
    """Until the client goes away (request body messages are skipped)."""
    while (await receive()).get("type") != "http.disconnect":
        pass


async def _start(send: Send, status: str, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": int(status.split()[0]),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the loop's default executor: the spool's file I/O stays off the
    loop's thread. A cancellation waits for it to return, so the file it works on is
    never closed under it."""
    future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    return future.result()


async def _open(
    cache: CacheBase, key: str, create: Create, waits: http.Waits, start: int
) -> AsyncStream:
    """``cache.astream(...)``, entered. The open is one step on the loop (no wait), so
    a cancellation (the client left) never strands a reader it opened."""
    s = cache.astream(key, create, waits.timeout, **waits.kw(start))
    await s.__aenter__()
    return s


async def _close(s: AsyncStream) -> None:
    await s.aclose()


class _Plan:
    """The response decided: size, range, and where its bytes come from (``pending``,
    read ahead to see that the producer works, then the astream or a spool)."""

    def __init__(self, stream: AsyncStream, pending: bytes, size: int | None) -> None:
        self.stream = stream
        self.pending = pending
        self.size = size
        self.part: ByteRange | None = None
        self.remaining: int | None = size
        self.spool: IO[bytes] | None = None

    async def read(self, n: int) -> bytes:
        if self.spool is not None:
            return await _in_thread(self.spool.read, n)
        return await self.stream.read(n)

    async def skip(self, n: int) -> None:
        dropped = min(n, len(self.pending))
        self.pending = self.pending[dropped:]
        n -= dropped
        while n > 0:
            chunk = await self.read(min(n, BLOCK))
            if not chunk:
                raise CreateError("streamcache: the entry ended before the range")
            n -= len(chunk)

    async def close(self) -> None:
        try:
            await _close(self.stream)
        finally:
            if self.spool is not None:
                await _in_thread(self.spool.close)  # frees its pages: as long as a write


class _Request:
    def __init__(
        self,
        cache: CacheBase,
        key: str,
        create: Create,
        waits: http.Waits,
        spec: RangeSpec | None,
        old_client: bool,
    ) -> None:
        self.cache = cache
        self.key = key
        self.create = create
        self.waits = waits
        self.spec = spec
        self.old_client = old_client

    async def respond(
        self, send: Send, content_type: str, extra: Headers, zerocopy: str | None
    ) -> None:
        try:
            plan = await self._prepare()
        except (CreateError, TimeoutError) as exc:
            log.log(
                http.log_level(exc),
                "streamcache: serving %r failed before the body: %s",
                self.key,
                http.one_line(exc),
            )
            status, head, body = http.error_response(exc)
            await _start(send, status, head)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if isinstance(plan, Unsatisfiable):
            await _start(send, *http.unsatisfiable_headers(plan.size, extra))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        try:
            await _start(send, *http.success_headers(content_type, extra, plan.size, plan.part))
            await self._body(plan, send, zerocopy)
        finally:
            await plan.close()

    async def _body(self, plan: _Plan, send: Send, zerocopy: str | None) -> None:
        if (
            zerocopy is not None
            and not plan.pending
            and plan.spool is None
            and plan.remaining is not None
            and (ff := plan.stream.finished_file()) is not None
        ):
            message = {
                "type": zerocopy,
                "file": ff,
                "offset": plan.stream.position,
                "count": plan.remaining,
                "more_body": False,
            }
            await send(message)
            return
        sent = 0
        while True:
            want = BLOCK if plan.remaining is None else min(BLOCK, plan.remaining)
            if plan.pending:
                chunk, plan.pending = plan.pending[:want], plan.pending[want:]
            elif want:
                try:
                    chunk = await plan.read(want)
                except (CreateError, OSError) as exc:  # TimeoutError is an OSError
                    return self._abort(sent, http.one_line(exc), http.log_level(exc))
                if not chunk and plan.remaining is not None:
                    why = f"the entry ended {plan.remaining} bytes early"
                    return self._abort(sent, why, http.log_level(None))
            else:
                chunk = b""
            if plan.remaining is not None:
                plan.remaining -= len(chunk)
            last = not chunk or plan.remaining == 0
            if last:
                await plan.close()  # all of it is read: release the reader now
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            sent += len(chunk)
            if last:
                return

    def _abort(self, sent: int, why: str, level: int) -> None:
        """Return without the final message: the server drops the connection."""
        text = "streamcache: response for %r aborted after %d bytes: %s"
        log.log(level, text, self.key, sent, why)

    async def _prepare(self) -> _Plan | Unsatisfiable:
        start = 0
        if self.spec is not None:
            info = self.cache.peek(self.key)
            if info is not None and info.size is not None:
                r = http.resolve(self.spec, info.size)
                if isinstance(r, Unsatisfiable):
                    return r
                start = 0 if r is None else r.start
        while True:
            s = await _open(self.cache, self.key, self.create, self.waits, start)
            try:
                plan = await self._settle(s, start)
            except BaseException:
                await _close(s)
                raise
            if plan is not None:
                return plan
            start = 0  # the entry changed size since peek: start over (settles at 0)

    async def _settle(self, s: AsyncStream, start: int) -> _Plan | Unsatisfiable | None:
        size = s.size
        pending = b""
        if size is None or s.produced < size:
            pending = await s.read(BLOCK)  # the producer's first byte, or its failure
            size = s.size
            if not pending and size is None:
                size = s.position
        plan = _Plan(s, pending, size)
        if size is None and self.old_client:
            await self._wait_for_end(plan)
            size = plan.size
        spec = self.spec
        r = http.resolve(spec, size) if spec is not None and size is not None else None
        if isinstance(r, Unsatisfiable):
            await plan.close()
            return r
        want = 0 if r is None else r.start
        if want < start:
            await plan.close()
            return None
        await plan.skip(want - start)
        if r is not None:
            plan.part, plan.remaining = r, r.length
        elif size is not None:
            plan.remaining = size - want
        return plan

    async def _wait_for_end(self, plan: _Plan) -> None:
        """As wsgi's: another reader drains a stored entry while this one keeps its
        place; an entry the cache does not keep is spooled to a temporary file."""
        s = plan.stream
        if self.cache.peek(self.key) is not None:
            drain = await _open(self.cache, self.key, self.create, self.waits, s.position)
            try:
                if not drain.created:
                    while await drain.read(BLOCK):
                        pass
            finally:
                await _close(drain)
            if s.size is not None:
                plan.size = s.size
                return
        spool = await _in_thread(lambda: tempfile.TemporaryFile("w+b"))  # noqa: SIM115 (to the plan)
        try:
            while chunk := await s.read(BLOCK):
                await _in_thread(spool.write, chunk)
            await _in_thread(spool.seek, 0)
        except BaseException:
            await _in_thread(spool.close)
            raise
        plan.spool = spool
        plan.size = s.position
