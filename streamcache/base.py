"""The surface every cache shares: :class:`CacheBase` and the checks of its calls'
arguments.

Every cache has ``fetch``, ``stream``, ``astream``, ``peek``, ``invalidate``, ``stop``
and the context manager.
A subclass implements ``stream``; :class:`CacheBase` builds ``fetch`` (a copy of the
stream to dst), ``astream`` and the context manager on it. StreamCache and NullCache
(null) also implement ``fetch`` themselves (a creating fetch hands each write straight
to dst; a hit is read whole), LoggingCache (testing) and MinOccurrences wrap another
cache.
"""

from __future__ import annotations

from types import TracebackType

from ipc.clock import SYSTEM, Clock

from .deadline import check_idle, check_timeout
from .entry.sink import dst_problem
from .entry.stream import AsyncStream, EntryInfo, FetchResult, Stream

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from .entry.create_types import Create

    # ``with StreamCache(...) as c`` gives a StreamCache, not a CacheBase (typing.Self is
    # 3.11+). For type checkers only: a string bound is compiled at run time.
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


def _start_kw(
    start: int = 0, idle_timeout: float | None = None, resume: bool = False
) -> dict[str, Any]:
    """``start``, ``idle_timeout`` and ``resume`` for a wrapped cache's call, each passed
    only when set: a wrapper must keep working around caches written before they
    existed."""
    kw: dict[str, Any] = {"start": start} if start else {}
    if idle_timeout is not None:
        kw["idle_timeout"] = idle_timeout
    if resume:
        kw["resume"] = True
    return kw


def check_resume(resume: object) -> bool:
    """``resume`` (a bool: the caller declares create deterministic, see
    :mod:`streamcache.entry.resume`)."""
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, not {type(resume).__name__}")
    return resume


def check_dst(dst: object) -> None:
    problem = dst_problem(dst)
    if problem is not None:
        raise TypeError(problem)


class CacheBase:
    """fetch, astream, stop and the context manager, on top of a subclass's ``stream``."""

    _clock: Clock = SYSTEM  # what the calls' timeouts are read on

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
        self,
        key: str,
        dst: Any,
        create: Create,
        timeout: float | None = None,
        *,
        idle_timeout: float | None = None,
        resume: bool = False,
    ) -> FetchResult:
        """Find or create the entry of ``key`` and copy it to ``dst``."""
        check_dst(dst)
        check_resume(resume)
        with self.stream(key, create, timeout, **_start_kw(0, idle_timeout, resume)) as s:
            return FetchResult(s.copy_to(dst), s.created)

    def astream(
        self,
        key: str,
        create: Create,
        timeout: float | None = None,
        *,
        start: int = 0,
        idle_timeout: float | None = None,
        resume: bool = False,
    ) -> AsyncStream:
        """``async with cache.astream(key, create) as s: async for chunk in s: ...``"""
        check_key(key)
        check_create(create)
        check_timeout(timeout)
        check_start(start)
        check_idle(idle_timeout)
        check_resume(resume)
        kw = _start_kw(start, idle_timeout, resume)
        return AsyncStream(lambda: self.stream(key, create, timeout, **kw))

    def stop(self) -> None:
        """End background work. fetch keeps working."""

    def __enter__(self: _Cache) -> _Cache:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
