"""Plain in-process WSGI and ASGI harnesses: a request in, status/headers/body out.

No server: the WSGI side calls ``app(environ, start_response)``, pulls the body
iterable and calls its ``close()`` as PEP 3333 servers do; the ASGI side drives
``app(scope, receive, send)`` with queues. Both record what a server would see, so a
test can check every status and header rule, and what happens when the client goes
away or the body is aborted.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FileWrapper:
    """A ``wsgi.file_wrapper`` that records the file-like objects it was given."""

    given: list[tuple[Any, int]]

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        type(self).given.append((filelike, blksize))

    def __iter__(self) -> Iterator[bytes]:
        while data := self.filelike.read(self.blksize):
            yield data

    def close(self) -> None:
        self.filelike.close()


def recording_file_wrapper() -> type[FileWrapper]:
    """A fresh FileWrapper class (its own record), for one test."""
    return type("RecordingFileWrapper", (FileWrapper,), {"given": []})


def environ(
    method: str = "GET",
    protocol: str = "HTTP/1.1",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A PEP 3333 environ; ``headers`` as HTTP field names ({"Range": "bytes=0-1"})."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": "/blob",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": protocol,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    env.update(extra)
    return env


class WsgiCall:
    """One request through a WSGI app: ``status``/``headers`` once the app returned,
    then pull the body with :meth:`next` or :meth:`rest`; :meth:`close` as a server
    does at the end (or when the client went away)."""

    def __init__(self, app: WsgiApp, env: dict[str, Any]) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.error: BaseException | None = None  # what the body iterable raised
        self.closed = False
        self.result = app(env, self._start_response)
        self._iter: Iterator[bytes] | None = None

    def _start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        assert isinstance(status, str) and isinstance(headers, list)
        for name, value in headers:
            assert isinstance(name, str) and isinstance(value, str), (name, value)
        if self.status is not None and exc_info is None:
            raise AssertionError("start_response called twice without exc_info")
        self.status, self.headers = status, headers
        return self._write

    def _write(self, data: bytes) -> None:
        raise AssertionError("the helpers never use write()")

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} repeated: {values}"
        return values[0] if values else None

    @property
    def code(self) -> int:
        assert self.status is not None, "start_response was not called"
        return int(self.status.split()[0])

    def next(self) -> bytes | None:
        """The next body chunk, or None at the end (or after an error, kept in .error)."""
        if self._iter is None:
            self._iter = iter(self.result)
        try:
            chunk = next(self._iter)
        except StopIteration:
            return None
        except Exception as exc:
            self.error = exc
            return None
        assert isinstance(chunk, bytes)
        self.body += chunk
        return chunk

    def rest(self) -> bytes:
        """Pull the body to its end and close; returns the whole body."""
        while self.next() is not None:
            pass
        self.close()
        return self.body

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            close = getattr(self.result, "close", None)
            if close is not None:
                close()


def wsgi(app: WsgiApp, env: dict[str, Any]) -> WsgiCall:
    """The whole request: status, headers and body (``.error`` if it was aborted)."""
    call = WsgiCall(app, env)
    call.rest()
    return call


def scope(
    method: str = "GET",
    http_version: str = "1.1",
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ASGI http scope."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": "/blob",
        "raw_path": b"/blob",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "extensions": extensions or {},
    }


class AsgiCall:
    """One request through an ASGI app on the running loop. ``messages`` collects what
    the app sent; :meth:`disconnect` makes ``receive()`` say the client left."""

    def __init__(self, app: Callable[..., Any], sc: dict[str, Any]) -> None:
        self.messages: list[dict[str, Any]] = []
        self.sent = asyncio.Event()  # set at every message
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._incoming.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        self.task = asyncio.ensure_future(app(sc, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        return await self._incoming.get()

    async def _send(self, message: dict[str, Any]) -> None:
        assert isinstance(message, dict) and isinstance(message.get("type"), str)
        if message["type"] == "http.response.start":
            assert not self.messages, "response started twice"
        else:
            assert self.messages, "body before http.response.start"
            last = self.messages[-1]
            assert len(self.messages) == 1 or last.get("more_body", False), "message after the end"
        if message["type"] == "http.response.body":
            assert isinstance(message.get("body", b""), bytes)
        if message["type"].startswith("http.response.zerocopy"):
            # What a server's os.sendfile would send, read before the app closes the file.
            fd = message["file"].fileno()
            offset = message.get("offset", os.lseek(fd, 0, os.SEEK_CUR))
            message = {**message, "body": os.pread(fd, message["count"], offset)}
        self.messages.append(message)
        self.sent.set()

    def disconnect(self) -> None:
        self._incoming.put_nowait({"type": "http.disconnect"})

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``cond()`` holds after some message (bounded)."""

        async def loop() -> None:
            while not cond():
                self.sent.clear()
                if self.task.done():
                    assert cond(), "the app returned first"
                    return
                waiter = asyncio.ensure_future(self.sent.wait())
                await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

        await asyncio.wait_for(loop(), timeout)

    async def finish(self, timeout: float = 10.0) -> AsgiCall:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return self

    @property
    def start(self) -> dict[str, Any]:
        assert self.messages and self.messages[0]["type"] == "http.response.start"
        return self.messages[0]

    @property
    def code(self) -> int:
        return int(self.start["status"])

    def header(self, name: str) -> str | None:
        values = [
            v.decode() for k, v in self.start["headers"] if k.decode().lower() == name.lower()
        ]
        assert len(values) <= 1, f"{name} repeated: {values}"
        return values[0] if values else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:] if "body" in m)

    @property
    def complete(self) -> bool:
        """The app ended the response (a last message without more_body)."""
        return len(self.messages) > 1 and not self.messages[-1].get("more_body", False)


