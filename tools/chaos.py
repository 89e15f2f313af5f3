"""Chaos driver: kill -9 worker processes at random moments and check that nobody is
served wrong bytes, nobody hangs, and nothing is left behind (docs/design.md, "The
cross-process protocol" and "Failure model").

    python tools/chaos.py --seconds 30 --workers 4 [--seed S] [--dir D] [--kill-interval 0.4]
                          [--signal-storm HZ] [--keys N --max-size BYTES --zipf S]
                          [--max-bytes BYTES] [--stop-interval SECONDS]
                          [--astream-share FRACTION] [--resume-share FRACTION]
                          [--hang SECONDS] [--startup SECONDS]

The long stress run (32 workers, a Zipf-skewed key set of 0 to 64 MiB, a small budget):

    python tools/chaos.py --seconds 600 --workers 32 --keys 64 --max-size 67108864 \
        --zipf 1.1 --max-bytes 268435456 --kill-interval 0.5 --stop-interval 1.0 \
        --signal-storm 20

The ten-minute bypass run (a 128 KiB budget, so a large share of the misses bypass the
cache and are served straight from create; half the operations are astream):

    python tools/chaos.py --seconds 600 --workers 8 --keys 24 --max-size 4194304 \
        --zipf 1.1 --max-bytes 131072 --astream-share 0.5 --kill-interval 0.5 \
        --stop-interval 1.0 --signal-storm 20

(On 2 shared cores at load 15-18: 3471 operations, 942 of the 2084 misses bypassed,
172 MB verified, 548 kills, 262 SIGSTOPs, 0 violations.)

W worker processes (multiprocessing spawn) loop over a small key set. Every key has
fixed content, ``content(key)``: its size and bytes follow from sha256(key), and every
4 KiB block carries its own index, so a shifted, truncated or foreign byte is caught.
Workers fetch through ``StreamCache(dir, window=<random, incl. 0>, liveness=0.2)`` with
``fetch`` (to an in-memory sink or to a real file, which takes the sendfile path),
``stream`` (iterated, read(n), readinto, read(), or read partly and closed early) and
``astream`` (``--astream-share`` weights the mix towards it); every call has a timeout,
some of them short. The creates they pass write ``content(key)`` in random chunks
(bytes, bytearray, memoryview, with empty writes mixed in), sometimes slowly, sometimes
stalling, sometimes failing with an exception part-way (or after the last byte).

The parent SIGKILLs random workers at random moments and restarts them; sometimes it
waits until it catches a worker with a producer running and kills it then. Workers
report their state through shared arrays (no locks: a killed process must not hold
one): a heartbeat, the phase of the current operation, how many producers run in them.

Resume (``--resume-share FRACTION``, off by default): every other key (ranks 0, 2, ...)
is resumable, and that share of the calls on it pass ``resume=True``, the others not
(so one entry has resumable and plain readers). Their creates write ``content(key)``
(a pure function of the key, as resume requires) and never fail on purpose; every
cache used on such a key has max_age RESUMABLE_MAX_AGE, so no record of one expires
in flight (an evicted entry is not resumed), and an operation on it first retires
(RETIRE) the key's finished entry, never one in flight, so it is made again. A
create that runs as a dead producer's successor (its writer a ResumingWriter) counts
as a takeover, not a create, and its call is a reader (``created`` False). Counted:
takeovers (resumed entries), takeovers whose create gave every byte (completed), the
resumable calls by outcome, and resumable readers cut off: a resumable call that got
ProducerDied. That is a violation (quoting the key's lines of the workers' library
logs, kept in the log dir) unless its cause is one the contract allows, and none of
those ends in ProducerDied here:
- the call's own timeout or idle_timeout (TimeoutError: its outcome, not a cut-off);
- the entry's create failed (a plain call's injected failure) or the entry was
  declared stalled (stall_timeout; a SIGSTOPped producer too): CreateError or
  ProducerStalled, for every reader alike;
- the reader's own process was killed (no outcome at all);
- the successor killed too: a reader left elects itself again (so still no
  cut-off); with no reader left, nobody is cut off;
- the cache wiped on purpose, or the entry evicted or invalidated in flight: this
  tool never does either to a resumable key (RESUMABLE_MAX_AGE, RETIRE).
A plain (resume=False) reader of the same entry may get ProducerDied, as without
resume. A create found not deterministic (CreateError "create is not deterministic")
is a violation: the creates here are.

Signal storm (``--signal-storm HZ``, off by default): servers install Python handlers
for signals (gunicorn's SIGUSR1 reopens its logs), and a handled signal ends a blocking
system call with EINTR in whichever thread the kernel delivers it to. Every wait of the
library (a reader's futex or doorbell, the producer's back-pressure wait, a lock, a
sleep) must then re-check and carry on, within its deadline, without failing. So each
worker installs a no-op SIGUSR1 handler and the parent sends SIGUSR1 to every live
worker HZ times a second for the whole run (through a pidfd: never to a reused pid).
A process-directed signal goes to the main thread unless that thread blocks it, so each
worker incarnation picks where the signals land:
- ``process``: nothing blocked; they interrupt the main thread, i.e. the readers' waits;
- ``producers``: the main thread (and so every thread it starts) blocks SIGUSR1 and each
  ``create`` unblocks it in its producer thread, so the kernel must deliver the parent's
  signals there: the producer's writes and back-pressure waits are interrupted;
- ``relay``: as ``process``, and a helper thread also sends SIGUSR1 with
  ``signal.pthread_kill`` to every thread running a ``create``, HZ times a second, so
  readers and the producer of one process are interrupted together.
Stack dumps (below) use SIGUSR2, so they do not mix with the storm.

Checked:
- every completed read returned exactly ``content(key)``; every failed or abandoned
  read returned a prefix of it; ``created`` is true exactly when this call's create ran;
- failures are only TimeoutError, ProducerDied, ProducerStalled, BrokenPipeError, or
  CreateError carrying an injected failure, "BrokenPipeError" (a producer whose readers
  all left) or "ProducerStalled" (the producer's own call, once a reader declared it
  stalled); some producers stall (alive, writing nothing for 0.3 to 2.5 s), some caches
  have a stall_timeout (STALL_TIMEOUTS) and some calls an idle_timeout (IDLE_TIMEOUTS),
  counted apart ("stalled", "idle_timeout");
- no worker hangs: a heartbeat older than --hang seconds (main loop or a producer), or a
  worker that does not exit within twice that bound (or --startup, if longer: exiting is
  slow on a busy machine, as starting is) after being told to stop, is a violation;
  the bound (default HANG, 60 s: generous, as it is there to catch hangs, never speed)
  runs from a worker's first heartbeat: its start-up (spawn, imports, slow on a busy
  machine) has a bound of its own, --startup seconds (default STARTUP, 120 s); the
  report names the operation (op and key) and phase the worker was in, the create it
  started last, and holds a faulthandler dump of its threads (SIGUSR2); the longest
  silence and start-up seen, and how late after its deadline a TimeoutError came at
  worst, are in the summary (a TimeoutError over LATE seconds late is a note);
- no worker dies on its own: an exit (during the run, or with a status other than 0
  after the stop) is a violation that quotes the worker's stderr, kept in the log dir
  with faulthandler enabled, so a fatal signal (SIGSEGV) comes with every thread's stack;
- at the end, after every worker exited and one ``StreamCache(dir).gc()`` pass: nothing
  of the directory in /dev/shm, no record of an entry in flight, and every finished
  entry is intact (its trailer matches) and holds exactly ``content(key)``.

Key set (``--keys N``, off by default: then 8 fixed keys of 0 bytes to 4 MiB): N keys whose
sizes are spread log-uniformly from 0 to ``--max-size`` (the size is part of the key's
name), picked with Zipf-skewed weights 1/(rank+1)**S (``--zipf S``), so a few keys are hot
and most are cold. ``--max-bytes`` gives every worker's cache that budget, so eviction and
bypass (a miss served straight from create) run all the time: an operation bypassed when
its cache counted a bypass or its create ran without an EntryWriter. ``--stop-interval``
SIGSTOPs a worker running a producer every so often (mean seconds) and SIGCONTs it 0.05 to
1.5 s later: its readers wait (or time out), nobody else fails.

The summary counts operations by outcome (errors by type), hits, creates, bypassed
operations (their share of the misses, by outcome and by kind), kills, stops, signals
and violations, the bytes verified and the longest waits; after the last
worker exited, one gc pass (whose sweep takes every data file: no entry is in flight any
more) must leave nothing in /dev/shm, no record and no data file; the finished entries left
are each checked byte for byte. The exit status is 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import faulthandler
import hashlib
import json
import logging
import math
import mmap
import multiprocessing as mp
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

import ipc
import streamcache
from ipc.doorbell import unlink_semaphore
from ipc.segment import unlink_segment
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.eviction import ORPHAN_GRACE
from streamcache.disk.filestore import Filestore
from streamcache.disk.index import Index
from streamcache.disk.store import Store
from streamcache.entry.resume import ResumingWriter
from streamcache.entry.writer import EntryWriter

MiB = 1 << 20
BLOCK = 4096
KEYS = [f"chaos-key-{i}" for i in range(8)]
# Size classes, one per key: about 2**e bytes (None: 0..3 bytes, so empty entries occur).
_EXPONENTS: tuple[int | None, ...] = (None, 3, 7, 11, 15, 18, 20, 21)
WINDOWS = (0, 0, 1, 4096, 65536, MiB, 4 * MiB)
TIMEOUTS = (0.05, 0.3, 1.0, 3.0, 5.0, 5.0)
LIVENESS = 0.2
STALL_TIMEOUTS = (None, None, 0.5, 1.0)  # a worker cache's stall_timeout
IDLE_TIMEOUTS = (None, None, None, 0.3, 1.0)  # a call's idle_timeout
# The max_age of every cache used on a resumable key (see the docstring): no record of
# one expires while its entry is in flight.
RESUMABLE_MAX_AGE = 3600.0
RETIRE = 0.3  # the share of operations on a resumable key that first retire its entry
MAX_SHOWN = 20  # violations printed in the summary
_MEMO_BYTES = 128 * MiB  # a worker keeps at most about this much expected content
# Hang bounds. A hang never ends, so a generous bound still catches one and a busy
# machine never trips it: a worker's longest silence on a quiet machine is its longest
# timeout (5 s) or stall (1.5 s) and a little. Start-up (spawn, imports: 13 s seen at
# load 24) has a bound of its own, from the process's start to its first heartbeat.
HANG = 60.0
STARTUP = 120.0
SLOW_EXIT = 6.0  # seconds after the stop flag; slower exits are noted with a stack dump
LATE = 1.0  # seconds past its deadline; a later TimeoutError is noted
STORM_SIGNAL = signal.SIGUSR1  # the storm's signal; workers handle it with a no-op
DUMP_SIGNAL = signal.SIGUSR2  # faulthandler's stack dump
STDERR_KEPT = 20000  # the characters of a worker's stderr a violation quotes, at most
STORM_MODES = ("process", "producers", "relay")  # where a worker's storm lands (docstring)
# Faults of a worker, for the driver's own tests: "slow-start" takes SLOW_START seconds
# more to start, then only beats (no operation: nothing else may stay silent); "hang"
# blocks for good in its first operation, while reading.
FAULTS = ("", "slow-start", "hang", "segv")
SLOW_START = 2.0

# Counters, one row per worker slot (int64, written only by the slot's current process).
OUTCOMES = (
    "ok",
    "partial",
    "timeout",
    "producer_died",
    "stalled",
    "idle_timeout",
    "create_failed",
    "create_broken_pipe",
    "broken_pipe",
    "unexpected",
)
OPS = ("fetch_sink", "fetch_file", "stream_iter", "stream_read", "stream_partial", "astream")
_OP_WEIGHTS = (30, 10, 15, 15, 15, 5)  # the default mix of OPS
OTHER = (
    "created",
    "hits",
    "creates_started",
    "creates_completed",
    "creates_injected_failure",
    "creates_broken_pipe",
    "bytes_verified",
    "violations",
    "signals_handled",
    "signals_relayed",
    "empty_writes",
    "misses",
    "bypassed",
    *(f"storm_{m}" for m in STORM_MODES),
    "takeovers",
    "takeovers_completed",
    "resume_cut_off",
    "retired",
)
# Operations whose miss bypassed the cache (create ran straight into the caller), by
# outcome and by kind of read.
BYPASSED = tuple(f"bypassed_{o}" for o in OUTCOMES) + tuple(f"bypassed_op_{o}" for o in OPS)
# Operations that passed resume=True, by outcome.
RESUMED = tuple(f"resume_{o}" for o in OUTCOMES)
# Maxima, not sums: each slot keeps its largest value, the summary takes the largest.
MAXIMA = ("timeout_late_us",)
COUNTERS = OUTCOMES + tuple(f"op_{o}" for o in OPS) + OTHER + BYPASSED + RESUMED + MAXIMA
_CI = {name: i for i, name in enumerate(COUNTERS)}

# State, one row per slot (doubles): written by the worker, read by the parent.
S_HEARTBEAT, S_PHASE, S_KEY, S_PRODUCERS, S_PPROGRESS, S_OPSEQ, S_PID, S_TIMEOUT = range(8)
S_OP, S_STORM = 8, 9  # S_PID is set once the worker handles the storm's signal
S_UP = 10  # the worker's first heartbeat: its start-up is over
S_PKEY, S_POP = 11, 12  # the key and op of the call whose create started last
S_RESUME = 13  # 1 while the current operation passes resume=True
S_WORDS = 14
PHASES = ("starting", "idle", "opening", "reading", "closing", "verifying", "exiting", "done")
_PH = {name: i for i, name in enumerate(PHASES)}


# -- content ----------------------------------------------------------------------------


def zipf_keys(n: int, max_size: int) -> list[str]:
    """``n`` keys whose sizes (part of each name, see content_size) spread log-uniformly
    from 0 to ``max_size``; every 16th is empty."""
    keys = []
    top = max(max_size, 1).bit_length()
    for i in range(n):
        r = int.from_bytes(hashlib.sha256(f"chaos-z{i}".encode()).digest()[:8], "little")
        size = 0 if i % 16 == 0 else min(max_size, int(2 ** ((r % 10_000) / 10_000 * top)))
        keys.append(f"chaos-z{i}-{size}")
    return keys


def content_size(key: str) -> int:
    if key.startswith("chaos-z"):
        return int(key.rsplit("-", 1)[1])
    h = hashlib.sha256(key.encode()).digest()
    e = _EXPONENTS[KEYS.index(key)] if key in KEYS else 12
    r = int.from_bytes(h[:4], "little")
    return r % 4 if e is None else (1 << e) + r % (1 << e)


def content(key: str) -> bytes:
    """The fixed bytes of ``key``: blocks of 4 KiB, each its index then key-derived bytes."""
    h = hashlib.sha256(key.encode()).digest()
    base = b"".join(hashlib.sha256(h + bytes([j])).digest() for j in range(BLOCK // 32))
    size = content_size(key)
    nblocks = (size + BLOCK - 1) // BLOCK
    tail = base[8:]
    return b"".join(struct.pack("<Q", i) + tail for i in range(nblocks))[:size]


def first_difference(a: bytes | bytearray, b: bytes) -> int:
    """Index of the first differing byte of a and b (or the shorter length)."""
    n = min(len(a), len(b))
    lo, hi = 0, n
    if a[:n] == b[:n]:
        return n
    while hi - lo > 64:  # bisect on slices, then scan
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return hi


@dataclass
class _Call:
    """What became of one operation's create."""

    ran: bool = False
    cached: bool | None = None  # ran with an EntryWriter (else straight to the caller)
    took_over: bool = False  # ran as the successor of a dead producer (resume=True)


