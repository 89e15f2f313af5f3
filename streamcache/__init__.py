"""streamcache: one process produces a large blob, every other process streams it.

A re-creation of Gitaly's ``streamcache`` taken across processes. The machine:

**Index** (``disk/index.py``). One record per entry in flight under
``<dir>/v2/index``, named by the key's sha256: a symlink whose target is one
short line of text (written in one atomic call, read in one). The lookup, create
and reader registration of one key form one critical section under one of 256
striped flock locks, so a key has one producer host-wide; the kernel drops the
lock of a process that dies. A record names the entry's data file (whose name
carries the producer's pid and names its IPC objects), the producer's start time
and the expiry (creation + the creator's max_age).

**Filestore** (``disk/filestore.py``). A new data file per entry, never reused, in 256
shard directories. A finished entry is the file ``<dir>/v2/entries/<aa>/<sha256>``:
complete (a trailer with its size closes it), immutable, its mtime its expiry.
A hit is one ``open`` by name with no record and no lock. Open descriptors
outlive unlinking, so eviction never cuts off a reader.

**Pipe** (``entry/writer.py`` for the producer's side, ``entry/pipe.py`` for the readers', over
``ipc.channel``). While an entry is written, its
channel (a shared-memory segment and two bells) carries the producer's offset,
state and announced failure, and one slot per reader with its position, written
only through that reader's ``ReaderSlot`` while it holds it. Readers sleep on a
futex on the segment's sequence word, which the producer bumps and wakes after
each write (a named semaphore where there is no futex); the producer sleeps on a
named semaphore that a reader rings after advancing. After each write the
producer blocks while it is more than ``window`` bytes ahead of the fastest live
reader (0: Gitaly's rule), so the disk fills no faster than readers read. When no
live reader is left, its next write raises BrokenPipeError and the entry fails
("abandoned", a code in the segment). Both waits run on an ``ipc.Waiter``: the
check of the other side falls due on an absolute deadline every ``liveness``
seconds of waiting, however often the waiter is woken (signals, rings, readers
leaving), so readers raise ProducerDied for a dead producer and the producer
stops counting dead readers within that bound. A process is identified by its
pid and start time, so a reused pid never passes for the dead process. A reader
never returns a byte past the entry's final size. Once the entry is finished or
failed its channel is unlinked.

**Producer** (``entry/producer.py``). The fetch that misses creates the entry. Without
a timeout it runs ``create`` in its own thread and hands each write straight to
its ``dst``; such an entry gets its channel only when another reader attaches
(that reader makes it, named after the data file, and the producer finds it
before a later write or when it ends). From then on the creator's copy moves to
a thread that reads the file (at once for a ``dst`` with a descriptor, else
after one slow write), so a slow client paces only itself. ``stream()``, and a
fetch with a timeout, run ``create`` in a producer thread and read the file like
every other reader. The entry is published as finished (the data file sealed and
renamed to its entry name, the record removed, under the key's lock) before the
segment says "done", so once any reader has seen the end, the next fetch
anywhere is a hit. A producer failure removes the record first and then
publishes the error, so the next fetch creates afresh. ``disk/store.py`` holds the
record-and-file changes that the producer, readers and cleanup share.

**Eviction** (``disk/eviction.py``). A loop in each process runs the pass every
``min(max_age, 60 s)``; a cleanup lock makes one process at a time do it:
evict entries past their expiry (recorded, or the finished file's mtime), discard
records of dead producers, delete data files no live record owns that are older
than max_age (repairing unreadable shard dirs), and unlink channels no live
entry owns, then set the disk usage total to what the directory holds.
``streamcache gc`` runs the same pass once. ``cache.invalidate(key)`` drops one
key's entry under its lock: the finished file goes, and an entry in flight loses
its record and data file as an expired one does, so its producer (which publishes,
under the same lock, only while its record still names its file) never publishes it.

**Budget and full disk** (``disk/usage.py``). One small file holds the running total
of the entries' bytes (producers reserve before each write), a "disk full" mark
and the one producer allowed past ``max_bytes``. A miss first evicts the finished
entries that expire first; when the budget is still taken (all in flight), or the
disk was found full within the back-off, it bypasses: create runs straight into
the caller, as with NullCache. Data on disk stays within max_bytes plus one entry.

Calls go one way: ``cache`` -> ``lookup`` -> ``producer`` -> ``pipe``/``writer`` ->
``store`` -> ``usage`` -> ``index``/``filestore``, and everything -> ``ipc``, which
knows nothing of caches.
The folders are those layers: ``cli/`` and ``serving/`` above the caches
(``admission``, ``cache``, ``testing``, ``lookup``, ``options``, ``null``, ``base``),
above one entry's life (``entry/``), above the directory (``disk/``);
``lint-imports`` checks that no import runs back up.
Time comes from one injected ``ipc.Clock``.

**Admission** (``admission.py``). MinOccurrences sends a key to the cache only
once it was asked more than n times, counting in two generations of min_age
shared through the directory; other requests run create straight into dst.

Public names: :class:`Config`, :func:`new`, :class:`StreamCache`,
:class:`MinOccurrences`, :class:`NullCache`, :class:`LoggingCache`,
:class:`LogEntry`, :class:`FetchResult`, :class:`Error`, :class:`CreateError`,
:class:`ProducerDied`, :class:`ProducerStalled`, :class:`NotDeterministic`,
:class:`UnsupportedFilesystem`;
:class:`Writer` (the type of create's ``w``) and ``Create`` (the type of create);
:class:`Stream` (``s.size``,
``s.produced``, ``s.position``, ``s.finished_file()``), :class:`EntryInfo`
(``cache.peek(key)``).

**create** (``entry/creator.py``). Every path runs it the same way: ``create(w)`` writes
to ``w`` (``w.write(b"")`` does nothing) and returns None, or returns an iterable
of bytes-like chunks (a generator) that is written item by item; any other return
value fails the entry. Whichever way a call goes (an entry, NullCache, a bypassed
miss, MinOccurrences' pass-through), its readers get the same bytes or the same
error, and a stream that raised a failure raises it on every later read.

Example::

    import streamcache

    def make_pack(w: streamcache.Writer) -> None:
        for chunk in expensive_generator():
            w.write(chunk)

    with streamcache.new(streamcache.Config(dir="/var/cache/app/sc")) as cache:
        written, created = cache.fetch("pack:" + repo, response, make_pack)
"""

