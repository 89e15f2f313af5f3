"""Streams handed to callers: the copy loop of fetch, ``stream()`` and ``astream()``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType

from ipc.tuples import NamedTuple
from ipc.wait import Wake

from ..deadline import Deadline, Idle
from ..errors import AllReadersLeft, CreateError
from ..metrics import ERROR, HIT, MISS, NULL, Metrics
from .pipe import CHUNK
from .sink import NO_SENDFILE, usable_fd, wait_fd_writable, wait_writable, write_all

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import concurrent.futures
    from typing import Any, Protocol


class FetchResult(NamedTuple):
    """What ``fetch`` returns: bytes written to dst, and whether this call ran create."""

    written: int
    created: bool


if TYPE_CHECKING:  # a Protocol, for type checkers only

    class Source(Protocol):
        """Where a stream's bytes come from (a finished file, a pipe, an in-process queue)."""

        position: int

        @property
        def size(self) -> int | None: ...

        @property
        def produced(self) -> int: ...

        def finished_size(self) -> int | None: ...

        @property
        def fd(self) -> int: ...

        def read(self, n: int, deadline: Deadline | None) -> bytes: ...

        def read_nowait(self, n: int) -> bytes | None: ...

        def watch(self, deadline: Deadline | None) -> concurrent.futures.Future[Wake]: ...

        def end_watch(self) -> None: ...

        def after_wake(self, wake: Wake) -> None: ...

        def sendfile(
            self,
            out_fd: int,
            deadline: Deadline | None,
            wait_writable: Callable[[], None],
            limit: int | None = None,
        ) -> int: ...

        def close(self) -> None: ...


Reopen = Callable[[], "tuple[Source, bool]"]
# A source that times out by itself (the pipe's) wakes at its deadline; this margin
# lets it, so the TimeoutError comes with its own text.
_DEADLINE_GRACE = 0.05


class EntryInfo(NamedTuple):
    """``cache.peek(key)``: an entry's state, seen without creating or waiting."""

    size: int | None  # the final size: once finished, or as create announced it
    produced: int  # bytes written so far
    finished: bool