def op_weights(astream_share: float | None) -> list[float]:
    """The weights of OPS: the default mix, or astream at ``astream_share`` of them and
    the other kinds in the default proportions."""
    weights = [float(w) for w in _OP_WEIGHTS]
    if astream_share is not None:
        if not 0 <= astream_share <= 1:
            raise ValueError(f"astream_share must be within [0, 1], not {astream_share}")
        a = OPS.index("astream")
        others = sum(weights) - weights[a]
        weights = [w / others * (1 - astream_share) for w in weights]
        weights[a] = astream_share
    return weights


class ChaosFailure(Exception):
    """What a create injected to fail on purpose."""


class ChaosPanic(BaseException):
    """A BaseException a create raises on purpose (a 'panic': must fail only the entry)."""


# -- worker -----------------------------------------------------------------------------


@dataclass
class WorkerArgs:
    dir: str
    slot: int
    seed: int
    logdir: str
    counters: Any  # RawArray('q')
    state: Any  # RawArray('d')
    stop: Any  # RawValue('b')
    storm_hz: float = 0.0  # > 0: handle STORM_SIGNAL, and pick a storm mode
    keys: tuple[str, ...] = tuple(KEYS)
    zipf: float = 0.0  # > 0: key of rank r picked with weight 1/(r+1)**zipf
    max_bytes: int | None = None  # every cache's budget
    astream_share: float | None = None  # the share of operations that are astream
    fault: str = ""  # one of FAULTS, for the driver's own tests
    resume_share: float = 0.0  # on a resumable key, the share of calls with resume=True


