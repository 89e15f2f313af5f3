"""Serve a cache entry from a WSGI app (PEP 3333: gunicorn, uWSGI, any server).

::

    from streamcache.wsgi import serve

    def app(environ, start_response):
        return serve(cache, key, create, environ, start_response,
                     content_type="application/octet-stream", headers=())

The rules (docs/design.md, "Serving over HTTP"; the I/O-free part
is :mod:`streamcache.serving.http`):

- Content-Length whenever the size is known when the response starts (finished, or
  announced with ``w.set_size``), even mid-write; otherwise no length, and the server
  frames the body (chunked on HTTP/1.1; never set here: Transfer-Encoding is
  hop-by-hop). An HTTP/1.0 request for an entry of unknown size waits for the entry
  to finish (another reader drains it meanwhile, so the producer is never held back
  by this one) and gets a Content-Length. So does every request under uWSGI, whose
  http-socket sends a body of unknown length without chunking, delimited only by
  closing the connection: announce the size with ``w.set_size`` there to stream
  entries while they are written.
- One Range: 206 with Content-Range once the size is known, also mid-write (the
  stream starts at the range, and stops after its last byte); 416 past the end.
- HEAD never creates: :meth:`peek`.
- A producer that fails before the first byte: 502 (504 for a timeout). After it, the
  connection is aborted, so the client sees a short body. No traceback: the failed
  entry is the core's one WARNING line, each cut response one INFO line (WARNING
  when the cause is this request's own, say its timeout). How: under uWSGI
  ``uwsgi.disconnect()`` and a quiet end of the iterable (uWSGI prints a traceback
  for any exception from it); elsewhere the
  iterable raises :class:`ResponseAborted`, a BrokenPipeError, which gunicorn (sync
  and gthread) logs at debug only before closing the connection without finishing
  the body, and which wsgiref ignores the same way.
- A finished entry goes out through ``wsgi.file_wrapper`` (gunicorn: sendfile,
  bounded by Content-Length). Not under uWSGI, whose file_wrapper sends a
  descriptor's whole file from offset 0 whatever its position and Content-Length,
  which would add the entry file's trailer.
- ``close()`` (the server calls it, also when the client went away) releases the
  reader at once.
"""

from __future__ import annotations

import errno
import logging
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

from ..base import CacheBase, check_resume
from ..entry.create_types import Create
from ..entry.stream import FinishedFile, Stream
from ..errors import CreateError
from . import http
from .http import BLOCK, ByteRange, RangeSpec, Unsatisfiable

__all__ = ["ResponseAborted", "serve"]

log = logging.getLogger("streamcache")

StartResponse = Callable[..., Any]


class ResponseAborted(BrokenPipeError):
    """Raised by the body iterable to make the server drop the connection mid-body."""


