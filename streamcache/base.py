"""The surface every cache shares, and the caches that store nothing.

Every cache has ``fetch``, ``stream``, ``astream``, ``peek``, ``invalidate``, ``stop``
and the context manager.
A subclass implements ``stream``; :class:`CacheBase` builds ``fetch`` (a copy of the
stream to dst), ``astream`` and the context manager on it. StreamCache and NullCache
also implement ``fetch`` themselves (a creating fetch hands each write straight to
dst; a hit is read whole), LoggingCache and MinOccurrences wrap another cache.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ipc.clock import SYSTEM, Clock
from ipc.hub import complete
from ipc.wait import Wake

from .deadline import Deadline, check_timeout, deadline_for
from .entry.creator import BytesLike, Create, Writer, call_create
from .entry.sink import dst_problem, write_all
from .entry.sizes import AnnouncedSize
from .entry.stream import AsyncStream, EntryInfo, FetchResult, Stream
from .errors import CreateError, describe

if TYPE_CHECKING:
    import concurrent.futures

# ``with StreamCache(...) as c`` gives a StreamCache, not a CacheBase (typing.Self is 3.11+).
_Cache = TypeVar("_Cache", bound="CacheBase")


def check_key(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}")


def check_create(create: object) -> None:
    if not callable(create):
        raise TypeError(f"create must be callable, not {type(create).__name__}")


def check_start(start: object) -> None:
    if isinstance(start, bool) or not isinstance(start, int):
        raise TypeError(f"start must be an int, not {type(start).__name__}")
    if start < 0:
        raise ValueError(f"start must be >= 0, not {start}")


def _start_kw(start: int) -> dict[str, int]:
    """``start`` for a wrapped cache's stream, passed only when set: a wrapper must keep
    working around caches written before ``start`` existed."""
    return {"start": start} if start else {}


def check_dst(dst: object) -> None:
    problem = dst_problem(dst)
    if problem is not None:
        raise TypeError(problem)


class CacheBase:
    """fetch, astream, stop and the context manager, on top of a subclass's ``stream``."""

    _clock: Clock = SYSTEM  # what the calls' timeouts are read on

    def stream(
        self, key: str, create: Create, timeout: float | None = None, *, start: int = 0
    ) -> Stream:
        raise NotImplementedError

    def peek(self, key: str) -> EntryInfo | None:
        """The state of ``key``'s entry without creating, waiting or counting it as a
        request (for HTTP HEAD); None when there is none."""
        check_key(key)
        return None

    def invalidate(self, key: str) -> bool:
        """Drop the entry of ``key``, so that the next call for it, in any process,
        creates afresh; whether anything was dropped (a cache that stores nothing:
        False)."""
        check_key(key)
        return False

    def fetch(
        self, key: str, dst: Any, create: Create, timeout: float | None = None
    ) -> FetchResult:
        """Find or create the entry of ``key`` and copy it to ``dst``."""
        check_dst(dst)
        with self.stream(key, create, timeout) as s:
            return FetchResult(s.copy_to(dst), s.created)

    def astream(
        self, key: str, create: Create, timeout: float | None = None, *, start: int = 0
    ) -> AsyncStream:
        """``async with cache.astream(key, create) as s: async for chunk in s: ...``"""
        check_key(key)
        check_create(create)
        check_timeout(timeout)
        check_start(start)
        return AsyncStream(lambda: self.stream(key, create, timeout, start=start))

    def stop(self) -> None:
        """End background work. fetch keeps working."""

    def __enter__(self: _Cache) -> _Cache:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _CountingWriter:
    """NullCache's ``w``: hands each write to ``dst`` and counts it. The first error of
    ``dst`` (a client gone, the deadline passed) is kept: it, not ``create``'s reaction
    to it, is what the fetch raises."""

    def __init__(self, dst: Any, deadline: Deadline | None) -> None:
        self._dst = dst
        self._deadline = deadline
        self.written = 0
        self.error: BaseException | None = None
        self.announced = AnnouncedSize()

    def writable(self) -> bool:
        return True

    def set_size(self, size: int) -> int:
        return self.announced.announce(size, self.written)

    def flush(self) -> None:
        flush = getattr(self._dst, "flush", None)
        if flush is not None:
            flush()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if isinstance(data, str):
            raise TypeError("write() needs bytes, not str")
        n = len(memoryview(data).cast("B"))
        if self.error is not None:
            raise self.error
        if not n:
            return 0
        self.announced.check_write(self.written, n)
        try:
            write_all(self._dst, bytes(data), self._deadline)
        except Exception as exc:
            self.error = exc
            raise
        self.written += n
        return n