class Worker:
    def __init__(self, args: WorkerArgs) -> None:
        self.a = args
        self.rng = random.Random(args.seed)
        self.keys = list(args.keys)
        self.weights = [1 / (r + 1) ** args.zipf for r in range(len(self.keys))]
        self.op_weights = op_weights(args.astream_share)
        self._contents: dict[str, bytes] = {}  # a bounded memo of content(key)
        self.registry = CollectorRegistry()  # every cache of this process counts here
        self.caches: dict[tuple[int, float, float | None], streamcache.StreamCache] = {}
        # Every other key is resumable (see the docstring), when resume runs at all.
        self.store: Store | None = None  # made by the first retire()
        self.resumable = {
            k for i, k in enumerate(self.keys) if args.resume_share > 0 and i % 2 == 0
        }
        self.row = args.slot * len(COUNTERS)
        self.srow = args.slot * S_WORDS
        self._plock = threading.Lock()
        self._producer_threads: set[int] = set()  # idents of threads in a create (_plock)
        self.storm_mode = ""  # one of STORM_MODES once the storm is set up
        self._storm_stop = threading.Event()
        self.log = open(  # noqa: SIM115 - kept open for the process's life
            os.path.join(args.logdir, f"w{args.slot}-{os.getpid()}.jsonl"), "a", buffering=1
        )
        self.scratch = os.path.join(args.logdir, "scratch")
        os.makedirs(self.scratch, exist_ok=True)

    # shared-memory reporting (no locks: single writer per field, except S_PRODUCERS)
    def count(self, name: str, n: int = 1) -> None:
        self.a.counters[self.row + _CI[name]] += n

    def count_max(self, name: str, value: int) -> None:
        i = self.row + _CI[name]
        if value > self.a.counters[i]:
            self.a.counters[i] = value

    def set(self, field_: int, value: float) -> None:
        self.a.state[self.srow + field_] = value

    def beat(self) -> None:
        self.a.state[self.srow + S_HEARTBEAT] = time.monotonic()

    def phase(self, name: str) -> None:
        self.set(S_PHASE, _PH[name])
        self.beat()

    def violation(self, what: str, **details: Any) -> None:
        self.count("violations")
        rec = {"slot": self.a.slot, "pid": os.getpid(), "what": what, **details}
        self.log.write(json.dumps(rec, default=repr) + "\n")

    def note(self, what: str, **details: Any) -> None:
        """Something worth a look that is not a violation (printed under notes)."""
        rec = {"slot": self.a.slot, "pid": os.getpid(), "note": what, **details}
        self.log.write(json.dumps(rec, default=repr) + "\n")

    def expected(self, key: str) -> bytes:
        data = self._contents.get(key)
        if data is None:
            if sum(map(len, self._contents.values())) > _MEMO_BYTES:
                self._contents.clear()
            data = self._contents[key] = content(key)
        return data

    def bypasses_counted(self) -> float:
        """The bypasses the caches of this process have counted (all in one registry:
        every cache of one dir shares its counter). A stream counts its bypass when it
        opens, a fetch when it succeeds."""
        total = 0.0
        for metric in self.registry.collect():
            if metric.name == "streamcache_fetches":
                total += sum(
                    s.value
                    for s in metric.samples
                    if s.name.endswith("_total") and s.labels.get("outcome") == "bypass"
                )
        return total

    def cache(self, resumable: bool = False) -> streamcache.StreamCache:
        window = self.rng.choice(WINDOWS)
        # Mostly long-lived entries; some expire within seconds, so cleanup passes run
        # in the workers (every second) and evict entries in flight. A resumable key's
        # records never expire in flight: an evicted entry is not resumed.
        max_age = self.rng.choice((0.2, 0.5, 1.0, 2.0, 5.0))
        if resumable:
            max_age = RESUMABLE_MAX_AGE
        stall_timeout = self.rng.choice(STALL_TIMEOUTS)
        c = self.caches.get((window, max_age, stall_timeout))
        if c is None:
            c = streamcache.StreamCache(
                self.a.dir,
                window=window,
                liveness=LIVENESS,
                max_age=max_age,
                max_bytes=self.a.max_bytes,
                registry=self.registry,
                stall_timeout=stall_timeout,
            )
            self.caches[(window, max_age, stall_timeout)] = c
        return c

    def retire(self, key: str) -> None:
        """Remove the finished entry of resumable ``key``, never one in flight (under the
        key's lock, only when it has no record), so that it is created again: its
        records never expire (RESUMABLE_MAX_AGE)."""
        if self.store is None:
            self.store = Store(os.path.join(self.a.dir, LAYOUT), ipc.prefix_for(self.a.dir))
        h = key_hash(key)
        with self.store.index.locked(h, None):
            if self.store.index.read_text(h) is None and self.store.expire_finished(h):
                self.count("retired")

    def make_create(
        self, ki: int, op: str, call: _Call, resume: bool = False
    ) -> Callable[[Any], None]:
        """A create writing content(key) in random chunks; with ``resume`` one that never
        fails on purpose, is slow more often, and whose chunks are at least 4 KiB (a
        successor re-runs it over the dead producer's bytes: byte-sized slow chunks would
        take minutes)."""
        rng = random.Random(self.rng.getrandbits(64))
        data = self.expected(self.keys[ki])
        size = len(data)
        r = rng.random()
        mode = "normal"
        if r < 0.12:
            mode = "fail"
        elif r < 0.14:
            mode = "panic"
        elif r < 0.26:
            mode = "slow"
        elif r < 0.34:
            mode = "stall"  # alive, writing nothing: long enough for STALL_TIMEOUTS
        if resume:  # slow more often: entries in flight longer, more readers to resume them
            mode = "slow" if r < 0.35 else "stall" if r < 0.45 else "normal"
        fail_at = rng.choice((0, size, rng.randint(0, size))) if mode in ("fail", "panic") else -1
        stall_at = rng.randint(0, size)
        max_chunk = rng.choice(
            (4096, 65536, 300_000, 2 * MiB) if resume else (1, 4096, 65536, 300_000, 2 * MiB)
        )

        # Empty writes (b"", and empty bytearray/memoryview) mixed in: sometimes first,
        # sometimes last (also for an empty key), sometimes before a chunk.
        empties = rng.random() < 0.3
        empty_first, empty_last = empties and rng.random() < 0.5, empties and rng.random() < 0.5

        def write_empty(w: Any) -> None:
            w.write(rng.choice((b"", bytearray(), memoryview(b""))))
            self.count("empty_writes")

        def create(w: Any) -> None:
            took_over = isinstance(w, ResumingWriter)  # a dead producer's successor
            call.took_over = call.took_over or took_over  # before ran: the op reads both
            call.ran = True
            call.cached = isinstance(w, EntryWriter)
            self.count("takeovers" if took_over else "creates_started")
            if self.storm_mode == "producers" and (
                threading.current_thread() is not threading.main_thread()
            ):
                # The main thread blocks the storm's signal, and this thread inherited
                # that: take it here, so the kernel delivers the parent's signals to us.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {STORM_SIGNAL})
            with self._plock:
                # Progress first: the parent judges a producer by it once it counts one.
                self.a.state[self.srow + S_PPROGRESS] = time.monotonic()
                self.set(S_PKEY, ki)
                self.set(S_POP, OPS.index(op))
                self.a.state[self.srow + S_PRODUCERS] += 1
                self._producer_threads.add(threading.get_ident())
            try:
                pos = 0
                stalled = False
                if empty_first:
                    write_empty(w)
                while pos < size or (pos == size and fail_at == size):
                    if pos == fail_at:
                        exc_type = ChaosFailure if mode == "fail" else ChaosPanic
                        raise exc_type(f"injected failure at byte {pos} of {size}")
                    n = rng.randint(1, max_chunk)
                    if fail_at > pos:
                        n = min(n, fail_at - pos)
                    chunk = data[pos : pos + n]
                    kind = rng.random()
                    if empties and kind < 0.1:
                        write_empty(w)
                    if kind < 0.3:
                        w.write(memoryview(chunk))
                    elif kind < 0.4:
                        w.write(bytearray(chunk))
                    else:
                        w.write(chunk)
                    pos += len(chunk)
                    self.a.state[self.srow + S_PPROGRESS] = time.monotonic()
                    if mode == "slow":
                        time.sleep(rng.uniform(0.001, 0.03))
                    elif mode == "stall" and not stalled and pos >= stall_at:
                        stalled = True
                        time.sleep(rng.uniform(0.3, 2.5))
                    self.a.state[self.srow + S_PPROGRESS] = time.monotonic()
                if empty_last:
                    write_empty(w)
                self.count("takeovers_completed" if took_over else "creates_completed")
            except BrokenPipeError:
                self.count("creates_broken_pipe")
                raise
            except (ChaosFailure, ChaosPanic):
                self.count("creates_injected_failure")
                raise
            finally:
                with self._plock:
                    self.a.state[self.srow + S_PRODUCERS] -= 1
                    self._producer_threads.discard(threading.get_ident())

        return create

    def setup_storm(self) -> None:
        """Handle the storm's signal with a no-op (as gunicorn handles SIGUSR1), and
        pick where this process lets it land (STORM_MODES, see the module docstring)."""
        self.storm_mode = self.rng.choice(STORM_MODES)
        self.set(S_STORM, STORM_MODES.index(self.storm_mode))
        self.count("storm_" + self.storm_mode)
        signal.signal(STORM_SIGNAL, self._on_storm_signal)
        if self.storm_mode == "producers":
            signal.pthread_sigmask(signal.SIG_BLOCK, {STORM_SIGNAL})
        elif self.storm_mode == "relay":
            threading.Thread(target=self._relay, name="chaos-relay", daemon=True).start()

    def _on_storm_signal(self, signum: int, frame: Any) -> None:
        self.count("signals_handled")  # only this handler writes that counter

    def _relay(self) -> None:
        """Send the storm's signal to every thread running a create, storm_hz times a
        second (registered under _plock, so each target is alive when signalled)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {STORM_SIGNAL})
        period = 1.0 / self.a.storm_hz
        tick = time.monotonic()
        while not self._storm_stop.is_set():
            with self._plock:
                for ident in self._producer_threads:
                    signal.pthread_kill(ident, STORM_SIGNAL)
                    self.count("signals_relayed")  # only this thread writes that counter
            tick += period
            delay = tick - time.monotonic()
            if delay > 0:
                self._storm_stop.wait(delay)
            else:
                tick = time.monotonic()  # fell behind: skip ticks rather than burst

    def end_storm(self) -> None:
        """Ignore the storm's signal from now on: at exit the interpreter resets a
        Python-handled signal to its default action, which would kill the process."""
        self._storm_stop.set()
        signal.signal(STORM_SIGNAL, signal.SIG_IGN)

    def run(self) -> None:
        if self.a.storm_hz > 0:
            self.setup_storm()
        self.set(S_PID, os.getpid())  # from here on, the parent may send the storm
        self.phase("idle")
        self.set(S_UP, self.a.state[self.srow + S_HEARTBEAT])
        if self.a.fault == "slow-start":
            while not self.a.stop.value:
                time.sleep(0.05)
                self.beat()
        while not self.a.stop.value:
            self.set(S_OPSEQ, self.a.state[self.srow + S_OPSEQ] + 1)
            try:
                self.one_op()
            except Exception as exc:  # the driver's own bug, or a library surprise
                self.count("unexpected")
                self.violation(
                    "exception outside the checked op", error=repr(exc), tb=traceback.format_exc()
                )
            self.phase("idle")
        self.phase("exiting")
        for c in self.caches.values():
            c.stop()
        self.phase("done")

    def one_op(self) -> None:
        rng = self.rng
        ki = rng.choices(range(len(self.keys)), weights=self.weights)[0]
        key = self.keys[ki]
        expected = self.expected(key)
        resumable = key in self.resumable
        cache = self.cache(resumable)
        timeout = rng.choice(TIMEOUTS)
        kw: dict[str, Any] = {}  # idle_timeout, resume
        idle_timeout = rng.choice(IDLE_TIMEOUTS)
        if idle_timeout is not None:
            kw["idle_timeout"] = idle_timeout
        if resumable and rng.random() < RETIRE:
            self.retire(key)
        resume = resumable and rng.random() < self.a.resume_share
        self.set(S_RESUME, float(resume))
        if resume:
            kw["resume"] = True
        op = rng.choices(OPS, weights=self.op_weights)[0]
        self.set(S_KEY, ki)
        self.set(S_TIMEOUT, timeout)
        self.set(S_OP, OPS.index(op))
        self.count("op_" + op)
        call = _Call()
        create = self.make_create(ki, op, call, resume)
        bypasses_before = self.bypasses_counted()
        got = bytearray()
        created: bool | None = None
        complete = False
        file_dst = None
        error = ""
        self.phase("opening")
        started = time.monotonic()
        if self.a.fault == "hang":
            self.phase("reading")
            _hang_for_good()
        if self.a.fault == "segv":
            self.phase("reading")
            _crash()
        try:
            if op == "fetch_sink":
                sink = _Sink(got, self.beat)
                self.phase("reading")
                res = cache.fetch(key, sink, create, timeout=timeout, **kw)
                created, complete = res.created, True
                if res.written != len(got):
                    self.violation(
                        "fetch's written differs from bytes received",
                        key=key,
                        written=res.written,
                        received=len(got),
                    )
            elif op == "fetch_file":
                file_dst = tempfile.TemporaryFile(dir=self.scratch, buffering=0)  # noqa: SIM115
                self.phase("reading")
                try:
                    res = cache.fetch(key, file_dst, create, timeout=timeout, **kw)
                    created, complete = res.created, True
                finally:
                    got[:] = os.pread(file_dst.fileno(), 1 << 30, 0)
                if res.written != len(got):
                    self.violation(
                        "fetch's written differs from bytes in the file",
                        key=key,
                        written=res.written,
                        received=len(got),
                    )
            elif op == "astream":
                created = asyncio.run(self._astream(cache, key, create, timeout, got, kw))
                complete = True
            else:
                with cache.stream(key, create, timeout=timeout, **kw) as s:
                    self.phase("reading")
                    created = s.created
                    if op == "stream_iter":
                        for chunk in s:
                            got += chunk
                            self.beat()
                        complete = True
                    elif op == "stream_read":
                        complete = self._read_variously(s, got, len(expected))
                    else:  # read a part (maybe none), then close early
                        want = rng.randint(0, len(expected))
                        while len(got) < want:
                            chunk = s.read(min(want - len(got), rng.randint(1, 2 * MiB)))
                            if not chunk:
                                break
                            got += chunk
                            self.beat()
                        self.phase("closing")
            self.phase("verifying")
            outcome = "ok" if complete else "partial"
        except TimeoutError as exc:
            outcome = "timeout"
            if "idle_timeout" in str(exc):
                outcome = "idle_timeout"
            late = time.monotonic() - started - timeout
            if outcome == "timeout":
                self.count_max("timeout_late_us", int(late * 1e6))
            if late > LATE and outcome == "timeout":
                self.note(
                    f"TimeoutError {late:.2f}s after its deadline",
                    key=key,
                    op=op,
                    timeout=timeout,
                    received=len(got),
                    tb=traceback.format_exc(),
                )
        except streamcache.ProducerDied as exc:
            outcome = "producer_died"
            error = str(exc)
        except streamcache.ProducerStalled:
            outcome = "stalled"
        except streamcache.CreateError as exc:
            text = str(exc)
            if text.startswith(("ChaosFailure:", "ChaosPanic:")):
                outcome = "create_failed"
            elif text.startswith("BrokenPipeError"):
                outcome = "create_broken_pipe"
            elif text.startswith("ProducerStalled"):
                outcome = "stalled"  # the producer's own call: its write raised it
            else:
                outcome = "unexpected"
                self.violation(
                    "CreateError of an undocumented kind",
                    key=key,
                    op=op,
                    error=text,
                    tb=traceback.format_exc(),
                )
        except BrokenPipeError:
            outcome = "broken_pipe"
        except Exception as exc:
            outcome = "unexpected"
            self.violation(
                "unexpected exception", key=key, op=op, error=repr(exc), tb=traceback.format_exc()
            )
        finally:
            if file_dst is not None:
                file_dst.close()
        self.phase("verifying")
        self.count(outcome)
        if outcome == "producer_died":  # beside the library's lines of the key
            _chaos_log.info(
                "chaos: entry %s: %s %s resume=%s got ProducerDied after %d bytes: %s",
                key_hash(key)[:16],
                op,
                key,
                resume,
                len(got),
                error,
            )
        if resume:
            self.count("resume_" + outcome)
            if outcome == "producer_died":
                # No cause the contract allows (see the docstring): the entry was not
                # carried on for this resumable reader.
                self.count("resume_cut_off")
                self.violation(
                    "a resumable reader was cut off",
                    key=key,
                    op=op,
                    error=error,
                    received=len(got),
                    expected=len(expected),
                    seconds=round(time.monotonic() - started, 3),
                    took_over=call.took_over,
                )
        # Bytes: all of content(key) when complete, else a prefix of it.
        if complete and bytes(got) != expected:
            at = first_difference(got, expected)
            self.violation(
                "wrong bytes served",
                key=key,
                op=op,
                created=created,
                received=len(got),
                expected=len(expected),
                first_difference=at,
            )
        elif not complete and not expected.startswith(got):
            at = first_difference(got, expected)
            self.violation(
                "wrong bytes in a partial read",
                key=key,
                op=op,
                outcome=outcome,
                received=len(got),
                expected=len(expected),
                first_difference=at,
            )
        else:
            self.count("bytes_verified", len(got))
        # created is true exactly for the call whose create ran.
        if created is False and call.ran and not call.took_over:
            self.violation("create ran but created is False", key=key, op=op)
        if complete and created and not call.ran:
            self.violation("created is True but create never ran", key=key, op=op)
        if complete:
            self.count("created" if created else "hits")
        # Bypassed: the cache counted a bypass (a stream when it opened, a fetch that
        # succeeded), or this op's create ran without an entry (a failed fetch's).
        bypassed = self.bypasses_counted() > bypasses_before or call.cached is False
        if bypassed or (call.ran and not call.took_over) or created:
            self.count("misses")
        if bypassed:
            self.count("bypassed")
            self.count("bypassed_" + outcome)
            self.count("bypassed_op_" + op)

    def _read_variously(self, s: streamcache.Stream, got: bytearray, size: int) -> bool:
        rng = self.rng
        how = rng.choice(("read_n", "readinto", "read_all"))
        if how == "read_all":
            got += s.read()
            return True
        # Byte-by-byte reads only on small entries: over megabytes they outlast the hang
        # bound (a timeout bounds waits, not a reader that keeps reading).
        sizes = (100, 4096, 70_000, MiB, 3 * MiB) + ((1, 1) if size <= 65536 else ())
        buf = bytearray(rng.choice(sizes))
        while True:
            if how == "readinto":
                n = s.readinto(buf)
                chunk = bytes(buf[:n])
            else:
                chunk = s.read(rng.randint(0, len(buf)) or 1)
            if not chunk:
                return True
            got += chunk
            self.beat()

    async def _astream(
        self,
        cache: streamcache.StreamCache,
        key: str,
        create: Any,
        timeout: float,
        got: bytearray,
        kw: dict[str, Any],
    ) -> bool:
        async with cache.astream(key, create, timeout, **kw) as s:
            self.phase("reading")
            async for chunk in s:
                got += chunk
                self.beat()
            return s.created


class _Sink:
    def __init__(self, buf: bytearray, beat: Callable[[], None]) -> None:
        self.buf = buf
        self.beat = beat

    def write(self, data: bytes) -> int:
        self.buf += data
        self.beat()
        return len(data)


def worker_main(args: WorkerArgs) -> None:
    """Entry point of a worker process (spawn)."""
    take_stack_dumps(os.path.join(args.logdir, f"w{args.slot}-{os.getpid()}.stack"))
    # The worker's stderr goes to a file of its own, kept for the report of an exit on
    # a signal or with an error: faulthandler writes every thread's stack there on a
    # fatal signal (SIGSEGV, SIGBUS, SIGABRT...), and an uncaught exception lands there.
    err = os.open(
        os.path.join(args.logdir, f"w{args.slot}-{os.getpid()}.err"),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        0o600,
    )
    os.dup2(err, 2)
    os.close(err)
    faulthandler.enable(all_threads=True)
    # Every injected failure is a WARNING line of the library: thousands in a long run,
    # kept in a file of the worker's own (a resumable reader cut off quotes its key's).
    lib = logging.getLogger("streamcache")
    handler = logging.FileHandler(os.path.join(args.logdir, f"w{args.slot}-{os.getpid()}.log"))
    handler.setFormatter(logging.Formatter("%(created).3f pid %(process)d %(message)s"))
    lib.addHandler(handler)
    lib.setLevel(logging.INFO)
    lib.propagate = False
    if args.fault == "slow-start":
        time.sleep(SLOW_START)
    worker = Worker(args)
    try:
        worker.run()
    finally:
        if args.storm_hz > 0:
            worker.end_storm()


def _crash() -> None:
    """A segmentation fault, for the driver's own tests (FAULTS): a read through the
    address of a mapping after it was unmapped."""
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    view = ctypes.c_char.from_buffer(mm)
    address = ctypes.addressof(view)
    del view
    mm.close()
    ctypes.string_at(address, 1)


def _hang_for_good() -> None:
    """A hang, for the driver's own tests (FAULTS)."""
    threading.Event().wait()


