"""Prometheus metrics of a cache directory.

A :class:`Metrics` is made by the cache (``registry=``) and passed down into the core
objects that count: the core calls its ``count_*`` and ``set_*`` methods; nothing here
calls the core.

Every metric has a ``dir`` label (the cache directory's absolute path):

- ``streamcache_fetches_total{dir,outcome}``: fetch and stream calls by how they ended:
  ``hit`` (read an entry that existed, finished or in flight), ``miss`` (this call
  created the entry), ``bypass`` (create ran straight into the caller: a key not yet
  admitted by min_occurrences, or a miss the cache could not store), ``error`` (the
  call raised, or reading a stream did).
- ``streamcache_generated_bytes_total{dir}``: bytes producers wrote into the cache.
- ``streamcache_served_bytes_total{dir}``: bytes the cache delivered to callers.
- ``streamcache_backpressure_seconds_total{dir}``: time producers spent blocked
  because no reader was within ``window`` bytes.
- ``streamcache_evictions_total{dir,reason}``: entries removed, by reason: ``expired``
  (past max_age), ``dead_producer`` (its producer died), ``budget`` (over max_bytes),
  ``invalidated`` (dropped by ``cache.invalidate``).
- ``streamcache_stalled_entries_total{dir}``: entries failed because their producer,
  alive, wrote nothing for ``stall_timeout`` while readers waited (counted once, by the
  reader that found it).
- ``streamcache_index_entries{dir}``: entries in the directory (finished and in
  flight), ``streamcache_disk_bytes{dir}``: bytes of their files; both measured by
  each cleanup pass (host-wide, so the most recent measurement of any process wins).
- ``streamcache_enabled{dir,max_age}``: 1 while a cache on ``dir`` is open in a live
  process (0 for a disabled Config given to ``new``).

Under ``PROMETHEUS_MULTIPROC_DIR`` (gunicorn and the like) counters add up across
processes, the measured gauges take the most recent value and ``enabled`` the maximum
over live processes (call ``multiprocess.mark_process_dead`` when a worker exits).
"""

from __future__ import annotations

import atexit
import enum
import os
import threading
import weakref
from collections.abc import Iterable

from ipc.clock import SYSTEM, Clock

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["DEFAULT_REGISTRY", "NULL", "DefaultRegistry", "Metrics", "NullMetrics", "for_dir"]


class DefaultRegistry(enum.Enum):
    """The type of :data:`DEFAULT_REGISTRY`, the default ``registry=`` of a cache:
    prometheus_client's global ``REGISTRY``. prometheus_client is imported only when a
    cache is made with a registry (it costs about 150 ms at start-up: its exposition
    module imports http.server), so ``registry=None`` never imports it."""

    REGISTRY = "prometheus_client.REGISTRY"

    def __repr__(self) -> str:
        return self.value


DEFAULT_REGISTRY = DefaultRegistry.REGISTRY

HIT = "hit"
MISS = "miss"
BYPASS = "bypass"
ERROR = "error"
OUTCOMES = (HIT, MISS, BYPASS, ERROR)

EXPIRED = "expired"
DEAD_PRODUCER = "dead_producer"
BUDGET = "budget"
INVALIDATED = "invalidated"
REASONS = (EXPIRED, DEAD_PRODUCER, BUDGET, INVALIDATED)


# Hits on small entries (the fast path: one pread, one write) are tallied in a list
# (append is atomic) and added to the counters in one step every this many hits or
# seconds, at a scrape of the registry, a cleanup pass, ``stop()`` and exit: two
# counter increments cost as much as a third of such a hit.
_TALLY_HITS = 256
_TALLY_SECONDS = 1.0


class _Flusher:
    """Registered before the counters, so a scrape of the registry first adds the
    tallies of this process's caches (it exports nothing itself)."""

    def __init__(self) -> None:
        self.metrics: weakref.WeakSet[Metrics] = weakref.WeakSet()

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        for m in list(self.metrics):
            m.flush()
        return ()