def run_create(create: Create, w: Writer) -> None:
    """Run ``create(w)`` (see :func:`call_create`); any exception but
    KeyboardInterrupt/SystemExit becomes CreateError."""
    try:
        call_create(create, w)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise CreateError(describe(exc)) from exc


_END = object()


class _QueueSource:
    """An in-process pipe: ``create`` runs in a thread and hands chunks over a bounded queue."""

    def __init__(self, start: int = 0) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=4)
        self._closed = threading.Event()
        self._rest = b""
        self._done = False  # the end was read
        self._error: BaseException | None = None  # the failure read: raised by every read
        self._announced = AnnouncedSize()
        self._written = 0  # by create (its thread)
        self._skip = start  # bytes before ``start``: dropped, never delivered
        self.position = start
        # Asynchronous readers' waits, completed by the create thread's next put.
        self._watchers: list[concurrent.futures.Future[Wake]] = []
        self._watchers_lock = threading.Lock()

    @property
    def size(self) -> int | None:
        return self._written if self._done else self._announced.size

    @property
    def produced(self) -> int:
        return self._written

    def finished_size(self) -> int | None:
        return None  # no data file to hand out

    @property
    def fd(self) -> int:
        raise OSError(22, "no descriptor to send from")

    def set_size(self, size: int) -> int:
        return self._announced.announce(size, self._written)

    # writer side (the create thread)
    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if isinstance(data, str):
            raise TypeError("write() needs bytes, not str")
        chunk = bytes(data)
        if not chunk:  # b"" on the queue is no end: nothing to hand over
            if self._closed.is_set():
                raise BrokenPipeError("all readers closed")
            return 0
        self._announced.check_write(self._written, len(chunk))
        self._put(chunk)
        self._written += len(chunk)
        return len(chunk)

    def _put(self, item: object) -> None:
        while True:
            if self._closed.is_set():
                raise BrokenPipeError("all readers closed")
            try:
                self._queue.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        with self._watchers_lock:
            watchers, self._watchers = self._watchers, []
        for future in watchers:
            # A reader that gave up (its timeout) cancelled its wait: never an error here,
            # in create's write.
            complete(future, Wake.PROGRESS)

    def run(self, create: Create) -> None:
        try:
            run_create(self._whole(create), self)
            self._put(_END)
        except BrokenPipeError:
            pass
        except BaseException as exc:
            try:
                self._put(exc)
            except BrokenPipeError:
                pass

    def _whole(self, create: Create) -> Create:
        """``create``, then the check that it wrote the size it announced."""

        def run(w: Writer) -> None:
            call_create(create, w)
            self._announced.check_end(self._written)

        return run

    # reader side
    def read(self, n: int, deadline: Deadline | None) -> bytes:
        data = self._read(n, deadline, block=True)
        assert data is not None
        return data

    def read_nowait(self, n: int) -> bytes | None:
        return self._read(n, None, block=False)

    def watch(self, deadline: Deadline | None) -> concurrent.futures.Future[Wake]:
        import concurrent.futures  # here: it costs start-up, and only astream waits

        future: concurrent.futures.Future[Wake] = concurrent.futures.Future()
        with self._watchers_lock:
            if self._queue.empty():
                self._watchers.append(future)
                return future
        future.set_result(Wake.PROGRESS)  # something came meanwhile
        return future

    def end_watch(self) -> None:
        pass

    def after_wake(self, wake: Wake) -> None:
        pass

    def _read(self, n: int, deadline: Deadline | None, *, block: bool) -> bytes | None:
        while True:
            data = self._next(n, deadline, block)
            if data is None or not self._skip or not data:
                self.position += len(data or b"")
                return data
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            self._rest = data[dropped:] + self._rest

    def _next(self, n: int, deadline: Deadline | None, block: bool) -> bytes | None:
        if not self._rest:
            if self._error is not None:  # again: every read after a failure raises it
                raise self._error.with_traceback(None)
            if self._done:
                return b""
            try:
                if not block:
                    item = self._queue.get_nowait()
                elif deadline is None:
                    item = self._queue.get()
                else:
                    item = self._get(deadline)
            except queue.Empty:
                return None
            if item is _END:
                self._done = True
                return b""
            if isinstance(item, BaseException):
                self._error = item
                raise item
            assert isinstance(item, bytes)
            self._rest = item
        data, self._rest = self._rest[:n], self._rest[n:]
        return data

    def _get(self, deadline: Deadline) -> object:
        """The next item create put, waiting until ``deadline`` (on its clock)."""
        while True:
            try:
                return self._queue.get(timeout=deadline.limit())
            except queue.Empty:
                if deadline.passed():
                    raise TimeoutError("streamcache: timed out waiting for create") from None

    def sendfile(
        self, out_fd: int, deadline: Deadline | None, wait_writable: Callable[[], None]
    ) -> int:
        raise OSError(22, "no descriptor to send from")  # EINVAL: Stream falls back to copying

    def close(self) -> None:
        self._closed.set()