_chaos_log = logging.getLogger("streamcache.chaos")  # into the worker's library log
_dumps_end = threading.Event()


def take_stack_dumps(path: str) -> None:
    """Write every thread's stack to ``path`` on each DUMP_SIGNAL, from now until the
    interpreter exits (call it in the main thread, before starting any other).

    Only a dedicated idle thread takes DUMP_SIGNAL: a signal landing in another
    thread's blocking call (a doorbell's sem_timedwait) would interrupt it (EINTR), so
    the stack dump would disturb what it looks at. Threads inherit the blocked mask.
    That thread ends (and the signal then stays pending, blocked everywhere) at exit,
    before the interpreter finalizes: faulthandler reads the other threads' frames
    from a signal handler, and a dump while finalization frees them crashes the
    process with SIGSEGV (a dump asked for by a slow exit's note did so)."""
    stack = open(path, "w")  # noqa: SIM115 - kept open for faulthandler
    faulthandler.register(DUMP_SIGNAL, file=stack, all_threads=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {DUMP_SIGNAL})
    taker = threading.Thread(target=_take_dump_signals, name="chaos-dump", daemon=True)
    taker.start()
    # atexit runs after the threads are joined, before the interpreter finalizes.
    atexit.register(_end_dumps, taker)


def _take_dump_signals() -> None:
    # This thread takes stack dumps, not the storm (it would only soak signals up).
    signal.pthread_sigmask(signal.SIG_BLOCK, {STORM_SIGNAL})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {DUMP_SIGNAL})
    _dumps_end.wait()  # PEP 475: the wait resumes after the handler ran
    signal.pthread_sigmask(signal.SIG_BLOCK, {DUMP_SIGNAL})


