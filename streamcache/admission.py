"""MinOccurrences: keep one-off keys off the disk.

A request reaches the wrapped cache only when its key has been asked more than
``n`` times (Gitaly: ``incr(key) > N``); the others run ``create`` straight into
``dst``, as NullCache does. Counts live in two generations, each ``min_age``
long, and a key's count moves into the new generation when first seen there,
so frequent keys keep their count while keys unseen for two generations are
forgotten wholesale.

When the wrapped cache is a StreamCache, counts are shared by every process on
its directory: a generation is a directory (named by ``floor(now / min_age)``)
holding one file per key whose *size* is the count. Appending with O_APPEND is
atomic, so no lock is needed; a key's file in a new generation appears by
link(2) already holding the carried-over count, so no process ever sees it
half made. A file stops growing once it is past ``n``: only "more than n" matters.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable

from ipc.clock import Clock, clock_of

from . import config
from .base import (
    CacheBase,
    _start_kw,
    check_create,
    check_dst,
    check_key,
    check_resume,
    check_start,
)
from .cache import StreamCache, key_hash
from .deadline import check_idle, check_timeout
from .disk.filestore import make_private_dirs
from .entry.stream import EntryInfo, FetchResult, Stream
from .metrics import BYPASS, ERROR, NULL, Metrics
from .null import NullCache

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from .entry.create_types import Create

_APPEND = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


class MemoryCounter:
    """Gitaly's counters, for a wrapped cache with no directory: one process only."""

    def __init__(self, min_age: float, clock: Clock) -> None:
        self._min_age = min_age
        self._clock = clock
        self._lock = threading.Lock()
        self.old: dict[str, int] = {}
        self.new: dict[str, int] = {}
        self._rotated_at = clock.wall()

    def incr(self, key: str, cap: int) -> int:
        with self._lock:
            now = self._clock.wall()
            if now - self._rotated_at > self._min_age:
                self._rotated_at = now
                self.old, self.new = self.new, {}
            count = self.new.get(key, 0) + 1 + self.old.pop(key, 0)
            self.new[key] = count
            return count


class FileCounter:
    """Counters shared through the cache directory (see the module docstring)."""

    def __init__(self, root: str, min_age: float, clock: Clock) -> None:
        self._span = max(min_age, 0.001)
        self.root = os.path.join(root, f"{round(self._span * 1000)}ms")
        self._clock = clock

    def generation(self) -> int:
        return int(self._clock.wall() // self._span)

    def incr(self, key: str, cap: int) -> int:
        gen = self.generation()
        name = key_hash(key)
        try:
            return self._incr_existing(gen, name, cap)
        except FileNotFoundError:
            return self._first_in_generation(gen, name, cap)

    def _first_in_generation(self, gen: int, name: str, cap: int) -> int:
        """Publish a key's count in a new generation in one step: a temp file holding
        the carried-over count plus this request, hard-linked into place. If another
        process linked first, this request is appended to its file instead."""
        gen_dir = os.path.join(self.root, str(gen))
        if not os.path.isdir(gen_dir):
            self._new_generation(gen)
        carry = 0
        with contextlib.suppress(OSError):
            carry = os.stat(os.path.join(self.root, str(gen - 1), name)).st_size
        count = 1 + min(carry, cap)
        tmp = os.path.join(gen_dir, f".{name}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"\0" * count)
        finally:
            os.close(fd)
        try:
            os.link(tmp, os.path.join(gen_dir, name))
        except FileExistsError:
            return self._incr_existing(gen, name, cap)
        finally:
            os.unlink(tmp)
        return count

    def _incr_existing(self, gen: int, name: str, cap: int) -> int:
        fd = os.open(os.path.join(self.root, str(gen), name), _APPEND)
        try:
            if os.fstat(fd).st_size <= cap:
                os.write(fd, b"\0")
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def _new_generation(self, gen: int) -> None:
        gen_dir = os.path.join(self.root, str(gen))
        if os.path.isdir(gen_dir):
            return
        make_private_dirs(gen_dir)
        import shutil  # here: rarely needed, and costly at start-up

        # The process that opens a generation forgets those before the previous one.
        with contextlib.suppress(OSError):
            for entry in os.listdir(self.root):
                if entry.lstrip("-").isdigit() and int(entry) < gen - 1:
                    shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)


class MinOccurrences(CacheBase):
    """Sends a key to ``cache`` only once it was asked more than ``n`` times within
    about ``min_age`` seconds (``n=0``: from the first request). ``clock`` (an
    :class:`ipc.Clock`, or a function giving epoch seconds, as for StreamCache) times
    the counts and the timeouts of the requests not sent to ``cache``; by default
    ``cache``'s."""

    def __init__(
        self,
        cache: CacheBase,
        n: int,
        min_age: config.Duration,
        *,
        clock: Clock | Callable[[], float] | None = None,
    ) -> None:
        self.cache = cache
        self.n = config.nonnegative_int(n, "n")
        self.min_age = config.seconds(min_age, "min_age")
        self._clock = cache._clock if clock is None else clock_of(clock)
        self._null = NullCache(clock=self._clock)
        self.counter: MemoryCounter | FileCounter
        # Requests not yet admitted count as bypasses of the wrapped cache's directory.
        self._metrics: Metrics = NULL
        if isinstance(cache, StreamCache):
            self.counter = FileCounter(
                os.path.join(cache.root, "counts"), self.min_age, self._clock
            )
            self._metrics = cache.metrics
        else:
            self.counter = MemoryCounter(self.min_age, self._clock)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled: the wrapped cache (pickled in turn), ``n``, ``min_age`` and the
        clock. Counts shared through a StreamCache's directory stay shared; a wrapped
        cache without one starts counting afresh in the process that unpickles it."""
        return functools.partial(type(self), clock=self._clock), (self.cache, self.n, self.min_age)

    def _target(self, key: str) -> CacheBase:
        check_key(key)
        if self.n == 0 or self.counter.incr(key, self.n) > self.n:
            return self.cache
        return self._null

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
        # Arguments are checked before the request is counted: a call that fails on
        # them is no occurrence of its key.
        check_dst(dst)
        check_create(create)
        check_timeout(timeout)
        check_idle(idle_timeout)
        check_resume(resume)
        target = self._target(key)
        kw = _start_kw(0, idle_timeout, resume)
        if target is self.cache:
            return target.fetch(key, dst, create, timeout, **kw)
        try:
            result = target.fetch(key, dst, create, timeout, **kw)
        except Exception:
            self._metrics.count_fetch(ERROR)
            raise
        self._metrics.count_fetch(BYPASS)
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
        check_create(create)
        check_timeout(timeout)
        check_start(start)
        check_idle(idle_timeout)
        check_resume(resume)
        target = self._target(key)
        if target is not self.cache:
            self._metrics.count_fetch(BYPASS)
        return target.stream(key, create, timeout, **_start_kw(start, idle_timeout, resume))

    def peek(self, key: str) -> EntryInfo | None:
        """The wrapped cache's entry of ``key``; not an occurrence."""
        return self.cache.peek(key)

    def invalidate(self, key: str) -> bool:
        """The wrapped cache's; not an occurrence, and the key's count stays: a request
        not yet admitted runs create anyway."""
        check_key(key)
        return self.cache.invalidate(key)

    def stop(self) -> None:
        self.cache.stop()
