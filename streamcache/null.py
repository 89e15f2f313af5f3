"""NullCache, the cache that stores nothing: every call runs ``create`` itself, a
fetch straight into its dst, a stream through an in-process source (a bounded queue
fed by ``create`` in a thread), which a StreamCache miss that bypasses the cache
reads too."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ipc.clock import SYSTEM, Clock
from ipc.hub import complete
from ipc.wait import Wake

from .base import (
    CacheBase,
    check_create,
    check_dst,
    check_key,
    check_resume,
    check_start,
)
from .deadline import Deadline, check_idle, deadline_for, idle_for
from .entry.creator import call_create
from .entry.sink import write_all
from .entry.sizes import AnnouncedSize
from .entry.stream import FetchResult, Stream
from .errors import CreateError, describe

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import concurrent.futures
    from typing import Any

    from .entry.create_types import Create, Writer


class _CountingWriter:
    """NullCache's ``w`` for a fetch without a deadline: hands each write to ``dst``
    and counts it. The first error of ``dst`` (a client gone) is kept: it, not
    ``create``'s reaction to it, is what the fetch raises."""

    def __init__(self, dst: Any) -> None:
        self._dst = dst
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
            write_all(self._dst, bytes(data), None)
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
        # queue is imported where it is used: it loads heapq and two C modules, and only
        # NullCache and a miss that bypasses the cache stream through this source.
        import queue

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
        import queue

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
        import queue

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
        import queue

        while True:
            try:
                return self._queue.get(timeout=deadline.limit())
            except queue.Empty:
                if deadline.passed():
                    raise TimeoutError("streamcache: timed out waiting for create") from None

    def sendfile(
        self,
        out_fd: int,
        deadline: Deadline | None,
        wait_writable: Callable[[], None],
        limit: int | None = None,
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
        self,
        key: str,
        dst: Any,
        create: Create,
        timeout: float | None = None,
        *,
        idle_timeout: float | None = None,
        resume: bool = False,
    ) -> FetchResult:
        check_key(key)
        check_dst(dst)
        check_create(create)
        check_resume(resume)  # (every call runs create: nothing to resume)
        if check_idle(idle_timeout) is not None or timeout is not None:
            # A deadline, or create's silence, can be kept only from outside create:
            # through the stream, create in a thread, as on the cached path (run here,
            # a create that kept writing held the call past its timeout until it ended).
            return super().fetch(key, dst, create, timeout, idle_timeout=idle_timeout)
        w = _CountingWriter(dst)
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
        self,
        key: str,
        create: Create,
        timeout: float | None = None,
        *,
        start: int = 0,
        idle_timeout: float | None = None,
        resume: bool = False,
    ) -> Stream:
        check_key(key)
        check_create(create)
        check_start(start)
        check_resume(resume)
        deadline = deadline_for(timeout, self._clock)
        idle = idle_for(idle_timeout, self._clock)
        return Stream(start_create(create, start), True, deadline, idle=idle)