def _end_dumps(taker: threading.Thread) -> None:
    _dumps_end.set()
    taker.join(HANG)  # a bound only: it ends at once


# -- parent -----------------------------------------------------------------------------


@dataclass
class Summary:
    seconds: float = 0.0
    workers: int = 0
    seed: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    kills_in_producer: int = 0
    stops: int = 0  # SIGSTOP/SIGCONT of a worker running a producer
    restarts: int = 0
    final_kills: int = 0
    storm_hz: float = 0.0
    signals_sent: int = 0  # by the parent (the storm)
    hang: float = 0.0
    startup: float = 0.0  # the bound on a worker's start-up (to its first heartbeat)
    longest_startup: float = 0.0
    longest_silence: float = 0.0  # seen by the parent, of a worker's main loop
    longest_producer_silence: float = 0.0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fetches(self) -> int:
        return sum(self.counters.get(o, 0) for o in OUTCOMES)

    def format(self) -> str:
        c = self.counters
        lines = [
            f"chaos: {self.seconds:.0f}s, {self.workers} workers, seed {self.seed}",
            "  operations by outcome: "
            + ", ".join(f"{o}={c.get(o, 0)}" for o in OUTCOMES)
            + f" (total {self.fetches})",
            "  operations by kind: " + ", ".join(f"{o}={c.get('op_' + o, 0)}" for o in OPS),
            f"  completed: created={c.get('created', 0)} hits={c.get('hits', 0)}; "
            f"bytes verified={c.get('bytes_verified', 0)}",
            self._bypassed_line(),
            self._resume_line(),
            f"  creates: started={c.get('creates_started', 0)} "
            f"completed={c.get('creates_completed', 0)} "
            f"injected failures={c.get('creates_injected_failure', 0)} "
            f"broken pipe={c.get('creates_broken_pipe', 0)} "
            f"empty writes={c.get('empty_writes', 0)}",
            f"  kills: {self.kills} (in a producer: {self.kills_in_producer}), "
            f"restarts: {self.restarts}, killed at the end: {self.final_kills}; "
            f"SIGSTOP/SIGCONT of producers: {self.stops}",
            self._signals_line(),
            f"  longest wait: heartbeat silence {self.longest_silence:.2f}s (main loop), "
            f"{self.longest_producer_silence:.2f}s (producer), hang bound {self.hang:g}s; "
            f"longest start-up {self.longest_startup:.2f}s (bound {self.startup:g}s); "
            f"latest TimeoutError {c.get('timeout_late_us', 0) / 1e6:.3f}s after its deadline",
            "  end state: " + ", ".join(f"{k}={v}" for k, v in self.info.items()),
            f"  violations: {len(self.violations)}",
        ]
        lines += [f"    - {v}" for v in self.violations[:MAX_SHOWN]]
        if len(self.violations) > MAX_SHOWN:
            lines.append(f"    ... and {len(self.violations) - MAX_SHOWN} more")
        if self.notes:
            lines.append(f"  notes: {len(self.notes)}")
            lines += [f"    - {n}" for n in self.notes[:MAX_SHOWN]]
            if len(self.notes) > MAX_SHOWN:
                lines.append(f"    ... and {len(self.notes) - MAX_SHOWN} more")
        return "\n".join(lines)

    @property
    def bypassed(self) -> int:
        return self.counters.get("bypassed", 0)

    def _bypassed_line(self) -> str:
        c = self.counters
        misses = c.get("misses", 0)
        share = f" ({100 * self.bypassed / misses:.0f}%)" if misses else ""
        outcomes = ", ".join(f"{o}={c.get('bypassed_' + o, 0)}" for o in OUTCOMES)
        kinds = ", ".join(f"{o}={c.get('bypassed_op_' + o, 0)}" for o in OPS)
        return (
            f"  bypassed: {self.bypassed} of {misses} misses{share}; "
            f"by outcome: {outcomes}; by kind: {kinds}"
        )

    def _resume_line(self) -> str:
        c = self.counters
        calls = sum(c.get("resume_" + o, 0) for o in OUTCOMES)
        if not calls:
            return "  resume: no call passed resume=True"
        outcomes = ", ".join(f"{o}={c.get('resume_' + o, 0)}" for o in OUTCOMES)
        return (
            f"  resume: {calls} calls with resume=True ({outcomes}); "
            f"resumed entries (takeovers)={c.get('takeovers', 0)}, "
            f"completed={c.get('takeovers_completed', 0)}; "
            f"finished entries retired={c.get('retired', 0)}; "
            f"resumable readers cut off={c.get('resume_cut_off', 0)}"
        )

    def _signals_line(self) -> str:
        if self.storm_hz <= 0:
            return "  signals: no storm"
        c = self.counters
        modes = " ".join(f"{m}={c.get('storm_' + m, 0)}" for m in STORM_MODES)
        return (
            f"  signals: {self.signals_sent} SIGUSR1 sent by the driver "
            f"({self.storm_hz:g} Hz to each live worker), "
            f"{c.get('signals_relayed', 0)} relayed to producer threads, "
            f"handler ran {c.get('signals_handled', 0)} times; "
            f"worker storm modes: {modes}"
        )