class _Collectors:
    """The collectors of one registry (a registry refuses a second metric of a name)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge

        r = registry
        self.flusher = _Flusher()
        r.register(self.flusher)
        self.fetches = Counter(
            "streamcache_fetches",
            "Fetch and stream calls by outcome.",
            ["dir", "outcome"],
            registry=r,
        )
        self.generated = Counter(
            "streamcache_generated_bytes",
            "Bytes producers wrote into the cache.",
            ["dir"],
            registry=r,
        )
        self.served = Counter(
            "streamcache_served_bytes", "Bytes the cache delivered to callers.", ["dir"], registry=r
        )
        self.backpressure = Counter(
            "streamcache_backpressure_seconds",
            "Seconds producers were blocked waiting for a reader within the window.",
            ["dir"],
            registry=r,
        )
        self.evictions = Counter(
            "streamcache_evictions", "Entries removed, by reason.", ["dir", "reason"], registry=r
        )
        self.stalled = Counter(
            "streamcache_stalled_entries",
            "Entries failed because their producer wrote nothing for stall_timeout while "
            "readers waited.",
            ["dir"],
            registry=r,
        )
        self.entries = Gauge(
            "streamcache_index_entries",
            "Entries in the cache directory (finished and in flight), as last measured.",
            ["dir"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.disk = Gauge(
            "streamcache_disk_bytes",
            "Bytes of the cache directory's entry files, as last measured.",
            ["dir"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.enabled = Gauge(
            "streamcache_enabled",
            "1 while a cache on dir is open (with its max_age in seconds).",
            ["dir", "max_age"],
            multiprocess_mode="livemax",
            registry=r,
        )


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Collectors] = (
    weakref.WeakKeyDictionary()
)


def _collectors(registry: CollectorRegistry) -> _Collectors:
    with _lock:
        found = _by_registry.get(registry)
        if found is None:
            found = _by_registry[registry] = _Collectors(registry)
        return found


class Metrics:
    """The metrics of the cache on ``dir`` in ``registry`` (children bound once, so a
    count on the hit path is one ``inc``)."""

    def __init__(
        self,
        dir: str,
        registry: CollectorRegistry | DefaultRegistry = DEFAULT_REGISTRY,
        clock: Clock = SYSTEM,
    ) -> None:
        from prometheus_client import REGISTRY, CollectorRegistry

        if registry is DEFAULT_REGISTRY:
            registry = REGISTRY
        if not isinstance(registry, CollectorRegistry):
            raise TypeError(
                f"registry must be a prometheus_client.CollectorRegistry or None, "
                f"not {type(registry).__name__}"
            )
        c = _collectors(registry)
        self.dir = dir
        self._tally: list[int] = []  # sizes of small hits not yet counted
        self._tally_lock = threading.Lock()
        self._clock = clock
        self._tallied_at = clock.monotonic()
        self._enabled = c.enabled
        self._fetches = {o: c.fetches.labels(dir, o) for o in OUTCOMES}
        self._hit = self._fetches[HIT]
        self._evictions = {r: c.evictions.labels(dir, r) for r in REASONS}
        self._generated = c.generated.labels(dir)
        self._served = c.served.labels(dir)
        self._backpressure = c.backpressure.labels(dir)
        self._stalled = c.stalled.labels(dir)
        self._entries = c.entries.labels(dir)
        self._disk = c.disk.labels(dir)
        c.flusher.metrics.add(self)
        _all.add(self)

    def count_fetch(self, outcome: str) -> None:
        self._fetches[outcome].inc()

    def count_hit(self, served: int) -> None:
        """A hit that served ``served`` bytes at once (the small-entry fast path):
        tallied, counted within :data:`_TALLY_SECONDS` while hits come."""
        tally = self._tally
        tally.append(served)
        if len(tally) >= _TALLY_HITS or self._clock.monotonic() - self._tallied_at > _TALLY_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Count the tallied hits."""
        with self._tally_lock:
            self._tallied_at = self._clock.monotonic()
            tally = self._tally
            n = len(tally)  # appends go on meanwhile, after these n
            if not n:
                return
            served = sum(tally[:n])
            del tally[:n]
            self._hit.inc(n)
            self._served.inc(served)

    def count_served(self, n: int) -> None:
        self._served.inc(n)

    def count_generated(self, n: int) -> None:
        self._generated.inc(n)

    def count_backpressure(self, seconds: float) -> None:
        self._backpressure.inc(seconds)

    def count_eviction(self, reason: str, n: int = 1) -> None:
        if n:
            self._evictions[reason].inc(n)

    def count_stalled(self) -> None:
        self._stalled.inc()

    def set_usage(self, entries: int, disk_bytes: int) -> None:
        """A cleanup pass's measurement of the whole directory."""
        self._entries.set(entries)
        self._disk.set(disk_bytes)

    def set_enabled(self, max_age: float, enabled: bool = True) -> None:
        self._enabled.labels(self.dir, f"{max_age:g}").set(1 if enabled else 0)


class NullMetrics(Metrics):
    """Counts nothing: ``registry=None``, and the default of core objects made alone."""

    def __init__(self) -> None:
        self.dir = ""

    def count_fetch(self, outcome: str) -> None:
        pass

    def count_hit(self, served: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def count_served(self, n: int) -> None:
        pass

    def count_generated(self, n: int) -> None:
        pass

    def count_backpressure(self, seconds: float) -> None:
        pass

    def count_eviction(self, reason: str, n: int = 1) -> None:
        pass

    def count_stalled(self) -> None:
        pass

    def set_usage(self, entries: int, disk_bytes: int) -> None:
        pass

    def set_enabled(self, max_age: float, enabled: bool = True) -> None:
        pass


NULL = NullMetrics()

_all: weakref.WeakSet[Metrics] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for m in list(_all):
        m.flush()


def _after_fork_in_child() -> None:
    # A tally is the parent's: the child counts only its own hits.
    for m in list(_all):
        m._tally = []
        m._tally_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def for_dir(
    dir: str | os.PathLike[str],
    registry: CollectorRegistry | DefaultRegistry | None,
    clock: Clock = SYSTEM,
) -> Metrics:
    """The metrics of the cache on ``dir`` (absolute) in ``registry``, timed by ``clock``;
    None counts nothing."""
    if registry is None:
        return NULL
    return Metrics(os.fspath(dir), registry, clock)