from __future__ import annotations

from . import config, metrics
from .admission import MinOccurrences
from .base import CacheBase
from .cache import StreamCache
from .entry.stream import AsyncStream, EntryInfo, FetchResult, FinishedFile, Stream
from .errors import (
    CreateError,
    Error,
    NotDeterministic,
    ProducerDied,
    ProducerStalled,
    UnsupportedFilesystem,
)
from .metrics import DEFAULT_REGISTRY, DefaultRegistry
from .null import NullCache
from .testing import LogEntry, LoggingCache

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .entry.create_types import Create, Writer
    from .settings import Config

__version__ = "0.1.0"

__all__ = [
    "AsyncStream",
    "CacheBase",
    "Config",
    "Create",
    "CreateError",
    "EntryInfo",
    "Error",
    "FetchResult",
    "FinishedFile",
    "LogEntry",
    "LoggingCache",
    "MinOccurrences",
    "NotDeterministic",
    "NullCache",
    "ProducerDied",
    "ProducerStalled",
    "Stream",
    "StreamCache",
    "UnsupportedFilesystem",
    "Writer",
    "new",
]


def __getattr__(name: str) -> object:
    """``Config``, imported at its first use (see :mod:`streamcache.settings`), and
    ``Writer`` and ``Create``, which import typing (see
    :mod:`streamcache.entry.create_types`)."""
    if name == "Config":
        from .settings import Config

        globals()["Config"] = Config
        return Config
    if name in ("Writer", "Create"):
        from .entry import create_types

        value: object = getattr(create_types, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new(
    cfg: Config, *, registry: CollectorRegistry | DefaultRegistry | None = DEFAULT_REGISTRY
) -> CacheBase:
    """The cache ``cfg`` describes: NullCache if disabled, else
    ``MinOccurrences(StreamCache(...), cfg.min_occurrences, cfg.max_age)`` as Gitaly's New.
    Its metrics go to ``registry`` (default: prometheus_client's REGISTRY; None: no
    metrics, and prometheus_client is not imported); a disabled one sets
    ``streamcache_enabled`` to 0."""
    from .settings import Config

    if not isinstance(cfg, Config):
        raise TypeError(f"new() needs a streamcache.Config, not {type(cfg).__name__}")
    cfg.validate()
    if not cfg.enabled:
        path = config.absolute(cfg.dir)
        metrics.for_dir(path, registry).set_enabled(config.seconds(cfg.max_age, "max_age"), False)
        return NullCache()
    inner = StreamCache(
        cfg.dir,
        max_age=cfg.max_age,
        window=cfg.window,
        max_bytes=cfg.max_bytes,
        registry=registry,
    )
    return MinOccurrences(inner, cfg.min_occurrences, cfg.max_age)