@dataclass(frozen=True)
class Options:
    """What a run does: the command line's options (see the module docstring)."""

    seconds: float = 30.0
    workers: int = 4
    seed: int = 0
    kill_interval: float = 0.4  # mean seconds between kills (0: none)
    hang: float = HANG  # seconds without progress, after start-up, that are a hang
    startup: float = STARTUP  # seconds a worker may take to start
    signal_storm: float = 0.0  # Hz (0: no storm)
    keys: int = 0  # N Zipf-skewed keys (0: the 8 fixed KEYS)
    max_size: int = 64 * MiB
    zipf: float = 1.1
    max_bytes: int | None = None  # every cache's budget
    stop_interval: float = 0.0  # mean seconds between SIGSTOPs (0: none)
    astream_share: float | None = None  # the share of operations that are astream
    # After ``seconds``, go on until this many operations bypassed the cache, up to
    # ``max_seconds`` in all (a busy machine runs fewer operations).
    min_bypassed: int = 0
    max_seconds: float | None = None
    fault: str = ""  # one of FAULTS, for the driver's own tests
    # On the resumable keys (every other key, when > 0), the share of calls that pass
    # resume=True; and, like min_bypassed, go on until this many entries were resumed.
    resume_share: float = 0.0
    min_takeovers: int = 0