def serve(
    cache: CacheBase,
    key: str,
    create: Create,
    environ: Mapping[str, Any],
    start_response: StartResponse,
    content_type: str = "application/octet-stream",
    headers: Iterable[tuple[str, str]] = (),
    *,
    timeout: float | None = None,
    idle_timeout: float | None = None,
    resume: bool = False,
) -> Iterable[bytes]:
    """Answer the request in ``environ`` with the entry of ``key`` (``create`` makes it
    on a miss); return the WSGI body iterable. ``timeout``, ``idle_timeout`` and
    ``resume`` are ``cache.stream``'s."""
    extra = http.check_arguments(key, create, content_type, headers, timeout, idle_timeout)
    if not isinstance(environ, Mapping):
        raise TypeError(f"environ must be a mapping, not {type(environ).__name__}")
    if not callable(start_response):
        raise TypeError(f"start_response must be callable, not {type(start_response).__name__}")
    method = environ.get("REQUEST_METHOD", "GET")
    if method == "HEAD":
        info = cache.peek(key)
        status, head = http.success_headers(
            content_type, extra, None if info is None else info.size
        )
        start_response(status, head)
        return []
    spec = http.wanted_range(method, environ.get("HTTP_RANGE"), environ.get("HTTP_IF_RANGE"), extra)
    uwsgi = "uwsgi.version" in environ
    wrapper = None if uwsgi else environ.get("wsgi.file_wrapper")
    try:
        plan = _prepare(
            cache,
            key,
            create,
            http.Waits(timeout, idle_timeout, check_resume(resume)),
            spec,
            # uWSGI frames a body of unknown length by closing the connection (its
            # http-socket never chunks), so a cut would look complete: it gets lengths.
            uwsgi or http.is_http10(environ.get("SERVER_PROTOCOL")),
        )
    except (CreateError, TimeoutError) as exc:
        log.log(
            http.log_level(exc),
            "streamcache: serving %r failed before the body: %s",
            key,
            http.one_line(exc),
        )
        status, head, body = http.error_response(exc)
        start_response(status, head)
        return [body]
    if isinstance(plan, Unsatisfiable):
        start_response(*http.unsatisfiable_headers(plan.size, extra))
        return []
    try:
        status, head = http.success_headers(content_type, extra, plan.size, plan.part)
        start_response(status, head)
        if wrapper is not None and (ff := plan.zero_copy()) is not None:
            return wrapper(ff, BLOCK)  # type: ignore[no-any-return]
    except BaseException:
        plan.close()
        raise
    return _Body(plan, key, uwsgi)


class _Plan:
    """The response decided: its size and range, and where its bytes come from:
    ``pending`` (read ahead to see that the producer works) then ``source``."""

    def __init__(self, stream: Stream, pending: bytes, size: int | None) -> None:
        self.stream = stream
        self.pending = pending
        self.size = size
        self.part: ByteRange | None = None
        self.remaining: int | None = size  # bytes still to send; None: to the end
        self.spool: IO[bytes] | None = None

    def read(self, n: int) -> bytes:
        if self.spool is not None:
            return self.spool.read(n)
        return self.stream.read(n)

    def skip(self, n: int) -> None:
        """Drop ``n`` bytes (a range that begins past where the stream began)."""
        dropped = min(n, len(self.pending))
        self.pending = self.pending[dropped:]
        n -= dropped
        while n > 0:
            chunk = self.read(min(n, BLOCK))
            if not chunk:
                raise CreateError("streamcache: the entry ended before the range")
            n -= len(chunk)

    def zero_copy(self) -> FinishedFile | _Bounded | None:
        """The finished entry's file, for a zero-copy send of the whole response, or
        None (in flight, bytes read ahead, a spool)."""
        if self.pending or self.spool is not None or self.remaining is None:
            return None
        ff = self.stream.finished_file()
        if ff is None:
            return None
        if self.size is not None and self.remaining < self.size - self.stream.position:
            return _Bounded(ff, self.remaining)
        return ff

    def close(self) -> None:
        self.stream.close()
        if self.spool is not None:
            self.spool.close()


class _Bounded:
    """A finished file limited to the bytes of a range, for servers that read it."""

    def __init__(self, ff: FinishedFile, limit: int) -> None:
        self._ff = ff
        self._left = limit

    def fileno(self) -> int:
        return self._ff.fileno()

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._ff.read(n) if n else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._ff.close()


def _peek_start(cache: CacheBase, key: str, spec: RangeSpec | None) -> int | Unsatisfiable:
    """Where to start the stream: at the range when the entry's size is already known."""
    if spec is None:
        return 0
    info = cache.peek(key)
    if info is None or info.size is None:
        return 0
    r = http.resolve(spec, info.size)
    if isinstance(r, Unsatisfiable):
        return r
    return 0 if r is None else r.start


def _prepare(
    cache: CacheBase,
    key: str,
    create: Create,
    waits: http.Waits,
    spec: RangeSpec | None,
    needs_length: bool,
) -> _Plan | Unsatisfiable:
    """Open the stream and decide the response (raises CreateError/TimeoutError when
    the producer fails before the first byte)."""
    start = _peek_start(cache, key, spec)
    if isinstance(start, Unsatisfiable):
        return start
    while True:
        s = cache.stream(key, create, waits.timeout, **waits.kw(start))
        try:
            plan = _settle(cache, key, create, waits, spec, needs_length, s, start)
        except BaseException:
            s.close()
            raise
        if plan is not None:
            return plan
        start = 0  # the entry changed size since peek: start over (settles at 0)