def start_create(create: Create, start: int = 0) -> _QueueSource:
    """Run ``create`` in a thread of its own, into a source that a Stream reads from byte
    ``start``: what NullCache's stream, and a StreamCache miss that bypasses the cache,
    read."""
    source = _QueueSource(start)
    threading.Thread(target=source.run, args=(create,), daemon=True).start()
    return source


class NullCache(CacheBase):
    """Caches nothing: every fetch runs ``create(dst)`` itself and reports created=True.
    ``clock`` (an :class:`ipc.Clock`) is what its calls' timeouts are read on."""

    def __init__(self, *, clock: Clock = SYSTEM) -> None:
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must be an ipc.Clock, not {type(clock).__name__}")
        self._clock = clock

    def fetch(
        self, key: str, dst: Any, create: Create, timeout: float | None = None
    ) -> FetchResult:
        check_key(key)
        check_dst(dst)
        check_create(create)
        w = _CountingWriter(dst, deadline_for(timeout, self._clock))
        try:
            run_create(create, w)
            try:
                w.announced.check_end(w.written)
            except ValueError as exc:
                raise CreateError(describe(exc)) from exc
            w.flush()
        except CreateError:
            if w.error is not None:
                raise w.error from None
            raise
        if w.error is not None:  # create swallowed it: the copy is still incomplete
            raise w.error
        return FetchResult(w.written, True)

    def stream(
        self, key: str, create: Create, timeout: float | None = None, *, start: int = 0
    ) -> Stream:
        check_key(key)
        check_create(create)
        check_start(start)
        deadline = deadline_for(timeout, self._clock)
        return Stream(start_create(create, start), True, deadline)


class LogEntry(NamedTuple):
    """One call seen by :class:`LoggingCache`: error is None or what the call raised."""

    key: str
    created: bool
    error: BaseException | None


class _Tracked:
    """A call's ``create``, noting whether it ran: a call that raised returns no
    result, yet it created if its ``create`` ran (Gitaly's Fetch returns created=true
    together with the error). Pass on ``self.create``: the wrapper, or a non-callable
    as it is, for the wrapped cache to refuse."""

    def __init__(self, create: Create) -> None:
        self._create = create
        self.ran = False
        self.create: Create = self._run if callable(create) else create

    def _run(self, w: Writer) -> Iterable[BytesLike] | None:
        self.ran = True
        return self._create(w)


class LoggingCache(CacheBase):
    """Wraps a cache and records every fetch/stream as a :class:`LogEntry` in ``entries``.

    A call that raised is logged with created=True if it ran its ``create`` (say the
    CreateError of its own ``create``). A stream is logged when it is opened: errors
    met while reading it later are the reader's, not in the log.
    """

    def __init__(self, cache: CacheBase) -> None:
        self.cache = cache
        self._clock = cache._clock  # its calls are the wrapped cache's
        self._entries: list[LogEntry] = []
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled: the wrapped cache (pickled in turn); the log starts empty in the
        process that unpickles it, as its entries are this process's calls."""
        return type(self), (self.cache,)

    @property
    def entries(self) -> list[LogEntry]:
        with self._lock:
            return list(self._entries)

    def _log(self, entry: LogEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def fetch(
        self, key: str, dst: Any, create: Create, timeout: float | None = None
    ) -> FetchResult:
        tracked = _Tracked(create)
        try:
            result = self.cache.fetch(key, dst, tracked.create, timeout)
        except BaseException as exc:
            self._log(LogEntry(key, tracked.ran, exc))
            raise
        self._log(LogEntry(key, result.created, None))
        return result

    def stream(
        self, key: str, create: Create, timeout: float | None = None, *, start: int = 0
    ) -> Stream:
        check_start(start)
        tracked = _Tracked(create)
        try:
            s = self.cache.stream(key, tracked.create, timeout, **_start_kw(start))
        except BaseException as exc:
            self._log(LogEntry(key, tracked.ran, exc))
            raise
        self._log(LogEntry(key, s.created, None))
        return s

    def peek(self, key: str) -> EntryInfo | None:
        return self.cache.peek(key)

    def invalidate(self, key: str) -> bool:
        """The wrapped cache's; not logged (``entries`` are fetch and stream calls)."""
        return self.cache.invalidate(key)

    def stop(self) -> None:
        self.cache.stop()