class Driver:
    def __init__(self, dir: str, logdir: str, opts: Options) -> None:
        if opts.signal_storm > 0 and not hasattr(os, "pidfd_open"):
            raise RuntimeError("the signal storm needs os.pidfd_open (Linux, Python 3.9+)")
        op_weights(opts.astream_share)  # checks it
        if not 0 <= opts.resume_share <= 1:
            raise ValueError(f"resume_share must be within [0, 1], not {opts.resume_share}")
        if opts.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, not {opts.fault!r}")
        self.dir = dir
        self.logdir = logdir
        self.opts = opts
        self.keys = zipf_keys(opts.keys, opts.max_size) if opts.keys else list(KEYS)
        self.zipf = opts.zipf if opts.keys else 0.0
        self.max_bytes = opts.max_bytes
        self.stop_interval = opts.stop_interval
        self.stopped: dict[int, float] = {}  # slot -> monotonic time to SIGCONT it
        self.n = workers = opts.workers
        self.seed = opts.seed
        self.rng = random.Random(opts.seed)
        self.kill_interval = opts.kill_interval
        self.hang = opts.hang
        self.startup = opts.startup
        self.started_at = [0.0] * workers  # when each slot's process was started
        self.ctx = mp.get_context("spawn")
        self.counters = self.ctx.RawArray(ctypes.c_int64, workers * len(COUNTERS))
        self.state = self.ctx.RawArray(ctypes.c_double, workers * S_WORDS)
        self.stop = self.ctx.RawValue(ctypes.c_byte, 0)
        self.procs: list[Any] = [None] * workers
        self.incarnation = 0
        self.final_killed: set[int] = set()
        self.storm_hz = opts.signal_storm
        self.summary = Summary(
            workers=workers,
            seed=opts.seed,
            storm_hz=self.storm_hz,
            hang=self.hang,
            startup=self.startup,
        )
        # The storm's targets: a pidfd and pid per slot (replaced under _storm_lock).
        self._storm_lock = threading.Lock()
        self._pidfds: list[int | None] = [None] * workers
        self._pids: list[int] = [0] * workers
        self._storm_done = threading.Event()

    def total(self, counter: str) -> int:
        """The sum of a counter over the slots, now (the workers write on meanwhile)."""
        k, i = len(COUNTERS), _CI[counter]
        return sum(int(self.counters[s * k + i]) for s in range(self.n))

    def st(self, slot: int, f: int) -> float:
        return float(self.state[slot * S_WORDS + f])

    def start(self, slot: int) -> None:
        self.incarnation += 1
        base = slot * S_WORDS
        for f in range(S_WORDS):
            self.state[base + f] = 0.0
        self.started_at[slot] = self.state[base + S_HEARTBEAT] = time.monotonic()
        args = WorkerArgs(
            self.dir,
            slot,
            self.seed * 1_000_003 + self.incarnation,
            self.logdir,
            self.counters,
            self.state,
            self.stop,
            self.storm_hz,
            tuple(self.keys),
            self.zipf,
            self.max_bytes,
            self.opts.astream_share,
            self.opts.fault,
            self.opts.resume_share,
        )
        self.stopped.pop(slot, None)
        p = self.ctx.Process(target=worker_main, args=(args,), name=f"chaos-w{slot}")
        p.start()
        self.procs[slot] = p
        if self.storm_hz > 0:
            # Opened before anyone can reap the child: the pidfd names this process
            # and no other, even once its pid is reused.
            pid = p.pid
            assert pid is not None
            pidfd = os.pidfd_open(pid)
            with self._storm_lock:
                old, self._pidfds[slot], self._pids[slot] = self._pidfds[slot], pidfd, pid
            if old is not None:
                os.close(old)

    def storm(self) -> None:
        """The signal storm: STORM_SIGNAL to every live worker, storm_hz times a second,
        once the worker handles it (S_PID set: before that, it would kill the worker)."""
        period = 1.0 / self.storm_hz
        tick = time.monotonic()
        while not self._storm_done.is_set():
            with self._storm_lock:
                for slot in range(self.n):
                    pidfd = self._pidfds[slot]
                    if pidfd is None or self.st(slot, S_PID) != self._pids[slot]:
                        continue
                    try:
                        signal.pidfd_send_signal(pidfd, STORM_SIGNAL)
                        self.summary.signals_sent += 1
                    except ProcessLookupError:
                        pass  # exited (killed, or stopped)
            tick += period
            delay = tick - time.monotonic()
            if delay > 0:
                self._storm_done.wait(delay)
            else:
                tick = time.monotonic()  # fell behind: skip ticks rather than burst

    def describe(self, slot: int) -> str:
        """The worker's last reported state: its operation (op and key) and phase, the
        create it started last, how long ago it started and last made progress."""
        now = time.monotonic()
        ph = PHASES[int(self.st(slot, S_PHASE))]
        seq = int(self.st(slot, S_OPSEQ))
        if seq:
            op = OPS[int(self.st(slot, S_OP))]
            key = self.keys[int(self.st(slot, S_KEY))]
            doing = f"op#{seq} {op} key={key} timeout={self.st(slot, S_TIMEOUT):g} phase={ph}"
        else:
            doing = f"no operation yet, phase={ph}"
        producers = int(self.st(slot, S_PRODUCERS))
        if producers:
            last = f"{OPS[int(self.st(slot, S_POP))]} key={self.keys[int(self.st(slot, S_PKEY))]}"
            doing += (
                f"; producers={producers} (the last started for {last}), "
                f"producer progress {now - self.st(slot, S_PPROGRESS):.1f}s ago"
            )
        storm = f", storm={STORM_MODES[int(self.st(slot, S_STORM))]}" if self.storm_hz > 0 else ""
        up = self.st(slot, S_UP)
        started = f"up after {up - self.started_at[slot]:.1f}s" if up else "not up yet"
        return (
            f"slot {slot} pid {self.procs[slot].pid}: {doing}{storm}; "
            f"started {now - self.started_at[slot]:.1f}s ago ({started}), "
            f"heartbeat {now - self.st(slot, S_HEARTBEAT):.1f}s ago"
        )

    def stack_dump(self, slot: int) -> str:
        p = self.procs[slot]
        path = os.path.join(self.logdir, f"w{slot}-{p.pid}.stack")
        if not self.up(slot):
            return "(not started: no stack dump)"  # faulthandler may not handle it yet
        try:
            before = os.path.getsize(path)
        except OSError:
            before = 0
        try:
            os.kill(p.pid, DUMP_SIGNAL)
        except ProcessLookupError:
            return "(process gone)"
        # faulthandler writes from the signal handler; on a busy machine that may take
        # a while: wait (bounded) for the file to grow, then a moment for the rest.
        until = time.monotonic() + 10.0
        while time.monotonic() < until:
            with contextlib.suppress(OSError):
                if os.path.getsize(path) > before:
                    break
            time.sleep(0.05)
        time.sleep(0.5)
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            text = ""
        return text or "(no stack dump)"

    def stderr_of(self, slot: int) -> str:
        """The end of a worker's stderr (faulthandler's stacks after a fatal signal)."""
        path = os.path.join(self.logdir, f"w{slot}-{self.procs[slot].pid}.err")
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        return text[-STDERR_KEPT:] or "(nothing on stderr)"

    def hung(self, slot: int, why: str) -> None:
        state = self.describe(slot)
        dump = self.stack_dump(slot)
        self.summary.violations.append(f"HANG ({why}) {state}\n{_indent(dump)}")
        self.kill(slot, counted=False)

    def kill(self, slot: int, counted: bool = True) -> None:
        p = self.procs[slot]
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.join(self.hang)
        if p.is_alive():
            self.summary.violations.append(
                f"slot {slot} pid {p.pid} survived SIGKILL for {self.hang:g} s"
            )
        if counted:
            self.summary.kills += 1

    def check(self, slot: int) -> None:
        p = self.procs[slot]
        now = time.monotonic()
        if not p.is_alive():
            p.join(1)
            self.summary.violations.append(
                f"slot {slot} pid {p.pid} exited on its own (exit code {p.exitcode}) "
                f"in state: {self.describe(slot)}\n{_indent(self.stderr_of(slot))}"
            )
            self.restart(slot)
            return
        if not self.up(slot):
            # Not hung before its first heartbeat: spawning and importing take long on
            # a busy machine. Start-up has its own, generous, bound.
            if now - self.started_at[slot] > self.startup:
                self.hung(slot, f"did not start within {self.startup:g}s")
                self.restart(slot)
            return
        silence = now - self.st(slot, S_HEARTBEAT)
        self.summary.longest_silence = max(self.summary.longest_silence, silence)
        if self.st(slot, S_PRODUCERS) > 0:
            self.summary.longest_producer_silence = max(
                self.summary.longest_producer_silence, now - self.st(slot, S_PPROGRESS)
            )
        if silence > self.hang:
            self.hung(slot, "main loop made no progress")
            self.restart(slot)
        elif self.st(slot, S_PRODUCERS) > 0 and now - self.st(slot, S_PPROGRESS) > self.hang:
            self.hung(slot, "a producer made no progress")
            self.restart(slot)

    def up(self, slot: int) -> bool:
        """Whether the worker in ``slot`` has started (its first heartbeat); records its
        start-up time."""
        up = self.st(slot, S_UP)
        if up:
            self.summary.longest_startup = max(
                self.summary.longest_startup, up - self.started_at[slot]
            )
        return up > 0

    def restart(self, slot: int) -> None:
        self.summary.restarts += 1
        self.start(slot)

    def kill_one(self) -> None:
        rng = self.rng
        # Until the run has resumed min_takeovers entries, every kill waits for a
        # producer whose entry a resumable call of another worker reads.
        resuming = self.total("takeovers") < self.opts.min_takeovers
        if resuming or rng.random() < 0.4:
            # Wait (bounded) to catch a worker inside a producer, then kill it after a
            # random short delay so the kill lands at varied instructions.
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                busy = [s for s in range(self.n) if self.st(s, S_PRODUCERS) > 0]
                # Preferably one whose entry a resumable call of another worker reads:
                # that reader carries the entry on.
                shared = [s for s in busy if self.read_elsewhere(s)]
                if resuming:
                    busy = shared
                if busy:
                    slot = rng.choice(shared if shared and rng.random() < 0.7 else busy)
                    time.sleep(rng.choice((0, 0, rng.uniform(0, 0.05))))
                    self.kill(slot)
                    self.summary.kills_in_producer += 1
                    self.restart(slot)
                    return
                time.sleep(0.002)
            return
        # A worker still starting (spawn, imports) runs nothing of the cache yet: killing
        # it tests nothing, and on a busy machine, where start-up takes seconds, would
        # leave few workers running at all.
        up = [s for s in range(self.n) if self.up(s)]
        if not up:
            return
        slot = rng.choice(up)
        self.kill(slot)
        self.restart(slot)

    def read_elsewhere(self, slot: int) -> bool:
        """Whether a resumable call of another worker reads the key of the create
        ``slot`` started last."""
        key = self.st(slot, S_PKEY)
        reading = _PH["reading"]
        return any(
            s != slot
            and self.st(s, S_KEY) == key
            and int(self.st(s, S_PHASE)) == reading
            and self.st(s, S_RESUME)
            for s in range(self.n)
        )

    def stop_one(self) -> None:
        """SIGSTOP a worker that runs a producer (waiting up to 0.5 s for one; none:
        nothing), SIGCONT it later."""
        until = time.monotonic() + 0.5
        while True:
            busy = [
                s for s in range(self.n) if self.st(s, S_PRODUCERS) > 0 and s not in self.stopped
            ]
            if busy:
                break
            if time.monotonic() > until:
                return
            time.sleep(0.002)
        slot = self.rng.choice(busy)
        try:
            os.kill(self.procs[slot].pid, signal.SIGSTOP)
        except ProcessLookupError:
            return
        self.stopped[slot] = time.monotonic() + self.rng.uniform(0.05, 1.5)
        self.summary.stops += 1

    def continue_due(self, everyone: bool = False) -> None:
        now = time.monotonic()
        for slot, until in list(self.stopped.items()):
            if everyone or now >= until:
                del self.stopped[slot]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.procs[slot].pid, signal.SIGCONT)
                # Its silence while stopped is not a hang: restart the clock.
                self.state[slot * S_WORDS + S_HEARTBEAT] = time.monotonic()
                if self.st(slot, S_PRODUCERS) > 0:
                    self.state[slot * S_WORDS + S_PPROGRESS] = time.monotonic()

    def run(self) -> Summary:
        """Run for ``seconds`` from when the first worker of every slot is up (start-up
        takes seconds on a busy machine; at most ``startup``), and on until
        ``min_bypassed`` operations bypassed the cache, up to ``max_seconds``; then
        stop, check and sum up."""
        opts = self.opts
        t0 = time.monotonic()
        end = last = math.inf  # set once every slot's first worker is up
        been_up: set[int] = set()
        for slot in range(self.n):
            self.start(slot)
        next_kill = t0 + 1.0 + self.rng.expovariate(1 / max(self.kill_interval, 1e-3))
        next_stop = t0 + 1.0 + self.rng.expovariate(1 / max(self.stop_interval, 1e-3))
        stormer = None
        if self.storm_hz > 0:
            stormer = threading.Thread(target=self.storm, name="chaos-storm", daemon=True)
            stormer.start()
        try:
            while True:
                now = time.monotonic()
                been_up.update(s for s in range(self.n) if s not in been_up and self.up(s))
                if end == math.inf and (len(been_up) == self.n or now - t0 > self.startup):
                    end = now + opts.seconds
                    last = now + max(opts.seconds, opts.max_seconds or 0.0)
                enough = (
                    self.total("bypassed") >= opts.min_bypassed
                    and self.total("takeovers") >= opts.min_takeovers
                )
                if now >= end and (enough or now >= last):
                    break
                time.sleep(0.02)
                for slot in range(self.n):
                    self.check(slot)
                if self.kill_interval > 0 and time.monotonic() >= next_kill:
                    self.kill_one()
                    next_kill = time.monotonic() + self.rng.expovariate(1 / self.kill_interval)
                if self.stop_interval > 0 and time.monotonic() >= next_stop:
                    self.stop_one()
                    next_stop = time.monotonic() + self.rng.expovariate(1 / self.stop_interval)
                self.continue_due()
            self.continue_due(everyone=True)
            # The end: some workers are killed where they stand (preferably inside a
            # producer), so the final gc has wreckage to clean; the rest stop gracefully.
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                busy = [s for s in range(self.n) if self.st(s, S_PRODUCERS) > 0]
                if busy:
                    slot = self.rng.choice(busy)
                    self.kill(slot, counted=False)
                    self.final_killed.add(slot)
                    self.summary.final_kills += 1
                    break
                time.sleep(0.002)
            kill_all = self.rng.random() < 0.5  # then only the final gc cleans up
            for slot in range(self.n):
                if slot not in self.final_killed and (kill_all or self.rng.random() < 0.3):
                    self.kill(slot, counted=False)
                    self.final_killed.add(slot)
                    self.summary.final_kills += 1
            self.stop.value = 1
            self.finish_workers()
        finally:
            self._storm_done.set()
            if stormer is not None:
                stormer.join()
            for p in self.procs:
                if p is not None and p.is_alive():
                    p.kill()
                    p.join(10)
            for i, pidfd in enumerate(self._pidfds):
                if pidfd is not None:
                    os.close(pidfd)
                    self._pidfds[i] = None
        self.summary.seconds = time.monotonic() - t0
        self.collect()
        self.final_checks()
        return self.summary

    def finish_workers(self) -> None:
        """Wait for every worker to exit after the stop flag. A stale heartbeat (main
        loop or producer) or no exit within 2 x hang or the start-up bound, whichever is
        longer (from the flag, or from the worker's start-up if later), is a hang, and so
        is no start-up within the startup bound; an exit slower than SLOW_EXIT gets the
        worker's state and threads recorded as a note."""
        t0 = time.monotonic()
        left = set(range(self.n)) - self.final_killed
        noted: set[int] = set()
        slowest = 0.0
        while left:
            time.sleep(0.05)
            now = time.monotonic()
            for slot in sorted(left):
                p = self.procs[slot]
                if not p.is_alive():
                    p.join(1)
                    left.discard(slot)
                    slowest = max(slowest, now - t0)
                    if p.exitcode != 0:
                        self.summary.violations.append(
                            f"slot {slot} pid {p.pid} exited with {p.exitcode} after stop"
                            f" in state: {self.describe(slot)}\n{_indent(self.stderr_of(slot))}"
                        )
                    continue
                if not self.up(slot):  # it exits once started
                    if now - self.started_at[slot] > self.startup:
                        self.hung(slot, f"did not start within {self.startup:g}s")
                        left.discard(slot)
                    continue
                since = max(t0, self.st(slot, S_UP))  # the stop flag was seen from here
                main_stale = (
                    now - self.st(slot, S_HEARTBEAT) > self.hang
                    and int(self.st(slot, S_PHASE)) != _PH["done"]
                )
                producer_stale = (
                    self.st(slot, S_PRODUCERS) > 0 and now - self.st(slot, S_PPROGRESS) > self.hang
                )
                # Exiting (joining threads, finalizing) takes seconds on a busy machine, as
                # starting does: the whole exit has the start-up bound when that is longer.
                exit_bound = max(2 * self.hang, self.startup)
                if main_stale or producer_stale or now - since > exit_bound:
                    self.hung(slot, "did not exit after stop")
                    left.discard(slot)
                elif now - since > SLOW_EXIT and slot not in noted:
                    noted.add(slot)
                    self.summary.notes.append(
                        f"slow exit (> {SLOW_EXIT} s): {self.describe(slot)}\n"
                        + _indent(self.stack_dump(slot))
                    )
        self.summary.info["slowest_exit_s"] = round(slowest, 1)

    def collect(self) -> None:
        k = len(COUNTERS)
        for i, name in enumerate(COUNTERS):
            values = [int(self.counters[s * k + i]) for s in range(self.n)]
            self.summary.counters[name] = max(values) if name in MAXIMA else sum(values)
        for name in sorted(os.listdir(self.logdir)):
            if not name.endswith(".jsonl"):
                continue
            with open(os.path.join(self.logdir, name)) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by kill -9
                    tb = rec.pop("tb", "")
                    if rec.get("what") == "a resumable reader was cut off":
                        tb = self.log_lines(key_hash(rec["key"])[:16])
                    text = json.dumps(rec) + ("\n" + _indent(tb) if tb else "")
                    if "note" in rec:
                        self.summary.notes.append(text)
                    else:
                        self.summary.violations.append(text)

    def log_lines(self, word: str) -> str:
        """The workers' library log lines that hold ``word`` (a key hash's prefix), in
        time order."""
        lines = []
        for name in os.listdir(self.logdir):
            if name.endswith(".log"):
                with open(os.path.join(self.logdir, name), errors="replace") as f:
                    lines += [line.rstrip() for line in f if word in line]
        return "\n".join(sorted(lines)[-MAX_SHOWN:]) or "(no log line of the key)"

    def final_checks(self) -> None:
        v = self.summary.violations
        info = self.summary.info
        if not os.path.isdir(self.dir):
            info["dir"] = "never created"
            return
        prefix = ipc.prefix_for(self.dir)
        # Before gc: killed producers leave unfinished records and IPC objects, but a
        # finished record must already be sound (expired or not).
        info["ipc_before_gc"] = len(ipc.list_objects(prefix))
        info["records_before_gc"], info["unfinished_before_gc"] = self.check_records(
            "before gc", unfinished_ok=True
        )
        # No entry is in flight any more: a max_age this short lets the sweep take every
        # data file (a killed producer's), which must leave none.
        report = streamcache.StreamCache(self.dir, cleanup_interval=0, max_age=0.001).gc()
        if not report.ran:
            v.append("the final gc pass did not run (cleanup lock held by a dead process?)")
        info["gc_discarded"] = report.discarded
        info["gc_expired"] = report.expired
        info["gc_ipc_removed"] = report.ipc_removed
        left = ipc.list_objects(prefix)
        if left:
            # A producer killed while it made its channel leaves bells without a
            # segment, or a segment whose header it never wrote. A sweep leaves such
            # objects alone for ORPHAN_GRACE (they may be being made right now); every
            # worker has exited, so once they are that old the next pass must take them.
            youngest = max(o.mtime for o in left)
            time.sleep(max(youngest + ORPHAN_GRACE + 0.5 - time.time(), 0.0))
            again = streamcache.StreamCache(self.dir, cleanup_interval=0, max_age=0.001).gc()
            info["gc_ipc_removed_after_grace"] = again.ipc_removed
            left = ipc.list_objects(prefix)
        if left:
            v.append(f"left in /dev/shm after gc: {sorted(o.name for o in left)}")
            for obj in left:  # reported; not left for the machine's later runs
                if obj.is_semaphore:
                    unlink_semaphore(obj.name)
                else:
                    unlink_segment(obj.name)
        info["records_after_gc"], _ = self.check_records("after gc", unfinished_ok=False)
        root = os.path.join(self.dir, LAYOUT)
        data_files = sum(len(files) for _, _, files in os.walk(os.path.join(root, "data")))
        info["left_in_dev_shm"] = len(left)
        info["left_data_files"] = data_files
        if data_files:
            v.append(f"{data_files} data files left after gc")
        sizes = [st.st_size for _, st in Filestore(root).entries()]
        info["finished_entries"] = len(sizes)
        info["finished_bytes"] = sum(sizes)
        if self.max_bytes is not None:
            info["budget"] = self.max_bytes
            biggest = max((content_size(k) for k in self.keys), default=0)
            if sum(sizes) > self.max_bytes + biggest + 16:
                self.summary.notes.append(
                    f"finished entries hold {sum(sizes)} bytes, over the budget "
                    f"{self.max_bytes} + the largest entry {biggest}"
                )

    def check_records(self, stage: str, unfinished_ok: bool) -> tuple[int, int]:
        """Check every record and finished entry; returns (entries, unfinished ones)."""
        v = self.summary.violations
        root = os.path.join(self.dir, LAYOUT)
        index = Index(root)
        files = Filestore(root)
        by_hash = {key_hash(k): k for k in self.keys}
        records = unfinished = 0
        for h in list(index.keys()):
            records += 1
            unfinished += 1
            rec = index.read(h)
            if rec is None:
                if not unfinished_ok:
                    v.append(f"{stage}: garbage record {h}")
                continue
            key = by_hash.get(h)
            if key is None:
                v.append(f"{stage}: record of an unknown key: {h}")
            elif not unfinished_ok:
                v.append(f"{stage}: unfinished record of {key}: {rec}")
            elif ipc.is_alive(rec.pid, rec.start):
                v.append(f"{stage}: record of {key} names a live producer: {rec}")
        for h, _st in list(files.entries()):
            records += 1
            key = by_hash.get(h)
            if key is None:
                v.append(f"{stage}: finished entry of an unknown key: {h}")
                continue
            fin = files.open_entry(h)
            if fin is None:
                v.append(f"{stage}: finished entry of {key} is not intact")
                continue
            try:
                data = os.pread(fin.fd, fin.size, 0)
            finally:
                os.close(fin.fd)
            if fin.size != content_size(key):
                v.append(
                    f"{stage}: entry of {key} has {fin.size} bytes, content has {content_size(key)}"
                )
            elif data != content(key):
                at = first_difference(data, content(key))
                v.append(f"{stage}: {key}: entry differs from content(key) at byte {at}")
        return records, unfinished


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.rstrip().splitlines())


