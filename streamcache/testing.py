"""LoggingCache: a cache that records every fetch and stream of the cache it wraps,
for tests (Gitaly keeps its TestLoggingCache apart, "use only for testing")."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ipc.tuples import NamedTuple

from .base import CacheBase, _start_kw, check_resume, check_start
from .entry.creator import BytesLike
from .entry.stream import EntryInfo, FetchResult, Stream

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from .entry.create_types import Create, Writer


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
        self,
        key: str,
        dst: Any,
        create: Create,
        timeout: float | None = None,
        *,
        idle_timeout: float | None = None,
        resume: bool = False,
    ) -> FetchResult:
        tracked = _Tracked(create)
        kw = _start_kw(0, idle_timeout, check_resume(resume))
        try:
            result = self.cache.fetch(key, dst, tracked.create, timeout, **kw)
        except BaseException as exc:
            self._log(LogEntry(key, tracked.ran, exc))
            raise
        self._log(LogEntry(key, result.created, None))
        return result

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
        check_start(start)
        tracked = _Tracked(create)
        kw = _start_kw(start, idle_timeout, check_resume(resume))
        try:
            s = self.cache.stream(key, tracked.create, timeout, **kw)
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