def _settle(
    cache: CacheBase,
    key: str,
    create: Create,
    waits: http.Waits,
    spec: RangeSpec | None,
    needs_length: bool,
    s: Stream,
    start: int,
) -> _Plan | Unsatisfiable | None:
    size = s.size
    pending = b""
    if size is None or s.produced < size:
        pending = s.read(BLOCK)  # the producer's first byte, or its failure
        size = s.size
        if not pending and size is None:
            size = s.position  # the end, already
    plan = _Plan(s, pending, size)
    if size is None and needs_length:
        _wait_for_end(cache, key, create, waits, plan)
        size = plan.size
    r = http.resolve(spec, size) if spec is not None and size is not None else None
    if isinstance(r, Unsatisfiable):
        plan.close()
        return r
    want = 0 if r is None else r.start
    if want < start:
        plan.close()
        return None
    plan.skip(want - start)
    if r is not None:
        plan.part, plan.remaining = r, r.length
    elif size is not None:
        plan.remaining = size - want
    return plan


def _wait_for_end(
    cache: CacheBase, key: str, create: Create, waits: http.Waits, plan: _Plan
) -> None:
    """HTTP/1.0 and no size yet: wait for the entry's end without holding the producer
    back, then set plan.size. A second reader drains the entry from where this one
    stands (back pressure follows the fastest reader), keeping this one's place; where
    the entry is not stored (NullCache, an admission bypass) or cannot be joined, this
    stream is spooled to a temporary file instead."""
    s = plan.stream
    if cache.peek(key) is not None:
        with cache.stream(key, create, waits.timeout, **waits.kw(s.position)) as drain:
            if not drain.created:  # joined the same entry: read it to its end
                while drain.read(BLOCK):
                    pass
        if s.size is not None:
            plan.size = s.size
            return
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (handed over to the plan)
    try:
        while chunk := s.read(BLOCK):
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    plan.spool = spool
    plan.size = s.position


class _Body:
    """The WSGI body iterable: the plan's bytes, exactly ``remaining`` of them."""

    def __init__(self, plan: _Plan, key: str, uwsgi: bool) -> None:
        self._plan = plan
        self._key = key
        self._uwsgi = uwsgi
        self._sent = 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        plan = self._plan
        if self._closed or plan.remaining == 0:
            self.close()
            raise StopIteration
        want = BLOCK if plan.remaining is None else min(BLOCK, plan.remaining)
        if plan.pending:
            chunk, plan.pending = plan.pending[:want], plan.pending[want:]
        else:
            try:
                chunk = plan.read(want)
            except (CreateError, OSError) as exc:  # TimeoutError is an OSError
                return self._abort(http.one_line(exc), http.log_level(exc))
            if not chunk:
                if plan.remaining is not None:
                    why = f"the entry ended {plan.remaining} bytes early"
                    return self._abort(why, http.log_level(None))
                self.close()
                raise StopIteration
        if plan.remaining is not None:
            plan.remaining -= len(chunk)
            if plan.remaining == 0:
                self.close()  # all of it is out: release the reader now
        self._sent += len(chunk)
        return chunk

    def _abort(self, why: str, level: int) -> bytes:
        self.close()
        log.log(
            level,
            "streamcache: response for %r aborted after %d bytes: %s",
            self._key,
            self._sent,
            why,
        )
        if self._uwsgi:
            uwsgi = sys.modules.get("uwsgi")
            disconnect = getattr(uwsgi, "disconnect", None)
            if disconnect is not None:
                disconnect()
                raise StopIteration
        # With errno EPIPE: gunicorn decides by errno whether to log a traceback.
        raise ResponseAborted(errno.EPIPE, "streamcache: response aborted, the producer failed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._plan.close()