def run(dir: str, opts: Options, logdir: str | None = None) -> Summary:
    """Run the chaos loop on ``dir`` and return its summary (violations in
    ``.violations``); its logs go to ``logdir`` (default: a temporary dir, removed)."""
    own_logdir = logdir is None
    logdir = logdir or tempfile.mkdtemp(prefix="chaos-logs-")
    os.makedirs(logdir, exist_ok=True)
    try:
        return Driver(dir, logdir, opts).run()
    finally:
        if own_logdir:
            shutil.rmtree(logdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dir", default=None, help="cache dir (default: a fresh temporary one)")
    ap.add_argument(
        "--kill-interval", type=float, default=0.4, help="mean seconds between kills (0: no kills)"
    )
    ap.add_argument(
        "--hang",
        type=float,
        default=HANG,
        help="seconds without progress (after start-up) that count as a hang",
    )
    ap.add_argument(
        "--signal-storm",
        type=float,
        default=0.0,
        metavar="HZ",
        help="send a handled SIGUSR1 to every worker HZ times a second (0: off)",
    )
    ap.add_argument("--keys", type=int, default=0, help="N Zipf-skewed keys (0: the 8 fixed keys)")
    ap.add_argument("--max-size", type=int, default=64 * MiB, help="largest key size, bytes")
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of key popularity")
    ap.add_argument("--max-bytes", type=int, default=None, help="every cache's disk budget")
    ap.add_argument(
        "--stop-interval",
        type=float,
        default=0.0,
        help="mean seconds between SIGSTOPs of a worker running a producer (0: none)",
    )
    ap.add_argument(
        "--astream-share",
        type=float,
        default=None,
        metavar="FRACTION",
        help="the share of operations that are astream (default: the mix, about 6%%)",
    )
    ap.add_argument(
        "--resume-share",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="on every other key, the share of calls that pass resume=True (0: none)",
    )
    ap.add_argument(
        "--startup",
        type=float,
        default=STARTUP,
        help="seconds a worker may take to start before that counts as a hang",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary dir and logs (kept anyway on a violation)",
    )
    opts = ap.parse_args(argv)
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 31)
    work = None
    if opts.dir is None:
        work = tempfile.mkdtemp(prefix="chaos-")
        cache_dir, logdir = os.path.join(work, "cache"), os.path.join(work, "logs")
    else:
        cache_dir, logdir = opts.dir, tempfile.mkdtemp(prefix="chaos-logs-")
    try:
        options = Options(
            seconds=opts.seconds,
            workers=opts.workers,
            seed=seed,
            kill_interval=opts.kill_interval,
            hang=opts.hang,
            startup=opts.startup,
            signal_storm=opts.signal_storm,
            keys=opts.keys,
            max_size=opts.max_size,
            zipf=opts.zipf,
            max_bytes=opts.max_bytes,
            stop_interval=opts.stop_interval,
            astream_share=opts.astream_share,
            resume_share=opts.resume_share,
        )
        summary = run(cache_dir, options, logdir)
    except BaseException:
        print(f"kept: {work or logdir}", file=sys.stderr)
        raise
    if opts.keep or summary.violations:
        print(f"kept: {work or logdir}", file=sys.stderr)
    else:
        shutil.rmtree(work or logdir, ignore_errors=True)
    print(summary.format())
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