async def asgi(app: Callable[..., Any], sc: dict[str, Any], timeout: float = 10.0) -> AsgiCall:
    return await AsgiCall(app, sc).finish(timeout)


class Producer:
    """A ``create`` that writes ``parts`` one by one, each only once its ``go`` event is
    set (all set with ``free=True``), then raises ``fail`` if given. It records what
    ``w.write`` raised (BrokenPipeError once no reader is left) and how often it ran."""

    def __init__(
        self,
        parts: list[bytes],
        *,
        size: int | None = None,
        fail: BaseException | None = None,
        free: bool = False,
        hold_end: bool = False,
    ) -> None:
        self.parts = parts
        self.size = size
        self.fail = fail
        self.go = [threading.Event() for _ in parts]
        self.wrote = [threading.Event() for _ in parts]
        self.end = threading.Event()  # with hold_end: create returns only once set
        if not hold_end:
            self.end.set()
        self.started = threading.Event()
        self.done = threading.Event()
        self.calls = 0
        self.write_error: BaseException | None = None
        Producer._live.append(self)
        if free:
            self.release()

    _live: ClassVar[list[Producer]] = []

    @classmethod
    def release_all(cls) -> None:
        """Let every producer of the test run to its end (fixture teardown)."""
        for p in cls._live:
            p.release()
            p.end.set()
        cls._live.clear()

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)

    def release(self, upto: int | None = None) -> None:
        for ev in self.go[: len(self.go) if upto is None else upto]:
            ev.set()

    def __call__(self, w: Any) -> None:
        self.calls += 1
        self.started.set()
        try:
            if self.size is not None:
                w.set_size(self.size)
            for go, wrote, part in zip(self.go, self.wrote, self.parts, strict=True):
                if not go.wait(WAIT):
                    raise AssertionError("test never released the producer")
                try:
                    w.write(part)
                except BaseException as exc:
                    self.write_error = exc
                    raise
                wrote.set()
            if not self.end.wait(WAIT):
                raise AssertionError("test never let the producer return")
            if self.fail is not None:
                raise self.fail
        finally:
            self.done.set()


WAIT = 20.0


def check_one_warning(records: list[logging.LogRecord], module: str, why: str) -> None:
    """A producer failed mid-body: exactly one WARNING, the core's line for the failed
    entry, plus the helper's one INFO line for the cut response; no traceback."""
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].name == "streamcache"
    assert all(r.exc_info is None for r in records), "a traceback was logged"
    mine = [r for r in records if r.module == module]
    assert len(mine) == 1, [r.getMessage() for r in mine]
    assert mine[0].name == "streamcache" and mine[0].levelno == logging.INFO
    text = mine[0].getMessage()
    assert "aborted" in text and why in text and "\n" not in text