class FinishedFile:
    """A finished entry's bytes as a binary file, for zero-copy servers
    (``wsgi.file_wrapper``, ASGI ``http.response.zerocopy``).

    Its descriptor is positioned at the stream's position, and ``read`` stops at the
    entry's end: the data file holds a trailer after the data, so whoever sends from
    ``fileno()`` must send exactly ``size - position`` bytes (a Content-Length does
    that for gunicorn's sendfile). Closing it closes the stream.
    """

    def __init__(self, stream: Stream, fd: int, position: int, end: int) -> None:
        self._stream = stream
        self._fd = fd
        self._pos = position
        self.end = end
        os.lseek(fd, position, os.SEEK_SET)

    def fileno(self) -> int:
        return self._fd

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._stream.closed

    def read(self, n: int = -1) -> bytes:
        left = self.end - self._pos
        if n < 0 or n > left:
            n = left
        data = os.pread(self._fd, n, self._pos) if n > 0 else b""
        self._pos += len(data)
        os.lseek(self._fd, self._pos, os.SEEK_SET)
        return data

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> FinishedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stream:
    """An entry being read: iterate it, ``read(n)``, ``readinto(b)``; a context manager.

    Reading past the last byte of an entry whose producer failed raises the
    CreateError. Closing it (or leaving the ``with``) gives up this reader's place.

    ``reopen`` (for a stream that attached to an entry in flight) covers one race:
    the entry's last other reader left just as this one attached, so its producer
    failed with "all readers closed". Before any byte was delivered, the stream
    then looks the key up again (creating afresh, so ``created`` may turn True),
    as a fetch that came a moment later would have.

    ``metrics`` counts the bytes it serves as they go out and, with ``outcome``, the
    call's outcome when it is closed: ``error`` if reading raised, else hit or miss.

    ``idle`` (the call's ``idle_timeout``) bounds each wait for the entry's next bytes
    (:class:`~streamcache.deadline.Idle`), whatever the source: every path times out
    on silence here, once, with the same TimeoutError.
    """

    def __init__(
        self,
        source: Source,
        created: bool,
        deadline: Deadline | None,
        reopen: Reopen | None = None,
        metrics: Metrics = NULL,
        outcome: bool = False,
        idle: Idle | None = None,
    ) -> None:
        self._metrics = metrics
        self._idle = idle
        self._outcome = outcome
        self._failed = False
        self._source = source
        self.created = created
        self._deadline = deadline
        self._reopen = reopen
        self._delivered = False
        self._closed = False

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._source.close()
        finally:
            if self._outcome:
                hit_or_miss = MISS if self.created else HIT
                self._metrics.count_fetch(ERROR if self._failed else hit_or_miss)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def size(self) -> int | None:
        """The entry's final size once known (finished, or announced by create)."""
        return self._source.size

    @property
    def produced(self) -> int:
        """Bytes of the entry written so far (the size, once finished)."""
        return self._source.produced

    @property
    def position(self) -> int:
        """Bytes of the entry consumed by this stream, counted from byte 0."""
        return self._source.position

    def finished_file(self) -> FinishedFile | None:
        """The rest of a finished entry as a file (see :class:`FinishedFile`); None
        while the entry is being written or has no data file."""
        self._check_open()
        end = self._source.finished_size()
        if end is None:
            return None
        self._metrics.count_served(max(end - self._source.position, 0))  # handed out now
        return FinishedFile(self, self._source.fd, min(self._source.position, end), end)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on a closed stream")

    def _retry(self, exc: CreateError) -> bool:
        """After ``exc`` from the source: reopen (once) if nothing was delivered yet and
        the producer failed only because its readers left."""
        reopen, self._reopen = self._reopen, None
        if reopen is None or self._delivered or not isinstance(exc, AllReadersLeft):
            return False
        old = self._source
        self._source, self.created = reopen()
        old.close()
        return True

    def wait_deadline(self) -> Deadline | None:
        """The deadline of one read's wait for new bytes, taken as the read starts: the
        call's, or ``idle_timeout`` from now if that comes first."""
        idle = self._idle
        return self._deadline if idle is None else idle.until(self._deadline)

    def _timed_out(self, exc: BaseException, until: Deadline | None) -> BaseException:
        """``exc``, or the idle timeout's own error when the wait that timed out ended
        at the idle deadline (not at the call's)."""
        if not isinstance(exc, TimeoutError) or self._idle is None or until is self._deadline:
            return exc
        if self._deadline is not None and self._deadline.passed():
            return exc
        return self._idle.error()

    def _chunk(self, n: int) -> bytes:
        while True:
            until = self.wait_deadline()
            try:
                data = self._source.read(n, until)
            except Exception as exc:
                if isinstance(exc, CreateError) and self._retry(exc):
                    continue
                self._failed = True
                err = self._timed_out(exc, until)
                if err is not exc:
                    raise err from None
                raise
            if data:
                self._delivered = True
                self._metrics.count_served(len(data))
            return data

    def read_nowait(self, n: int) -> bytes | None:
        """Up to ``n`` bytes if some are there (b"" at the end), None if a read would
        wait: then ``await s.wait_async()`` and try again."""
        self._check_open()
        while True:
            try:
                data = self._source.read_nowait(min(n, CHUNK))
            except CreateError as exc:
                if self._retry(exc):
                    continue
                raise
            if data is not None:
                self._delivered = self._delivered or bool(data)
            return data

    async def wait_async(self, until: Deadline | None = None) -> None:
        """Wait on the event loop until a read may give something new, without
        occupying a thread: the process's one waiting thread watches every such wait.
        ``until``: the read's :meth:`wait_deadline`, taken once as the read started
        (by default, taken now)."""
        if until is None:
            until = self.wait_deadline()
        try:
            await self._wait_async(until)
        except TimeoutError as exc:
            err = self._timed_out(exc, until)
            if err is not exc:
                raise err from None
            raise

    async def _wait_async(self, deadline: Deadline | None) -> None:
        import asyncio  # here, not at the top: a process that never awaits skips its import

        source = self._source
        if deadline is not None and deadline.passed():
            # A read that must wait once its deadline passed times out, on every source:
            # a producer that keeps trickling bytes would otherwise complete every wait
            # (the queue of the uncached paths ended only when create did).
            raise TimeoutError("timed out waiting for the producer")
        future = asyncio.wrap_future(source.watch(deadline))
        try:
            if deadline is None:
                wake = await future
            else:
                # Slices of at most RECHECK: the deadline is read on its clock after each.
                while not future.done():
                    await asyncio.wait({future}, timeout=deadline.limit() + _DEADLINE_GRACE)
                    if not future.done() and deadline.passed():
                        raise TimeoutError("timed out waiting for the producer")
                wake = future.result()
        finally:
            future.cancel()  # (done: nothing) the source's wait ends with this one
            source.end_watch()
        source.after_wake(wake)

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all remaining if n < 0); b"" at the end."""
        self._check_open()
        if n >= 0:
            return self._chunk(min(n, CHUNK)) if n else b""
        parts = []
        while chunk := self._chunk(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, b: bytearray | memoryview) -> int:
        self._check_open()
        view = memoryview(b).cast("B")
        data = self._chunk(len(view))
        view[: len(data)] = data
        return len(data)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self._check_open()
        chunk = self._chunk(CHUNK)
        if not chunk:
            raise StopIteration
        return chunk

    def sendfile(self, out_fd: int, n: int) -> int:
        """Move up to ``n`` bytes of the stream to the descriptor ``out_fd`` with
        os.sendfile, none of them through this process, waiting for them as
        :meth:`read` does (the entry's liveness checks, the call's timeouts, a resumed
        entry's rewind); how many moved, at least one unless ``n`` is 0 or the stream
        is at its end (0). A non-blocking ``out_fd`` is waited on.

        A descriptor sendfile cannot write to (a file opened with O_APPEND, a terminal,
        a system without sendfile, an entry that has no data file) raises OSError with
        ``errno`` in ``streamcache.entry.sink.NO_SENDFILE`` before any byte moved: the
        caller then reads the bytes instead. For a reader of frames or records that
        passes payloads on without touching them (``streamcache run``'s frames)."""
        self._check_open()
        if n <= 0:
            return 0
        return self._send(out_fd, lambda: wait_fd_writable(out_fd, self._deadline), n)

    def _send(self, out_fd: int, wait: Callable[[], None], limit: int | None = None) -> int:
        while True:
            until = self.wait_deadline()  # the wait for dst counts on the call's deadline
            try:
                n = self._source.sendfile(out_fd, until, wait, limit)
            except Exception as exc:
                if isinstance(exc, CreateError) and self._retry(exc):
                    continue
                # (an error sendfile gives for this dst is no failure: copy_to copies)
                self._failed = not (isinstance(exc, OSError) and exc.errno in NO_SENDFILE)
                err = self._timed_out(exc, until)
                if err is not exc:
                    raise err from None
                raise
            if n:
                self._delivered = True
                self._metrics.count_served(n)
            return n

    def copy_to(self, dst: Any) -> int:
        """Copy the rest of the entry to ``dst``; zero-copy when dst has a usable fileno."""
        self._check_open()
        written = 0
        out_fd = usable_fd(dst)
        if out_fd is not None:
            flush = getattr(dst, "flush", None)
            if flush is not None:
                flush()

            def wait() -> None:
                wait_writable(dst, self._deadline)

            try:
                while n := self._send(out_fd, wait):
                    written += n
                return written
            except OSError as exc:
                if exc.errno not in NO_SENDFILE or written:
                    raise
                # Not a descriptor sendfile can write to: fall back to copying.
        while chunk := self._chunk(CHUNK):
            write_all(dst, chunk, self._deadline)
            written += len(chunk)
        return written


class AsyncStream:
    """``astream()``: a :class:`Stream` read on an event loop.

    Opening it (the key's lookup, under the key's lock for a moment) and each read
    run on the loop's thread; every wait for the producer goes to the process's one
    waiting thread (:mod:`ipc.hub`), so any number of waiting astreams leave the
    loop's default executor free. Each read lets the loop run first, so a loop of
    reads holds it for one chunk at a time.
    """

    def __init__(self, opener: Callable[[], Stream]) -> None:
        self._opener = opener
        self._stream: Stream | None = None

    @property
    def created(self) -> bool:
        return self._require().created

    @property
    def size(self) -> int | None:
        return self._require().size

    @property
    def produced(self) -> int:
        return self._require().produced

    @property
    def position(self) -> int:
        return self._require().position

    def finished_file(self) -> FinishedFile | None:
        return self._require().finished_file()

    def _require(self) -> Stream:
        if self._stream is None:
            raise RuntimeError("use astream() with 'async with'")
        return self._stream

    async def __aenter__(self) -> AsyncStream:
        self._stream = self._opener()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Give up this reader's place at once (a waiting read ends with ValueError)."""
        if self._stream is not None:
            self._stream.close()

    async def _chunk(self, n: int) -> bytes:
        stream = self._require()
        # Also when its bytes are already written (a reader far behind its producer, a
        # finished entry), a read lets the loop run once: a loop of reads holds it for
        # one chunk, never for the whole lead. A thread would cost more than the read
        # (a page-cache copy of one chunk): a hit's median went from 0.24 ms to 4.3 ms
        # with reads in the executor. Before the read, so a cancelled read took nothing.
        import asyncio  # loaded already: this runs on its loop

        await asyncio.sleep(0)
        waiting = False
        until = None  # the read's deadline, taken once: its silence counts from here
        while True:
            data = stream.read_nowait(n)
            if data is not None:
                return data
            if not waiting:
                waiting, until = True, stream.wait_deadline()
            await stream.wait_async(until)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunk(CHUNK)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all remaining if n < 0); b"" at the end."""
        if n >= 0:
            return await self._chunk(min(n, CHUNK)) if n else b""
        parts = []
        while chunk := await self._chunk(CHUNK):
            parts.append(chunk)
        return b"".join(parts)
