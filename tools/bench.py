"""Benchmarks for streamcache: every figure a ratio to a baseline measured in the same run.

Run from a checkout (no install needed; the repository root goes first on sys.path):

    python tools/bench.py [--quick] [--json] [--only NAME[,NAME...]] [--reps N]
    python tools/bench.py --git [tools/bench_git.py's options]

Rows (docs/design.md, "How performance is measured"; data: one 1 MiB buffer of random
bytes, written repeatedly):

    stream       producer process + 1 reader process on one cold entry, vs one process
                 writing the same bytes to a plain file (first write to close); second
                 row: vs that writer plus a process reading the file as it grows
                 (docs/design.md's baseline)
    fanout       producer + N reader processes attached before the first byte, vs one
                 process writing a file then N processes reading it at once
    fanout-fd    the same N readers each copying into a pipe (drained by cat): through
                 its file object (sendfile) vs an object without fileno (pread + write);
                 the readers' CPU seconds per GiB beside the times
    wakes        producer at 200 MiB/s (1 MiB and 64 KiB writes) + N reader processes
                 that keep up: futex wake calls, sleepers woken and reader sleeps per GiB
                 (ipc.futex.counts of every process; reference figures, no baseline)
    stream-api   the path web apps take: the creator's stream() (create in a producer
                 thread, the creator reading its own copy) + 1, then N reader processes on
                 stream(); vs the stream and fan-out baselines
    hit          fetch of a finished entry into a Python sink, vs reading a plain copy
    socket       fetch of a finished entry into an AF_UNIX socket (sendfile), vs a
                 read + sendall loop, and vs an os.sendfile loop (the kernel's limit)
    small-hit    fetch of a finished 4 KiB entry, vs diskcache's get (latency)
    small-hit-syscalls
                 system calls of one such fetch vs one diskcache get (strace -f -c of
                 a child doing 2N hits minus one doing N; skipped without strace)
    small-miss   fetch that creates a new 4 KiB entry, vs diskcache's set (latency)
    wakeup       producer write -> waiting reader in another process, vs an os.pipe
    index        hit latency with 100,000 entries vs 100 entries, next to the kernel's own
                 ratio (open + pread of a random entry's file in the same caches)
    storm        N processes fetch one cold key at once (correctness; time for reference)
    startup      CPU time of a fresh ``python -c "import streamcache"`` vs ``python -c
                 pass``, and wall time of ``streamcache run -- cat F`` on a hit vs ``cat
                 F`` (64 KiB); both as the difference of medians and as a ratio
    git-hook     wall time of ``git clone --no-local`` of a one-commit repository whose
                 upload-pack has ``streamcache git-pack-objects-hook`` (a hit) vs no hook
    git-hook-cpu user+sys of one ``streamcache git-pack-objects-hook`` hit on a 128 MiB
                 entry (a stand-in ``git`` made it), its stdout a pipe drained by cat, vs
                 ``cat F`` of the same bytes into such a pipe (reference figures)
    memory       peak RSS growth of a reader process streaming an entry, two sizes
                 (VmHWM reset through /proc/self/clear_refs: a spawned child's ru_maxrss
                 starts at its parent's peak; ru_maxrss growth is kept in --json)

--quick uses smaller sizes and fewer repetitions (same rows, same code paths) and runs
in under a minute; the full run takes about five minutes on 2 cores. Progress goes to
stderr, the table (or with --json one JSON object with every raw sample, machine info,
sizes and the library's git HEAD at start and end) to stdout. Every cache and file lives
in a fresh directory under tempfile.gettempdir() (TMPDIR moves them), removed after.
Use only the public API: StreamCache(..., cleanup_interval=0), fetch, stream, gc, stop,
wait_producers; leak checks with ipc.prefix_for and ipc.naming.list_objects after gc.

How to read the ratios: each is computed from medians of repetitions, ours and baseline
interleaved (A B A B ...) so machine noise hits both alike. The process that writes a
large timed file first writes and deletes a scratch file of the same size (see
precondition()): on a VM that returns freed memory to its host, the first large write
after an idle second can be 10x slower, whichever side it falls on.

- throughput rows: ratio = baseline time / our time, higher is better (target ">= x").
- latency rows: ratio = our latency / baseline latency, lower is better (target "<= x").
- wakeup: ratios of our median and p99 to the os.pipe's, measured in the same run (targets
  <= 1.5x and <= 3x).
- memory: the target is absolute (growth < 16 MiB, flat in the entry's size).
- storm: the target is the correctness outcome; its time ratio is for reference.

Exit status: 0 when every benchmark ran, whether or not it met its target; 1 when a
benchmark raised or a correctness check failed (wrong byte count, create ran twice,
leaked IPC objects, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import resource
import shutil
import socket
import stat
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not sys.path or sys.path[0] != ROOT:
    sys.path.insert(0, ROOT)

from harness import (  # noqa: E402
    READY_WAIT,
    WAIT,
    BenchError,
    Children,
    GiB,
    KiB,
    MiB,
    Msg,
    fmt_size,
    log,
    precondition,
    reporting,
    scratch,
    write_all,
)

import ipc  # noqa: E402
from ipc import futex  # noqa: E402
from ipc.naming import list_objects  # noqa: E402
from streamcache import StreamCache  # noqa: E402
from streamcache.cache import LAYOUT, key_hash  # noqa: E402

KEY = "bench-key"
WAKE_KEY = "bench-wake"


# -- sinks -------------------------------------------------------------------------------


class NullSink:
    """Takes every byte and keeps nothing."""

    def write(self, b: bytes) -> int:
        return len(b)


class FdWriter:
    """Writes to a descriptor it does not offer (no ``fileno``): fetch copies into it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.n = 0

    def write(self, b: bytes) -> int:
        view = memoryview(b)
        while len(view):
            view = view[os.write(self.fd, view) :]
        self.n += len(b)
        return len(b)


def cpu_seconds() -> float:
    """User and system CPU seconds of this process (all its threads) so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CountingSink:
    """Counts the bytes written to it (a Python-level write per chunk)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)


class HashSink:
    """sha256 of the bytes written to it."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b: bytes) -> int:
        self.h.update(b)
        self.n += len(b)
        return len(b)


def _refuse(w: Any) -> None:
    raise RuntimeError("this reader must find the entry, not create it")


def write_file(path: str, data: bytes, n: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for _ in range(n):
            write_all(fd, data)
    finally:
        os.close(fd)


def maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * KiB


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux); False if unable.

    A spawn child's ru_maxrss starts at its parent's peak (exec carries the high-water
    mark of the vforked parent's memory into the child), so growth in a child is only
    seen once it passes the bench process's peak; VmHWM after this reset is the child's
    own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return peak_rss_bytes() is not None


def peak_rss_bytes() -> int | None:
    """VmHWM from /proc/self/status, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_probe() -> tuple[Callable[[], int], str]:
    """Reset the peak and return (a function reading it, the method's name)."""
    if reset_peak_rss():
        return lambda: peak_rss_bytes() or 0, "VmHWM after clear_refs"
    return maxrss_bytes, "ru_maxrss"


def futex_counts() -> dict[str, int]:
    """This process's futex calls so far (wake calls, sleepers woken, sleeps begun)."""
    c = futex.counts
    return {"wakes": c.wakes, "woken": c.woken, "waits": c.waits}


def expected_digest(data: bytes, n: int) -> str:
    h = hashlib.sha256()
    for _ in range(n):
        h.update(data)
    return h.hexdigest()


def data_file_bytes(cache_dir: str) -> tuple[int, int]:
    """(bytes, files) of regular files under ``cache_dir`` not named *.json / *.lock."""
    total = files = 0
    for root, _dirs, names in os.walk(cache_dir):
        for name in names:
            if name.endswith((".json", ".lock")):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(root, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
                    files += 1
    return total, files


# -- child processes (module level: spawn pickles them by reference) ---------------------


def _producer(
    cache_dir: str,
    key: str,
    data: bytes,
    n: int,
    started: Event,
    attached: Event | None,
    barrier: Barrier | None,
    out: Queue[Msg],
    via_stream: bool = False,
    piece: int = 0,
    rate: float = 0.0,
) -> None:
    """Fetch ``key`` into a null sink, creating it: create announces ``started``, waits for
    the reader(s) (``attached`` or ``barrier``), then writes ``n`` times ``data``
    (``piece``: in writes of that many bytes; ``rate``: at most that many bytes/s, on an
    absolute schedule).

    ``via_stream``: the path web apps take instead: ``stream()`` runs create in a producer
    thread, and this process reads its own copy (``copy_to`` a counting sink, the chunk
    loop a WSGI iterator runs) in its main thread."""
    with reporting(out, "producer"):
        cache = StreamCache(cache_dir, cleanup_interval=0)
        first: list[float] = []
        try:

            def create(w: Any) -> None:
                started.set()
                if attached is not None and not attached.wait(READY_WAIT):
                    raise RuntimeError("the reader never attached")
                precondition(os.path.dirname(cache_dir), n * len(data), data)
                if barrier is not None:
                    barrier.wait(READY_WAIT)
                t0 = time.perf_counter()
                first.append(t0)
                if not piece and not rate:
                    for _ in range(n):
                        w.write(data)
                    return
                view = memoryview(data)
                step = piece or len(data)
                done = 0
                for _ in range(n):
                    for at in range(0, len(data), step):
                        if rate:
                            wait = t0 + done / rate - time.perf_counter()
                            if wait > 0:
                                time.sleep(wait)
                        w.write(view[at : at + step])
                        done += len(view[at : at + step])

            if via_stream:
                with cache.stream(key, create, timeout=WAIT) as s:
                    written, created = s.copy_to(CountingSink()), s.created
            else:
                # No timeout: the creating fetch runs create itself (the default path).
                written, created = cache.fetch(key, NullSink(), create)
            end = time.perf_counter()
            if not cache.wait_producers(WAIT):
                raise RuntimeError("the producer thread did not finish")
        finally:
            cache.stop()
        payload = {
            "first": first[0] if first else None,
            "end": end,
            "written": written,
            "created": created,
            "futex": futex_counts(),
        }
        out.put(("done", "producer", payload))


def _attach_reader(
    cache_dir: str,
    key: str,
    started: Event,
    attached: Event | None,
    barrier: Barrier | None,
    out: Queue[Msg],
    role: str,
    into: str = "sink",
) -> None:
    """Once the producer has started: attach with ``stream`` (a create that raises), signal
    ``attached`` / wait on ``barrier``, then copy everything to a counting sink, or with
    ``into`` "pipe" or "pipe-copy" to a pipe a ``cat`` process drains (its write end
    as a file object, which takes sendfile, or behind an object without ``fileno``);
    the reader's CPU seconds for the copy go in its report."""
    with reporting(out, role):
        cache = StreamCache(cache_dir, cleanup_interval=0)
        drain = None
        try:
            sink: Any = CountingSink()
            if into != "sink":
                drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
                assert drain.stdin is not None
                sink = drain.stdin if into == "pipe" else FdWriter(drain.stdin.fileno())
            out.put(("ready", role, {}))
            if not started.wait(READY_WAIT):
                raise RuntimeError("the producer never started")
            maxrss0 = maxrss_bytes()
            peak, method = rss_probe()
            rss0 = peak()
            with cache.stream(key, _refuse, timeout=WAIT) as s:
                if attached is not None:
                    attached.set()
                if barrier is not None:
                    barrier.wait(READY_WAIT)
                cpu0 = cpu_seconds()
                n = s.copy_to(sink)
                cpu = cpu_seconds() - cpu0
                created = s.created
            end = time.perf_counter()
            rss1 = peak()
            maxrss1 = maxrss_bytes()
        finally:
            cache.stop()
            if drain is not None:
                assert drain.stdin is not None
                drain.stdin.close()
                drain.wait(WAIT)
        got = sink.n if isinstance(sink, (CountingSink, FdWriter)) else n
        payload: dict[str, Any] = {"end": end, "n": n, "sink": got, "created": created}
        payload["cpu"] = cpu
        payload["futex"] = futex_counts()
        payload |= {"rss0": rss0, "rss1": rss1, "method": method}
        payload |= {"maxrss0": maxrss0, "maxrss1": maxrss1}
        out.put(("done", role, payload))


def _file_writer(
    path: str,
    data: bytes,
    n: int,
    begin: Event | None,
    opened: Event | None,
    go: Event | None,
    out: Queue[Msg],
) -> None:
    """Write ``n`` times ``data`` to a new plain file with os.write (timed: first write to
    close), after ``begin``; set ``opened`` once the file exists and ``go`` once closed."""
    with reporting(out, "writer"):
        out.put(("ready", "writer", {}))
        if begin is not None and not begin.wait(READY_WAIT):
            raise RuntimeError("never told to begin")
        precondition(os.path.dirname(path), n * len(data), data)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        if opened is not None:
            opened.set()
        start = time.perf_counter()
        try:
            for _ in range(n):
                write_all(fd, data)
        finally:
            os.close(fd)
        end = time.perf_counter()
        if go is not None:
            go.set()
        out.put(("done", "writer", {"start": start, "end": end}))


def _file_reader(path: str, go: Event, digest: bool, out: Queue[Msg], role: str) -> None:
    """After ``go``: read the plain file in 1 MiB os.read chunks into a counting (or hashing)
    sink."""
    with reporting(out, role):
        sink: CountingSink | HashSink = HashSink() if digest else CountingSink()
        out.put(("ready", role, {}))
        if not go.wait(READY_WAIT):
            raise RuntimeError("never told to go")
        maxrss0 = maxrss_bytes()
        peak, method = rss_probe()
        rss0 = peak()
        fd = os.open(path, os.O_RDONLY)
        try:
            while chunk := os.read(fd, MiB):
                sink.write(chunk)
        finally:
            os.close(fd)
        end = time.perf_counter()
        rss1 = peak()
        maxrss1 = maxrss_bytes()
        hexdigest = sink.h.hexdigest() if isinstance(sink, HashSink) else ""
        payload = {"end": end, "n": sink.n, "digest": hexdigest, "rss0": rss0, "rss1": rss1}
        payload |= {"method": method, "maxrss0": maxrss0, "maxrss1": maxrss1}
        out.put(("done", role, payload))


def _follow_reader(path: str, size: int, opened: Event, out: Queue[Msg], role: str) -> None:
    """Read a file while another process writes it (no cache: poll for new bytes, 50 us
    naps when caught up) until ``size`` bytes, into a counting sink."""
    with reporting(out, role):
        sink = CountingSink()
        out.put(("ready", role, {}))
        if not opened.wait(READY_WAIT):
            raise RuntimeError("the writer never opened the file")
        deadline = time.monotonic() + WAIT
        fd = os.open(path, os.O_RDONLY)
        try:
            while sink.n < size:
                chunk = os.read(fd, MiB)
                if chunk:
                    sink.write(chunk)
                elif time.monotonic() > deadline:
                    raise RuntimeError(f"only {sink.n} of {size} bytes arrived")
                else:
                    time.sleep(50e-6)
        finally:
            os.close(fd)
        out.put(("done", role, {"end": time.perf_counter(), "n": sink.n}))


def _storm_worker(
    cache_dir: str, key: str, data: bytes, n: int, barrier: Barrier, out: Queue[Msg], role: str
) -> None:
    """Wait on ``barrier``, then fetch the cold ``key`` into a sha256 sink."""
    with reporting(out, role):
        cache = StreamCache(cache_dir, cleanup_interval=0)
        try:

            def create(w: Any) -> None:
                for _ in range(n):
                    w.write(data)

            sink = HashSink()
            out.put(("ready", role, {}))
            barrier.wait(READY_WAIT)
            start = time.perf_counter()
            written, created = cache.fetch(key, sink, create, timeout=WAIT)
            end = time.perf_counter()
            if not cache.wait_producers(WAIT):
                raise RuntimeError("the producer thread did not finish")
        finally:
            cache.stop()
        payload: dict[str, Any] = {"start": start, "end": end, "written": written}
        payload |= {"created": created, "digest": sink.h.hexdigest()}
        out.put(("done", role, payload))


def _drain(sock: socket.socket, cmds: Queue[int | None], out: Queue[Msg]) -> None:
    """For each byte count from ``cmds``: recv_into a 1 MiB buffer until that many bytes
    arrived, then report the finish time. None ends."""
    with reporting(out, "drain"):
        buf = bytearray(MiB)
        view = memoryview(buf)
        out.put(("ready", "drain", {}))
        while True:
            want = cmds.get(timeout=WAIT)
            if want is None:
                break
            got = 0
            while got < want:
                k = sock.recv_into(view, min(MiB, want - got))
                if not k:
                    raise RuntimeError(f"socket closed after {got} of {want} bytes")
                got += k
            out.put(("done", "drain", {"end": time.perf_counter(), "got": got}))
        sock.close()


def _wake_producer(
    cache_dir: str, n: int, via_fetch: bool, attached: Event, out: Queue[Msg]
) -> None:
    """As tools/measure.py: create an entry that gets an 8-byte monotonic timestamp every
    ~2 ms (window 0). ``via_fetch``: the creating fetch hands its writes straight to its
    dst (the default path); else ``stream()``: create runs in a producer thread and this
    process drains its own copy from the file in its main thread."""
    with reporting(out, "wake-producer"):
        cache = StreamCache(cache_dir, window=0, cleanup_interval=0)
        try:

            def create(w: Any) -> None:
                if via_fetch:
                    out.put(("ready", "wake-producer", {}))
                if not attached.wait(READY_WAIT):
                    raise RuntimeError("the reader never attached")
                for _ in range(n):
                    time.sleep(0.002)  # the reader in the other process goes back to sleep
                    w.write(struct.pack("<q", time.clock_gettime_ns(time.CLOCK_MONOTONIC)))

            if via_fetch:
                sink = CountingSink()
                total, created = cache.fetch(WAKE_KEY, sink, create)
            else:
                total = 0
                with cache.stream(WAKE_KEY, create, timeout=WAIT) as s:
                    out.put(("ready", "wake-producer", {}))
                    while chunk := s.read(MiB):
                        total += len(chunk)
                    created = s.created
            if not cache.wait_producers(WAIT):
                raise RuntimeError("the producer thread did not finish")
        finally:
            cache.stop()
        out.put(("done", "wake-producer", {"bytes": total, "created": created}))


def _pipe_stamper(conn: Connection, n: int, go: Event, out: Queue[Msg]) -> None:
    """The baseline of wakeup: the same timestamps through an os.pipe (``conn``'s fd)."""
    with reporting(out, "pipe-stamper"):
        fd = conn.fileno()
        out.put(("ready", "pipe-stamper", {}))
        if not go.wait(READY_WAIT):
            raise RuntimeError("never told to go")
        for _ in range(n):
            time.sleep(0.002)
            write_all(fd, struct.pack("<q", time.clock_gettime_ns(time.CLOCK_MONOTONIC)))
        conn.close()
        out.put(("done", "pipe-stamper", {}))


def _fill_worker(
    cache_dir: str, first: int, stop: int, value: bytes, out: Queue[Msg], role: str
) -> None:
    """Create the finished entries ``idx-<first>`` .. ``idx-<stop - 1>``."""
    with reporting(out, role):
        cache = StreamCache(cache_dir, cleanup_interval=0)
        try:
            t0 = time.perf_counter()
            fill_entries(cache, first, stop, value, out, role)
            if not cache.wait_producers(WAIT):
                raise RuntimeError("the producer threads did not finish")
        finally:
            cache.stop()
        out.put(("done", role, {"seconds": time.perf_counter() - t0}))


def fill_entries(
    cache: StreamCache,
    first: int,
    stop: int,
    value: bytes,
    out: Queue[Msg] | None = None,
    role: str = "",
) -> None:
    def create(w: Any) -> None:
        w.write(value)

    sink = NullSink()
    step = max(1, (stop - first) // 100)
    for i in range(first, stop):
        written, created = cache.fetch(f"idx-{i}", sink, create, timeout=WAIT)
        if not created or written != len(value):
            raise RuntimeError(f"fill idx-{i}: created={created} written={written}")
        if out is not None and (i - first + 1) % step == 0:
            out.put(("progress", role, {"count": step}))


# -- bench-process helpers ---------------------------------------------------------------


def leak_check(cache: StreamCache, cache_dir: str) -> int:
    """Finish this process's producers, run one gc, then require that no IPC object of
    ``cache_dir`` is left. Returns how many IPC objects gc itself removed."""
    if not cache.wait_producers(WAIT):
        raise BenchError("producer threads did not finish")
    report = cache.gc()
    if not report.ran:
        raise BenchError(f"gc did not run on {cache_dir} (another cleanup in progress?)")
    left = list_objects(ipc.prefix_for(cache_dir))
    if left:
        raise BenchError(f"leaked IPC objects of {cache_dir}: {[o.name for o in left]}")
    return report.ipc_removed


def leak_check_dir(cache_dir: str) -> int:
    cache = StreamCache(cache_dir, cleanup_interval=0)
    try:
        return leak_check(cache, cache_dir)
    finally:
        cache.stop()


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise BenchError(f"check failed: {what}")


# -- formatting and rows -----------------------------------------------------------------


def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_rate(s: float, nbytes: int) -> str:
    return f"{fmt_time(s)} ({nbytes / MiB / s:.0f} MiB/s)"


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class Row:
    name: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    kind: str  # throughput | latency | absolute | memory | correctness | failed | skipped
    unit: str = "s"
    ours_median: float | None = None
    baseline_median: float | None = None
    ours_samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def throughput_row(
    name: str, ours: list[float], base: list[float], nbytes: int, target: float, note: str = ""
) -> Row:
    mo, mb = statistics.median(ours), statistics.median(base)
    ratio = mb / mo
    return Row(
        name,
        fmt_rate(mo, nbytes),
        fmt_rate(mb, nbytes),
        ratio,
        f">= {target} (base/ours)",
        ratio >= target,
        "throughput",
        "s",
        mo,
        mb,
        ours,
        base,
        note,
        {"bytes": nbytes},
    )


def latency_row(
    name: str,
    ours: list[float],
    base: list[float],
    target: float,
    note: str = "",
    paired: bool = False,
) -> Row:
    """``paired``: sample i of ours ran right next to sample i of the baseline (reps or
    batches, not single calls), so their ratios' spread means something."""
    mo, mb = statistics.median(ours), statistics.median(base)
    ratio = mo / mb
    return Row(
        name,
        fmt_time(mo),
        fmt_time(mb),
        ratio,
        f"<= {target}x (ours/base)",
        ratio <= target,
        "latency",
        "s",
        mo,
        mb,
        ours,
        base,
        note,
        {"paired": paired},
    )


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    quick: bool
    reps: int
    stream_bytes: int
    fanout_bytes: int
    fanout_readers: int
    stream_api_bytes: int
    hit_bytes: int
    small_bytes: int
    small_hit_calls: int
    small_batch: int
    small_miss_calls: int
    wake_samples: int
    index_sizes: tuple[int, ...]  # the large index, grown to each size in turn
    index_small: int
    index_entry: int
    index_samples: int
    index_fill_procs: int
    storm_procs: int
    storm_bytes: int
    memory_sizes: tuple[int, int]
    startup_rounds: int


def make_config(quick: bool, reps: int | None) -> Config:
    fill_procs = max(1, min(2, os.cpu_count() or 1))
    if quick:
        return Config(
            quick=True,
            reps=reps or 3,
            stream_bytes=128 * MiB,
            fanout_bytes=32 * MiB,
            fanout_readers=4,
            stream_api_bytes=64 * MiB,
            hit_bytes=128 * MiB,
            small_bytes=4 * KiB,
            small_hit_calls=4_000,
            small_batch=100,
            small_miss_calls=300,
            wake_samples=50,
            index_sizes=(2_000,),
            index_small=100,
            index_entry=KiB,
            index_samples=1_000,
            index_fill_procs=fill_procs,
            storm_procs=8,
            storm_bytes=16 * MiB,
            memory_sizes=(128 * MiB, 32 * MiB),
            startup_rounds=11,
        )
    return Config(
        quick=False,
        reps=reps or 5,
        stream_bytes=GiB,
        fanout_bytes=256 * MiB,
        fanout_readers=16,
        stream_api_bytes=GiB,
        hit_bytes=GiB,
        small_bytes=4 * KiB,
        small_hit_calls=20_000,
        small_batch=100,
        small_miss_calls=3_000,
        wake_samples=300,
        index_sizes=(20_000, 100_000),
        index_small=100,
        index_entry=KiB,
        index_samples=5_000,
        index_fill_procs=fill_procs,
        storm_procs=64,
        storm_bytes=64 * MiB,
        memory_sizes=(GiB, 256 * MiB),
        startup_rounds=31,
    )


# -- 1 stream, 2 fan-out, 10 memory: a producer process and reader processes ------------


def producer_and_readers(
    data: bytes,
    size: int,
    cache_dir: str,
    readers: int,
    use_barrier: bool,
    via_stream: bool = False,
    piece: int = 0,
    rate: float = 0.0,
    producer_out: list[dict[str, Any]] | None = None,
    into: str = "sink",
) -> tuple[float, list[dict[str, Any]]]:
    """One producer process creates ``key`` while ``readers`` reader processes attach
    (one: via an attached event; several: all attach, then a barrier with the producer's
    create). Returns (seconds from the first write to the last process done, readers);
    the producer's report is appended to ``producer_out``. ``piece``, ``rate``: as for
    the producer."""
    n = size // MiB
    with Children() as ch:
        started = ch.ctx.Event()
        attached = None if use_barrier else ch.ctx.Event()
        barrier = ch.ctx.Barrier(readers + 1) if use_barrier else None
        for i in range(readers):
            ch.start(
                _attach_reader, cache_dir, KEY, started, attached, barrier, ch.out, f"r{i}", into
            )
        ch.collect("ready", readers, READY_WAIT, "readers to start")
        ch.start(
            _producer,
            cache_dir,
            KEY,
            data,
            n,
            started,
            attached,
            barrier,
            ch.out,
            via_stream,
            piece,
            rate,
        )
        done = ch.collect("done", readers + 1, WAIT, "the transfer")
    prod = [d for d in done if d["role"] == "producer"]
    if producer_out is not None:
        producer_out.extend(prod)
    rdrs = [d for d in done if d["role"] != "producer"]
    expect(len(prod) == 1 and prod[0]["first"] is not None, "the producer ran create")
    expect(prod[0]["created"] is True, "the producer's fetch reports created")
    expect(prod[0]["written"] == size, f"producer wrote {prod[0]['written']} of {size}")
    for r in rdrs:
        expect(r["created"] is False, f"reader {r['role']} did not create")
        expect(r["n"] == size == r["sink"], f"reader {r['role']} got {r['n']} of {size}")
    end = max(d["end"] for d in done)
    return end - prod[0]["first"], rdrs


def baseline_write(data: bytes, size: int) -> float:
    """Seconds for one process to os.write ``size`` bytes to a new plain file."""
    with scratch("stream-base") as d:
        path = os.path.join(d, "plain")
        with Children() as ch:
            ch.start(_file_writer, path, data, size // MiB, None, None, None, ch.out)
            ch.collect("ready", 1, READY_WAIT, "the writer to start")
            (w,) = ch.collect("done", 1, WAIT, "the writer")
        expect(os.path.getsize(path) == size, "baseline file size")
        return float(w["end"] - w["start"])


def baseline_follow(data: bytes, size: int) -> float:
    """Seconds for one process to write a plain file while another reads it as it grows."""
    with scratch("stream-follow") as d:
        path = os.path.join(d, "plain")
        with Children() as ch:
            begin, opened = ch.ctx.Event(), ch.ctx.Event()
            ch.start(_file_writer, path, data, size // MiB, begin, opened, None, ch.out)
            ch.start(_follow_reader, path, size, opened, ch.out, "follower")
            ch.collect("ready", 2, READY_WAIT, "the writer and reader to start")
            begin.set()
            done = {r["role"]: r for r in ch.collect("done", 2, WAIT, "writer and reader")}
        expect(done["follower"]["n"] == size, "the following reader got every byte")
        end = max(done["follower"]["end"], done["writer"]["end"])
        return float(end - done["writer"]["start"])


def baseline_fanout(data: bytes, size: int, readers: int) -> float:
    """Seconds for one process to write a plain file, then ``readers`` processes to read
    it at once (the first write to the last reader done)."""
    with scratch("fanout-base") as d:
        path = os.path.join(d, "plain")
        with Children() as ch:
            begin, go = ch.ctx.Event(), ch.ctx.Event()
            ch.start(_file_writer, path, data, size // MiB, begin, None, go, ch.out)
            for i in range(readers):
                ch.start(_file_reader, path, go, False, ch.out, f"r{i}")
            ch.collect("ready", readers + 1, READY_WAIT, "baseline children to start")
            begin.set()
            done = ch.collect("done", readers + 1, WAIT, "the baseline transfer")
        (w,) = [d for d in done if d["role"] == "writer"]
        rs = [d for d in done if d["role"] != "writer"]
        for r in rs:
            expect(r["n"] == size, f"baseline reader got {r['n']} of {size}")
        return float(max(r["end"] for r in rs) - w["start"])


def bench_stream(cfg: Config, data: bytes) -> list[Row]:
    size = cfg.stream_bytes
    ours: list[float] = []
    base: list[float] = []
    follow: list[float] = []
    gc_removed = 0
    for rep in range(cfg.reps):
        log(f"stream rep {rep + 1}/{cfg.reps} ours ({fmt_size(size)})")
        with scratch("stream") as d:
            cache_dir = os.path.join(d, "cache")
            ours.append(producer_and_readers(data, size, cache_dir, 1, False)[0])
            gc_removed += leak_check_dir(cache_dir)
        log(f"stream rep {rep + 1}/{cfg.reps} baseline")
        base.append(baseline_write(data, size))
        log(f"stream rep {rep + 1}/{cfg.reps} baseline with a concurrent reader")
        follow.append(baseline_follow(data, size))
    note = "ours: a producer process fetch(K, null sink) running create, 1 reader process "
    note += "attached; baseline (the brief's): 1 process os.write to a plain file, no reader"
    row = throughput_row(f"stream {fmt_size(size)}", ours, base, size, 0.8, note)
    row.extra["gc_removed_ipc"] = gc_removed
    note2 = "same ours; baseline (docs/design.md's): 1 process writes a plain file while "
    note2 += "another reads it as it grows (polling, no cache)"
    row2 = throughput_row("stream vs write+read", ours, follow, size, 0.8, note2)
    return [row, row2]


def bench_fanout(cfg: Config, data: bytes) -> list[Row]:
    size, readers = cfg.fanout_bytes, cfg.fanout_readers
    ours: list[float] = []
    base: list[float] = []
    for rep in range(cfg.reps):
        log(f"fanout rep {rep + 1}/{cfg.reps} ours ({readers} readers, {fmt_size(size)})")
        with scratch("fanout") as d:
            cache_dir = os.path.join(d, "cache")
            ours.append(producer_and_readers(data, size, cache_dir, readers, True)[0])
            leak_check_dir(cache_dir)
        log(f"fanout rep {rep + 1}/{cfg.reps} baseline")
        base.append(baseline_fanout(data, size, readers))
    note = f"{readers} reader processes + the producer's fetch; create ran once each rep; "
    note += "baseline: write the file, then the readers read it at once"
    total = size * readers
    row = throughput_row(f"fan-out {readers}x {fmt_size(size)}", ours, base, total, 0.8, note)
    row.extra["readers"] = readers
    return [row]


def bench_fanout_fd(cfg: Config, data: bytes) -> list[Row]:
    """Followers whose dst is a descriptor: N reader processes each copy the entry into a
    pipe drained by a ``cat`` process, through the pipe's file object (sendfile from the
    data file) vs an object without ``fileno`` (pread into Python, then write); ours and
    the copy interleaved. The figure that matters is the followers' CPU per GiB."""
    size, readers = cfg.fanout_bytes, cfg.fanout_readers
    times: dict[str, list[float]] = {"pipe": [], "pipe-copy": []}
    cpu: dict[str, list[float]] = {"pipe": [], "pipe-copy": []}
    loads: list[str] = []
    for rep in range(cfg.reps):
        load0 = load_average()
        for into in ("pipe", "pipe-copy"):
            log(f"fanout-fd rep {rep + 1}/{cfg.reps} {into} ({readers} readers, load {load0})")
            with scratch("fanout-fd") as d:
                cache_dir = os.path.join(d, "cache")
                t, rdrs = producer_and_readers(data, size, cache_dir, readers, True, into=into)
                leak_check_dir(cache_dir)
            times[into].append(t)
            cpu[into].append(sum(r["cpu"] for r in rdrs) / (size * readers / GiB))
        loads.append(f"{load0}..{load_average()}")
    med = {k: statistics.median(v) for k, v in cpu.items()}
    note = (
        f"{readers} followers into pipes drained by cat: sendfile vs pread + write; followers' "
        f"CPU s/GiB, medians {med['pipe']:.3f} (sendfile) / {med['pipe-copy']:.3f} (copy), "
        f"ratio {med['pipe'] / med['pipe-copy']:.2f}; load {', '.join(loads)}"
    )
    total = size * readers
    row = throughput_row(
        f"fan-out {readers}x {fmt_size(size)} into pipes",
        times["pipe"],
        times["pipe-copy"],
        total,
        1.0,
        note,
    )
    row.extra |= {"cpu_per_gib": cpu, "loads": loads, "readers": readers}
    return [row]


def load_average() -> str:
    """The 1-minute load average now, as printed beside figures."""
    return f"{os.getloadavg()[0]:.2f}"


def bench_wakes(cfg: Config, data: bytes) -> list[Row]:
    """Wake-ups per GiB with N readers that keep up: a producer at 200 MiB/s, in 1 MiB and
    64 KiB writes (a git-like pipe), counted by every process's futex calls."""
    size, readers, rate = cfg.fanout_bytes, cfg.fanout_readers, 200.0 * MiB
    rows = []
    for piece in (MiB, 64 * KiB):
        times: list[float] = []
        per_gib: dict[str, list[float]] = {"wakes": [], "woken": [], "waits": []}
        loads: list[str] = []
        for rep in range(cfg.reps):
            load0 = load_average()
            log(
                f"wakes rep {rep + 1}/{cfg.reps} ({readers} readers, {fmt_size(piece)} "
                f"writes, {fmt_size(size)}, load {load0})"
            )
            prod: list[dict[str, Any]] = []
            with scratch("wakes") as d:
                cache_dir = os.path.join(d, "cache")
                t, rdrs = producer_and_readers(
                    data, size, cache_dir, readers, True, piece=piece, rate=rate, producer_out=prod
                )
                leak_check_dir(cache_dir)
            times.append(t)
            gib = size / GiB
            per_gib["wakes"].append(prod[0]["futex"]["wakes"] / gib)
            per_gib["woken"].append(prod[0]["futex"]["woken"] / gib)
            per_gib["waits"].append(sum(r["futex"]["waits"] for r in rdrs) / gib)
            loads.append(f"{load0}..{load_average()}")
        med = {k: statistics.median(v) for k, v in per_gib.items()}
        floor = size / rate
        note = (
            f"producer at 200 MiB/s in {fmt_size(piece)} writes, {readers} reader processes; "
            f"per GiB: the producer's futex wake calls, the sleepers they woke, the readers' "
            f"sleeps (medians {med['wakes']:.0f} / {med['woken']:.0f} / {med['waits']:.0f}); "
            f"time {statistics.median(times):.2f} s vs floor {floor:.2f} s; load {', '.join(loads)}"
        )
        rows.append(
            Row(
                f"wakes {readers}x, {fmt_size(piece)} writes",
                f"{med['wakes']:.0f} wakes/GiB",
                f"{med['waits']:.0f} sleeps/GiB",
                None,
                "reference",
                None,
                "absolute",
                "1/GiB",
                med["wakes"],
                med["waits"],
                per_gib["wakes"],
                per_gib["waits"],
                note,
                {
                    "per_gib": per_gib,
                    "times": times,
                    "loads": loads,
                    "piece": piece,
                    "ours_spread": f"{min(per_gib['wakes']):.0f}..{max(per_gib['wakes']):.0f}",
                    "baseline_spread": f"{min(per_gib['waits']):.0f}..{max(per_gib['waits']):.0f}",
                },
            )
        )
    return rows


def bench_stream_api(cfg: Config, data: bytes) -> list[Row]:
    """The path web apps take: the creator's ``stream()`` (create in a producer thread,
    the creator reading its own copy) plus 1, then N reader processes on ``stream()``."""
    size, many = cfg.stream_api_bytes, cfg.fanout_readers
    one: list[float] = []
    one_base: list[float] = []
    one_follow: list[float] = []
    fan: list[float] = []
    fan_base: list[float] = []
    reps = 1 if cfg.quick else cfg.reps  # 15 processes a rep: --quick stays a smoke test
    for rep in range(reps):
        tag = f"stream() rep {rep + 1}/{reps}"
        log(f"{tag} ours, creator + 1 reader ({fmt_size(size)})")
        with scratch("stream-api") as d:
            cache_dir = os.path.join(d, "cache")
            one.append(producer_and_readers(data, size, cache_dir, 1, False, True)[0])
            leak_check_dir(cache_dir)
        log(f"{tag} baseline write")
        one_base.append(baseline_write(data, size))
        log(f"{tag} baseline write+read")
        one_follow.append(baseline_follow(data, size))
        log(f"{tag} ours, creator + {many} readers")
        with scratch("stream-api-fan") as d:
            cache_dir = os.path.join(d, "cache")
            fan.append(producer_and_readers(data, size, cache_dir, many, True, True)[0])
            leak_check_dir(cache_dir)
        log(f"{tag} baseline write, then {many} readers")
        fan_base.append(baseline_fanout(data, size, many))
    how = "the creator's stream() (create in a producer thread, the creator copy_to a "
    how += "counting sink in its main thread)"
    return [
        throughput_row(
            f"stream() {fmt_size(size)} + 1 reader",
            one,
            one_base,
            size,
            0.8,
            f"{how} + 1 reader process on stream(); baseline: 1 process os.write to a file",
        ),
        throughput_row(
            "stream() + 1 vs write+read",
            one,
            one_follow,
            size,
            0.8,
            "same ours; baseline: 1 process writes a plain file while another reads it",
        ),
        throughput_row(
            f"stream() {fmt_size(size)} + {many} readers",
            fan,
            fan_base,
            size * many,
            0.8,
            f"{how} + {many} reader processes on stream(), attached before the first byte; "
            f"baseline: write the file, then {many} processes read it at once",
        ),
    ]


def bench_memory(cfg: Config, data: bytes) -> list[Row]:
    sizes = cfg.memory_sizes
    ours: dict[int, list[float]] = {s: [] for s in sizes}
    base: dict[int, list[float]] = {s: [] for s in sizes}
    raw: dict[str, list[int]] = {}  # ru_maxrss growth, for the record
    methods: set[str] = set()

    def record(r: dict[str, Any], into: list[float], tag: str) -> None:
        into.append(r["rss1"] - r["rss0"])
        raw.setdefault(tag, []).append(r["maxrss1"] - r["maxrss0"])
        methods.add(r["method"])

    with scratch("memory-base") as plain_dir:
        for s in sizes:
            write_file(os.path.join(plain_dir, f"plain-{s}"), data, s // MiB)
        for rep in range(cfg.reps):
            for s in sizes:
                log(f"memory rep {rep + 1}/{cfg.reps} ours ({fmt_size(s)})")
                with scratch("memory") as d:
                    cache_dir = os.path.join(d, "cache")
                    _, (r,) = producer_and_readers(data, s, cache_dir, 1, False)
                    leak_check_dir(cache_dir)
                record(r, ours[s], f"ours {s}")
                log(f"memory rep {rep + 1}/{cfg.reps} baseline ({fmt_size(s)})")
                with Children() as ch:
                    go = ch.ctx.Event()
                    go.set()
                    path = os.path.join(plain_dir, f"plain-{s}")
                    ch.start(_file_reader, path, go, False, ch.out, "reader")
                    ch.collect("ready", 1, READY_WAIT, "the baseline reader to start")
                    (r,) = ch.collect("done", 1, WAIT, "the baseline reader")
                expect(r["n"] == s, f"baseline reader got {r['n']} of {s}")
                record(r, base[s], f"baseline {s}")
    how = " / ".join(sorted(methods))
    note = f"reader process's peak RSS ({how}) after - before its fetch; baseline: the same "
    note += "reader on a plain file, 1 MiB os.read chunks"
    if "ru_maxrss" not in how:
        note += "; ru_maxrss growth kept in extra (it starts at the parent's peak)"
    rows = []
    for s in sizes:
        mo, mb = statistics.median(ours[s]), statistics.median(base[s])
        row = Row(
            f"memory {fmt_size(s)}",
            fmt_size(mo),
            fmt_size(mb),
            mo / mb if mb > 0 else None,
            "< 16 MiB growth (absolute)",
            mo < 16 * MiB,
            "memory",
            "bytes",
            mo,
            mb,
            ours[s],
            base[s],
            note,
        )
        row.extra["ru_maxrss_growth"] = {k: v for k, v in raw.items() if k.endswith(f" {s}")}
        rows.append(row)
    big, small = sizes
    d_ours = abs(statistics.median(ours[big]) - statistics.median(ours[small]))
    d_base = abs(statistics.median(base[big]) - statistics.median(base[small]))
    rows.append(
        Row(
            "memory flat",
            fmt_size(d_ours),
            fmt_size(d_base),
            None,
            "< 4 MiB difference",
            d_ours < 4 * MiB,
            "memory",
            "bytes",
            d_ours,
            d_base,
            note=f"|growth({fmt_size(big)}) - growth({fmt_size(small)})| of the medians",
        )
    )
    return rows


# -- 3 hit, 4 hit to socket ----------------------------------------------------------------


def make_entry(cache: StreamCache, data: bytes, n: int) -> None:
    def create(w: Any) -> None:
        for _ in range(n):
            w.write(data)

    written, created = cache.fetch(KEY, NullSink(), create, timeout=WAIT)
    expect(created and written == len(data) * n, "the entry was created with every byte")
    expect(cache.wait_producers(WAIT), "the producer finished")


def bench_hit(cfg: Config, data: bytes) -> list[Row]:
    size, n = cfg.hit_bytes, cfg.hit_bytes // MiB
    ours: list[float] = []
    base: list[float] = []
    with scratch("hit") as d:
        cache_dir, path = os.path.join(d, "cache"), os.path.join(d, "plain")
        cache = StreamCache(cache_dir, cleanup_interval=0)
        try:
            make_entry(cache, data, n)
            write_file(path, data, n)

            def run_ours() -> float:
                sink = CountingSink()
                t0 = time.perf_counter()
                written, created = cache.fetch(KEY, sink, _refuse, timeout=WAIT)
                t = time.perf_counter() - t0
                expect(written == size == sink.n and not created, f"hit got {written} bytes")
                return t

            def run_base() -> float:
                sink = CountingSink()
                t0 = time.perf_counter()
                with open(path, "rb", buffering=0) as f:
                    while chunk := f.read(MiB):
                        sink.write(chunk)
                t = time.perf_counter() - t0
                expect(sink.n == size, f"plain read got {sink.n} bytes")
                return t

            run_ours()  # warm both
            run_base()
            for rep in range(cfg.reps):
                log(f"hit rep {rep + 1}/{cfg.reps} ({fmt_size(size)})")
                ours.append(run_ours())
                base.append(run_base())
            leak_check(cache, cache_dir)
        finally:
            cache.stop()
    note = "fetch into a counting Python sink vs open(buffering=0).read(1 MiB) loop"
    return [throughput_row(f"hit {fmt_size(size)}", ours, base, size, 0.9, note)]


def bench_socket(cfg: Config, data: bytes) -> list[Row]:
    size, n = cfg.hit_bytes, cfg.hit_bytes // MiB
    ours: list[float] = []
    copy: list[float] = []
    sendfile: list[float] = []
    with scratch("socket") as d:
        cache_dir, path = os.path.join(d, "cache"), os.path.join(d, "plain")
        cache = StreamCache(cache_dir, cleanup_interval=0)
        try:
            make_entry(cache, data, n)
            write_file(path, data, n)
            with Children() as ch:
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                # fetch needs a dst with write(): the socket's raw file object (its
                # fileno() is the socket's, so fetch takes the sendfile path).
                dst = a.makefile("wb", buffering=0)
                cmds: Queue[int | None] = ch.ctx.Queue()
                try:
                    ch.start(_drain, b, cmds, ch.out)
                    b.close()
                    ch.collect("ready", 1, READY_WAIT, "the drain child")

                    def timed(send: Callable[[], None]) -> float:
                        cmds.put(size)
                        t0 = time.perf_counter()
                        send()
                        (r,) = ch.collect("done", 1, WAIT, "the drain child")
                        expect(r["got"] == size, f"drain got {r['got']} of {size}")
                        return float(r["end"]) - t0

                    def send_ours() -> None:
                        written, created = cache.fetch(KEY, dst, _refuse, timeout=WAIT)
                        expect(written == size and not created, f"fetch sent {written}")

                    def send_copy() -> None:
                        with open(path, "rb", buffering=0) as f:
                            while chunk := f.read(MiB):
                                a.sendall(chunk)

                    def send_sendfile() -> None:
                        fd = os.open(path, os.O_RDONLY)
                        try:
                            offset = 0
                            while offset < size:
                                k = os.sendfile(a.fileno(), fd, offset, size - offset)
                                if not k:
                                    raise BenchError("sendfile hit the end early")
                                offset += k
                        finally:
                            os.close(fd)

                    for send in (send_ours, send_copy, send_sendfile):  # warm
                        timed(send)
                    for rep in range(cfg.reps):
                        log(f"socket rep {rep + 1}/{cfg.reps} ({fmt_size(size)})")
                        ours.append(timed(send_ours))
                        copy.append(timed(send_copy))
                        sendfile.append(timed(send_sendfile))
                    cmds.put(None)
                finally:
                    dst.close()
                    a.close()
                    cmds.close()
            leak_check(cache, cache_dir)
        finally:
            cache.stop()
    note = "fetch(K, sock.makefile('wb', buffering=0)) (sendfile) vs read(1 MiB) + sendall; "
    note += "a child drains with recv_into"
    note2 = "same fetch vs an os.sendfile loop from the plain file (the kernel's limit)"
    return [
        throughput_row(f"hit to socket {fmt_size(size)}", ours, copy, size, 0.9, note),
        throughput_row("hit to socket vs sendfile", ours, sendfile, size, 0.9, note2),
    ]


# -- 5 small hit, 6 small miss -------------------------------------------------------------


def diskcache_or_none() -> Any:
    try:
        import diskcache  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    return diskcache


def skipped(name: str, target: str) -> Row:
    return Row(name, "skipped", "diskcache not installed", None, target, None, "skipped")


def bench_small_hit(cfg: Config, data: bytes) -> list[Row]:
    name = f"small hit {fmt_size(cfg.small_bytes)}"
    diskcache = diskcache_or_none()
    if diskcache is None:
        return [skipped(name, "<= 1.0x (ours/base)")]
    value, batch = data[: cfg.small_bytes], cfg.small_batch
    batches = max(1, cfg.small_hit_calls // batch)
    ours: list[float] = []
    base: list[float] = []
    load0 = load_average()
    with scratch("small-hit") as d:
        cache_dir = os.path.join(d, "cache")
        cache = StreamCache(cache_dir, cleanup_interval=0)
        dc = diskcache.Cache(os.path.join(d, "diskcache"))
        try:
            make_entry(cache, value, 1)
            dc.set(KEY, value)
            sink = CountingSink()
            fetch, get = cache.fetch, dc.get

            def run_ours() -> float:
                t0 = time.perf_counter_ns()
                for _ in range(batch):
                    fetch(KEY, sink, _refuse)
                return (time.perf_counter_ns() - t0) / batch / 1e9

            def run_base() -> float:
                t0 = time.perf_counter_ns()
                for _ in range(batch):
                    get(KEY)
                return (time.perf_counter_ns() - t0) / batch / 1e9

            expect(get(KEY) == value, "diskcache returns the value")
            run_ours()  # warm both
            run_base()
            log(f"small-hit: {batches} batches of {batch} calls each")
            for _ in range(batches):
                ours.append(run_ours())
                base.append(run_base())
            expect(sink.n == (batches + 1) * batch * len(value), "every hit wrote the value")
            leak_check(cache, cache_dir)
        finally:
            dc.close()
            cache.stop()
    note = f"median of per-batch means ({batches} batches of {batch} calls, interleaved) "
    note += f"of fetch(K, sink) vs diskcache.Cache.get(K); load {load0}..{load_average()}"
    return [latency_row(name, ours, base, 1.0, note, paired=True)]


# A child that makes one 4 KiB entry (or diskcache value), then fetches (gets) it N times;
# strace -c counts its system calls. Run with N and 2N hits: the difference over N is
# what one hit costs, start-up and the entry's creation cancelling out.
_SYSCALL_CHILD = r"""
import os, sys
which, where, size, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
value = os.urandom(size)
if which == "ours":
    from streamcache import StreamCache

    class Sink:
        def write(self, b):
            return len(b)

    def create(w):
        w.write(value)

    cache = StreamCache(where, cleanup_interval=0)
    sink = Sink()
    for _ in range(10 + n):
        cache.fetch("k", sink, create)
    cache.stop()
else:
    import diskcache

    dc = diskcache.Cache(where)
    dc.set("k", value)
    for _ in range(10 + n):
        assert dc.get("k") == value
    dc.close()
"""
SYSCALL_HITS = 2000


def strace_counts(argv: list[str], env: dict[str, str], cwd: str) -> dict[str, int]:
    """System calls by name of ``argv`` run to its end under ``strace -f -c``."""
    out = os.path.join(cwd, "strace.txt")
    cmd = ["strace", "-f", "-c", "-U", "name,calls", "-o", out, *argv]
    subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True, timeout=WAIT)
    counts: dict[str, int] = {}
    with open(out) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                counts[parts[0]] = int(parts[1])
    return counts


def syscalls_per_hit(which: str, size: int, rounds: int) -> tuple[list[float], dict[str, float]]:
    """Per round: system calls of one hit (the difference of a child doing 2N and N
    hits, over N); and the median per-hit count of each call by name."""
    totals: list[float] = []
    by_name: dict[str, list[float]] = {}
    with scratch(f"syscalls-{which}") as d:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        script = os.path.join(d, "child.py")
        with open(script, "w") as f:
            f.write(_SYSCALL_CHILD)
        for r in range(rounds):
            runs = []
            for n in (SYSCALL_HITS, 2 * SYSCALL_HITS):
                where = os.path.join(d, f"store-{r}-{n}")
                argv = [sys.executable, script, which, where, str(size), str(n)]
                runs.append(strace_counts(argv, env, d))
            one, two = runs
            diff = {k: (two.get(k, 0) - one.get(k, 0)) / SYSCALL_HITS for k in one | two}
            totals.append(sum(diff.values()))
            for k, v in diff.items():
                by_name.setdefault(k, []).append(v)
            if which == "ours":
                leak_check_dir(os.path.join(d, f"store-{r}-{SYSCALL_HITS}"))
    return totals, {k: statistics.median(v) for k, v in by_name.items()}


def bench_small_hit_syscalls(cfg: Config, data: bytes) -> list[Row]:
    name = f"small hit {fmt_size(cfg.small_bytes)} syscalls"
    target = "<= 1.0x (ours/base)"
    if diskcache_or_none() is None:
        return [skipped(name, target)]
    if shutil.which("strace") is None:
        return [Row(name, "skipped", "strace not installed", None, target, None, "skipped")]
    ours: list[float] = []
    base: list[float] = []
    names: dict[str, dict[str, float]] = {}
    load0 = load_average()
    rounds = 3 if cfg.quick else max(3, cfg.reps)
    log(f"small-hit-syscalls: {rounds} rounds of {SYSCALL_HITS} and {2 * SYSCALL_HITS} hits")
    for _ in range(rounds):  # interleaved: one round of each at a time
        for which, into in (("ours", ours), ("diskcache", base)):
            got, each = syscalls_per_hit(which, cfg.small_bytes, 1)
            into.extend(got)
            for k, v in each.items():
                names.setdefault(which, {}).setdefault(k, 0.0)
                names[which][k] += v / rounds

    def listing(which: str) -> str:
        calls = sorted(names.get(which, {}).items(), key=lambda kv: -kv[1])
        return ", ".join(f"{k} {v:.2f}" for k, v in calls if abs(v) >= 0.05) or "none"

    mo, mb = statistics.median(ours), statistics.median(base)
    ratio = mo / mb if mb else math.inf
    note = f"system calls per hit (strace -f -c of a child doing {2 * SYSCALL_HITS} minus one "
    note += f"doing {SYSCALL_HITS} hits, over {SYSCALL_HITS}; median of {rounds} interleaved "
    note += f"rounds, load {load0}..{load_average()}): fetch(K, sink) {listing('ours')}; "
    note += f"diskcache.get(K) {listing('diskcache')}"
    row = Row(
        name,
        f"{mo:.2f} calls",
        f"{mb:.2f} calls",
        ratio,
        target,
        ratio <= 1.0,
        "latency",
        "calls",
        mo,
        mb,
        ours,
        base,
        note,
        {"paired": True, "by_name": names},
    )
    row.extra["ours_spread"] = f"{min(ours):.2f}..{max(ours):.2f}"
    row.extra["baseline_spread"] = f"{min(base):.2f}..{max(base):.2f}"
    return [row]


def bench_small_miss(cfg: Config, data: bytes) -> list[Row]:
    name = f"small miss {fmt_size(cfg.small_bytes)}"
    diskcache = diskcache_or_none()
    if diskcache is None:
        return [skipped(name, "<= 2.0x (ours/base)")]
    value, calls, batch = data[: cfg.small_bytes], cfg.small_miss_calls, 50
    ours: list[float] = []
    base: list[float] = []
    floor: list[float] = []
    load0 = load_average()
    with scratch("small-miss") as d:
        cache_dir = os.path.join(d, "cache")
        cache = StreamCache(cache_dir, cleanup_interval=0)
        dc = diskcache.Cache(os.path.join(d, "diskcache"))
        probe = os.path.join(d, "probe")
        os.mkdir(probe, 0o700)
        try:

            def create(w: Any) -> None:
                w.write(value)

            sink = NullSink()
            log(f"small-miss: {calls} calls each, interleaved in batches of {batch}")
            for start in range(0, calls, batch):
                for i in range(start, min(start + batch, calls)):
                    path = os.path.join(probe, f"f{i}")
                    t0 = time.perf_counter_ns()
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    os.close(fd)
                    floor.append((time.perf_counter_ns() - t0) / 1e9)
                for i in range(start, min(start + batch, calls)):
                    key = f"miss-{i}"
                    t0 = time.perf_counter_ns()
                    written, created = cache.fetch(key, sink, create)
                    ours.append((time.perf_counter_ns() - t0) / 1e9)
                    expect(created and written == len(value), f"miss {key} created it")
                for i in range(start, min(start + batch, calls)):
                    key = f"miss-{i}"
                    t0 = time.perf_counter_ns()
                    dc.set(key, value)
                    base.append((time.perf_counter_ns() - t0) / 1e9)
            expect(dc.get("miss-0") == value, "diskcache kept the value")
            leak_check(cache, cache_dir)
        finally:
            dc.close()
            cache.stop()
    note = "median per-call latency: fetch of a new key (create writes 4 KiB) vs diskcache set; "
    note += "a miss creates 2 inodes (the data file, the record symlink) and does 2 more "
    note += "directory operations (rename into entries/, unlink the record); "
    note += f"load {load0}..{load_average()}"
    row = latency_row(name, ours, base, 2.0, note)
    row.extra |= {"ours_p99": pct(ours, 0.99), "baseline_p99": pct(base, 0.99)}
    fnote = "the floor: creating (O_CREAT | O_EXCL) and closing one empty file in a directory "
    fnote += "beside the cache, batches interleaved with the misses; target: a miss costs at "
    fnote += "most the data file plus one more inode"
    frow = latency_row("small miss vs 1 file create", ours, floor, 2.0, fnote)
    frow.extra |= {"floor_p99": pct(floor, 0.99)}
    return [row, frow]


# -- 7 wake-up -------------------------------------------------------------------------------


def wake_ours(n: int, via_fetch: bool) -> list[float]:
    lat: list[float] = []
    with scratch("wake") as d:
        cache_dir = os.path.join(d, "cache")
        with Children() as ch:
            attached = ch.ctx.Event()
            ch.start(_wake_producer, cache_dir, n, via_fetch, attached, ch.out)
            ch.collect("ready", 1, READY_WAIT, "the wake-up producer")
            cache = StreamCache(cache_dir, window=0, cleanup_interval=0)
            try:
                with cache.stream(WAKE_KEY, _refuse, timeout=WAIT) as s:
                    attached.set()
                    buf = b""
                    while len(lat) < n:
                        chunk = s.read(8 - len(buf))
                        if not chunk:
                            raise BenchError(f"the entry ended after {len(lat)} stamps")
                        buf += chunk
                        if len(buf) == 8:
                            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                            lat.append((now - struct.unpack("<q", buf)[0]) / 1e9)
                            buf = b""
                    expect(s.read(8) == b"", "no bytes after the last stamp")
                    expect(not s.created, "the bench process did not create")
                (r,) = ch.collect("done", 1, WAIT, "the wake-up producer")
                expect(r["bytes"] == 8 * n and r["created"], "the producer read its own copy")
                leak_check(cache, cache_dir)
            finally:
                cache.stop()
    return lat


def wake_pipe(n: int) -> list[float]:
    lat: list[float] = []
    with Children() as ch:
        r, w = ch.ctx.Pipe(duplex=False)  # an os.pipe(): r the read end, w the write end
        go = ch.ctx.Event()
        p = ch.start(_pipe_stamper, w, n, go, ch.out)
        w.close()
        ch.collect("ready", 1, READY_WAIT, "the pipe stamper")
        watchdog = threading.Timer(WAIT, p.kill)  # a killed writer closes the pipe: read ends
        watchdog.start()
        try:
            fd = r.fileno()
            go.set()
            buf = b""
            while len(lat) < n:
                chunk = os.read(fd, 8 - len(buf))
                if not chunk:
                    raise BenchError(f"the pipe closed after {len(lat)} stamps")
                buf += chunk
                if len(buf) == 8:
                    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    lat.append((now - struct.unpack("<q", buf)[0]) / 1e9)
                    buf = b""
        finally:
            watchdog.cancel()
            r.close()
        ch.collect("done", 1, WAIT, "the pipe stamper")
    return lat


def bench_wakeup(cfg: Config, data: bytes) -> list[Row]:
    ours: list[float] = []
    threaded: list[float] = []
    base: list[float] = []
    per = [
        cfg.wake_samples // cfg.reps + (i < cfg.wake_samples % cfg.reps) for i in range(cfg.reps)
    ]
    for rep, n in enumerate(per):
        if not n:
            continue
        log(f"wakeup rep {rep + 1}/{cfg.reps} ours, fetch creator ({n} samples)")
        ours.extend(wake_ours(n, via_fetch=True))
        log(f"wakeup rep {rep + 1}/{cfg.reps} baseline (os.pipe)")
        base.extend(wake_pipe(n))
        log(f"wakeup rep {rep + 1}/{cfg.reps} ours, stream() creator ({n} samples)")
        threaded.extend(wake_ours(n, via_fetch=False))
        log(f"wakeup rep {rep + 1}/{cfg.reps} baseline (os.pipe) again")
        base.extend(wake_pipe(n))
    mb, pb = statistics.median(base), pct(base, 0.99)
    rows = []
    for name, samples, how in (
        ("wake-up fetch", ours, "the creating fetch writes straight to its dst (the default path)"),
        (
            "wake-up stream()",
            threaded,
            "the creator's stream(): create in a producer thread, the creator drains its own "
            "copy in its main thread",
        ),
    ):
        mo, po = statistics.median(samples), pct(samples, 0.99)
        note = "producer writes an 8-byte CLOCK_MONOTONIC stamp every ~2 ms, window 0, to a "
        note += f"reader waiting in another process; {how}; baseline: the same stamps through "
        note += "an os.pipe to a process blocked in read (the kernel's own wake-up), its reps "
        note += "interleaved with ours"
        extra = {"ours_p99": po, "baseline_p99": pb, "samples": len(samples), "paired": False}
        rows.append(
            Row(
                f"{name} median",
                fmt_time(mo),
                fmt_time(mb),
                mo / mb,
                "<= 1.5x (ours/pipe)",
                mo / mb <= 1.5,
                "latency",
                "s",
                mo,
                mb,
                samples,
                base,
                note,
                extra,
            )
        )
        rows.append(
            Row(
                f"{name} p99",
                fmt_time(po),
                fmt_time(pb),
                po / pb,
                "<= 3x (ours/pipe)",
                po / pb <= 3.0,
                "latency",
                "s",
                po,
                pb,
                samples,
                base,
                "",
                dict(extra),
            )
        )
    return rows


# -- 8 index scale -------------------------------------------------------------------------


def fill_large(
    cfg: Config, cache_dir: str, value: bytes, first: int, total: int
) -> tuple[float, list[float]]:
    """Fill ``cache_dir`` with entries ``first`` to ``total`` - 1 from cfg.index_fill_procs
    processes; progress every 5%. Returns (wall seconds, each worker's seconds)."""
    procs = cfg.index_fill_procs
    bounds = [first + (total - first) * i // procs for i in range(procs + 1)]
    t0 = time.perf_counter()
    deadline = time.monotonic() + max(WAIT, total * 0.05)
    with Children() as ch:
        for i in range(procs):
            ch.start(_fill_worker, cache_dir, bounds[i], bounds[i + 1], value, ch.out, f"fill{i}")
        count, shown = 0, 0
        done: list[float] = []
        while len(done) < procs:
            kind, role, payload = ch.next(deadline, "the index fill")
            if kind == "progress":
                count += payload["count"]
                if count * 20 // (total - first) > shown:
                    shown = count * 20 // (total - first)
                    el = time.perf_counter() - t0
                    log(f"index fill {shown * 5}% ({count}/{total} entries, {el:.1f} s)")
            elif kind == "done":
                done.append(payload["seconds"])
            else:
                raise BenchError(f"unexpected {kind!r} from {role} during the index fill")
    return time.perf_counter() - t0, done


def bench_index(cfg: Config, data: bytes) -> list[Row]:
    value, entry = data[: cfg.index_entry], cfg.index_entry
    small_n, samples, batch = cfg.index_small, cfg.index_samples, 100
    rows: list[Row] = []
    with scratch("index") as d:
        big_dir, small_dir = os.path.join(d, "large"), os.path.join(d, "small")
        big = StreamCache(big_dir, cleanup_interval=0)
        small = StreamCache(small_dir, cleanup_interval=0)
        try:
            fill_entries(small, 0, small_n, value)
            rng = random.Random(20240601)
            sink = CountingSink()

            def kernel(root: str, n_entries: int, out: list[float]) -> None:
                """The kernel's own cost at N: open + pread + close of a random entry's
                file, in the cache's own layout (one file per finished entry)."""
                for _ in range(batch):
                    h = key_hash(f"idx-{rng.randrange(n_entries)}")
                    path = os.path.join(root, LAYOUT, "entries", h[:2], h)
                    t0 = time.perf_counter_ns()
                    fd = os.open(path, os.O_RDONLY)
                    got = os.pread(fd, entry + 64, 0)
                    os.close(fd)
                    out.append((time.perf_counter_ns() - t0) / 1e9)
                    if len(got) < entry:
                        raise BenchError(f"{path} holds {len(got)} bytes")

            def sample(cache: StreamCache, n_entries: int, out: list[float]) -> None:
                for _ in range(batch):
                    key = f"idx-{rng.randrange(n_entries)}"
                    t0 = time.perf_counter_ns()
                    written, created = cache.fetch(key, sink, _refuse)
                    out.append((time.perf_counter_ns() - t0) / 1e9)
                    if created or written != entry:
                        raise BenchError(f"{key}: created={created} written={written}")

            filled = 0
            for big_n in cfg.index_sizes:
                log(f"index: filling to {big_n} entries from {cfg.index_fill_procs} processes")
                fill_s, worker_s = fill_large(cfg, big_dir, value, filled, big_n)
                filled = big_n
                log(f"index: fill took {fill_s:.1f} s")
                warm: list[float] = []
                sample(big, big_n, warm)
                sample(small, small_n, warm)
                kernel(big_dir, big_n, warm)
                kernel(small_dir, small_n, warm)
                ours: list[float] = []
                base: list[float] = []
                k_big: list[float] = []
                k_small: list[float] = []
                log(
                    f"index: {samples} random hits on each cache and as many open+pread of "
                    f"their files, interleaved, batches of {batch}"
                )
                for _ in range(max(1, samples // batch)):
                    sample(big, big_n, ours)
                    kernel(big_dir, big_n, k_big)
                    sample(small, small_n, base)
                    kernel(small_dir, small_n, k_small)
                limit = statistics.median(k_big) / statistics.median(k_small)
                note = "median per-call fetch latency, keys uniform over all entries "
                note += f"({len(ours)} samples each); target: ratio within 1.1x of the "
                note += "kernel's own ratio (next row)"
                row = latency_row(f"index scale {big_n} vs {small_n}", ours, base, 1.1, note)
                row.target = f"<= {1.1 * limit:.2f} (1.1x limit)"
                row.met = row.ratio is not None and row.ratio <= 1.1 * limit
                row.extra |= {"fill_seconds": fill_s, "fill_worker_seconds": worker_s}
                row.extra["kernel_ratio"] = limit
                row.extra["ours_over_kernel_ratio"] = (row.ratio or 0.0) / limit
                rows.append(row)
                knote = "the limit: os.open + os.pread + os.close of a random entry's file in "
                knote += "the same caches (same layout, same N), interleaved with the fetches"
                krow = latency_row(f"  limit: open+pread {big_n} vs {small_n}", k_big, k_small, 0)
                krow.target, krow.met, krow.note = "(reference)", None, knote
                rows.append(krow)
            t0 = time.perf_counter()
            leak_check(big, big_dir)
            gc_s = time.perf_counter() - t0
            leak_check(small, small_dir)
            rows[-1].extra["gc_seconds"] = gc_s
        finally:
            big.stop()
            small.stop()
        log(f"index: gc of {filled} entries took {gc_s:.1f} s; removing the dirs")
    return rows


# -- 9 storm -------------------------------------------------------------------------------


def bench_storm(cfg: Config, data: bytes) -> list[Row]:
    size, procs, n = cfg.storm_bytes, cfg.storm_procs, cfg.storm_bytes // MiB
    digest = expected_digest(data, n)
    ours: list[float] = []
    base: list[float] = []
    disk: list[tuple[int, int]] = []
    for rep in range(cfg.reps):
        log(f"storm rep {rep + 1}/{cfg.reps} ours ({procs} processes, {fmt_size(size)})")
        with scratch("storm") as d:
            cache_dir = os.path.join(d, "cache")
            with Children() as ch:
                barrier = ch.ctx.Barrier(procs + 1)
                for i in range(procs):
                    ch.start(_storm_worker, cache_dir, KEY, data, n, barrier, ch.out, f"s{i}")
                ch.collect("ready", procs, READY_WAIT, "storm processes to start")
                precondition(d, size, data)
                barrier.wait(READY_WAIT)
                done = ch.collect("done", procs, WAIT, "the storm")
                on_disk, files = data_file_bytes(cache_dir)  # right after all fetches
            creates = sum(1 for r in done if r["created"])
            expect(creates == 1, f"create ran {creates} times")
            for r in done:
                expect(r["written"] == size, f"{r['role']} got {r['written']} of {size}")
                expect(r["digest"] == digest, f"{r['role']} got different bytes")
            # One copy: the entry's bytes plus at most a little per-file framing.
            expect(size <= on_disk <= size + 4 * KiB, f"disk holds {on_disk} bytes in {files}")
            disk.append((on_disk, files))
            ours.append(max(r["end"] for r in done) - min(r["start"] for r in done))
            leak_check_dir(cache_dir)
        log(f"storm rep {rep + 1}/{cfg.reps} baseline")
        with scratch("storm-base") as d:
            path = os.path.join(d, "plain")
            with Children() as ch:
                begin, go = ch.ctx.Event(), ch.ctx.Event()
                ch.start(_file_writer, path, data, n, begin, None, go, ch.out)
                for i in range(procs):
                    ch.start(_file_reader, path, go, True, ch.out, f"r{i}")
                ch.collect("ready", procs + 1, READY_WAIT, "baseline children to start")
                begin.set()
                done = ch.collect("done", procs + 1, WAIT, "the baseline storm")
            (w,) = [r for r in done if r["role"] == "writer"]
            rs = [r for r in done if r["role"] != "writer"]
            for r in rs:
                expect(r["n"] == size and r["digest"] == digest, "baseline reader bytes")
            base.append(max(r["end"] for r in rs) - w["start"])
    row = throughput_row(f"storm {procs}x {fmt_size(size)}", ours, base, size * procs, 0.0)
    row.target = "create once, 1 copy, same bytes"
    row.met = True  # every check above passed (a failure raises)
    row.kind = "correctness"
    row.note = (
        f"every rep: 1 create, {procs} identical sha256 digests, disk {disk[-1][0]} bytes "
        f"in {disk[-1][1]} data file(s); ratio (base/ours time) for reference: one process "
        f"writes the file, then {procs} processes read it"
    )
    row.extra |= {"disk": disk, "procs": procs}
    return [row]


# -- startup: a fresh process's cost, against a bare interpreter and cat ------------------

STARTUP_BYTES = 64 * KiB
STARTUP_WARMUP = 2  # rounds not counted: the first writes the bytecode


def timed_process(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of running ``argv`` to its end, output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True, timeout=WAIT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def startup_row(
    name: str, ours: list[float], base: list[float], bound: float, what: str, note: str
) -> Row:
    """A start-up row: met when the median of the paired differences (ours - base, round
    by round) is at most ``bound`` seconds; the ratio is of the medians."""
    extra_cost = statistics.median(o - b for o, b in zip(ours, base, strict=True))
    row = latency_row(name, ours, base, math.inf, note, paired=True)
    row.target = f"<= +{bound * 1000:.0f} ms {what} over base"
    row.met = extra_cost <= bound
    row.note = f"{note}; median difference +{extra_cost * 1000:.1f} ms"
    row.extra["extra_cost"] = extra_cost
    return row


def bench_startup(cfg: Config, data: bytes) -> list[Row]:
    """What a short-lived process pays: ``import streamcache`` (a git hook, a script)
    and ``streamcache run`` on a hit (in front of a shell command). The children load
    bytecode from a private cache (PYTHONPYCACHEPREFIX, written by the warm-up rounds),
    as an installed package does, whatever PYTHONDONTWRITEBYTECODE says."""
    py = sys.executable
    rounds = cfg.startup_rounds
    with scratch("startup") as d:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        env["PYTHONPYCACHEPREFIX"] = os.path.join(d, "pycache")
        path = os.path.join(d, "data")
        write_file(path, data[:STARTUP_BYTES], 1)
        cache_dir = os.path.join(d, "cache")
        run = [py, "-m", "streamcache", "run", "--dir", cache_dir, "--max-age", "1h"]
        run += ["--", "cat", path]
        commands = {
            "import": [py, "-c", "import streamcache"],
            "pass": [py, "-c", "pass"],
            "run": run,
            "cat": ["cat", path],
        }
        timed_process(run, env, d)  # the miss that stores the entry
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
        log(f"startup: {rounds} rounds of {', '.join(commands)} after {STARTUP_WARMUP}")
        for i in range(STARTUP_WARMUP + rounds):
            for k, argv in commands.items():
                got = timed_process(argv, env, d)
                if i >= STARTUP_WARMUP:
                    samples[k].append(got)
        done = subprocess.run(run, env=env, cwd=d, capture_output=True, timeout=WAIT, check=True)
        expect(done.stdout == data[:STARTUP_BYTES], "streamcache run served the stored bytes")
        leak_check_dir(cache_dir)
    load = os.getloadavg()[0]
    cpu = {k: [c for c, _ in v] for k, v in samples.items()}
    wall = {k: [w for _, w in v] for k, v in samples.items()}
    each = f"medians of {rounds} interleaved rounds after {STARTUP_WARMUP}, load {load:.1f}"
    return [
        startup_row(
            "import streamcache (cpu)",
            cpu["import"],
            cpu["pass"],
            0.040,
            "cpu",
            f"python -c 'import streamcache' vs python -c pass, user+sys, {each}",
        ),
        startup_row(
            f"run hit {fmt_size(STARTUP_BYTES)} (wall)",
            wall["run"],
            wall["cat"],
            0.080,
            "wall",
            f"python -m streamcache run -- cat F (a hit) vs cat F, {each}; user+sys: "
            f"{fmt_time(statistics.median(cpu['run']))} vs python -c pass "
            f"{fmt_time(statistics.median(cpu['pass']))}",
        ),
    ]


def bench_git_hook(cfg: Config, data: bytes) -> list[Row]:
    """What the pack-objects hook costs a fetch when it is a hit: ``git clone
    --no-local`` of a one-commit repository with ``streamcache git-pack-objects-hook``
    as uploadpack.packObjectsHook (the pack stored by the first clone) vs with no hook,
    rounds interleaved. Skipped without git."""
    git = shutil.which("git")
    if git is None:
        return [skipped("git hook hit (wall)", "<= +50 ms wall over base")]
    py = sys.executable
    rounds = cfg.startup_rounds
    with scratch("git-hook") as d:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        env["PYTHONPYCACHEPREFIX"] = os.path.join(d, "pycache")
        env.update(HOME=d, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
        repo = os.path.join(d, "repo.git")
        stream = b"commit refs/heads/main\ncommitter B <b@example.com> 1700000000 +0000\n"
        stream += b"data 2\nb\nM 100644 inline f\ndata %d\n%s\n" % (
            STARTUP_BYTES,
            data[:STARTUP_BYTES],
        )
        subprocess.run([git, "init", "-q", "--bare", "-b", "main", repo], env=env, check=True)
        subprocess.run([git, "fast-import", "--quiet"], input=stream, cwd=repo, env=env, check=True)
        hooked, plain = os.path.join(d, "hooked.gitconfig"), os.path.join(d, "plain.gitconfig")
        hook = f"{py} -m streamcache git-pack-objects-hook --dir {os.path.join(d, 'cache')}"
        with open(hooked, "w") as f:
            f.write(f"[uploadpack]\n\tpackObjectsHook = {hook} --min-occurrences 0\n")
        with open(plain, "w") as f:
            f.write("")
        clone = [git, "clone", "-q", "--no-local", f"file://{repo}"]

        def timed_clone(config: str, n: int) -> tuple[float, float]:
            dest = os.path.join(d, f"clone{n}")
            got = timed_process([*clone, dest], {**env, "GIT_CONFIG_GLOBAL": config}, d)
            shutil.rmtree(dest)
            return got

        timed_clone(hooked, -1)  # the miss that stores the pack
        samples: dict[str, list[tuple[float, float]]] = {"hook": [], "plain": []}
        log(f"git-hook: {rounds} rounds of a clone with and without the hook")
        for i in range(STARTUP_WARMUP + rounds):
            for k, config in (("hook", hooked), ("plain", plain)):
                got = timed_clone(config, i)
                if i >= STARTUP_WARMUP:
                    samples[k].append(got)
        leak_check_dir(os.path.join(d, "cache"))
    load = os.getloadavg()[0]
    wall = {k: [w for _, w in v] for k, v in samples.items()}
    cpu = {k: [c for c, _ in v] for k, v in samples.items()}
    return [
        startup_row(
            f"git hook hit {fmt_size(STARTUP_BYTES)} (wall)",
            wall["hook"],
            wall["plain"],
            0.050,
            "wall",
            f"git clone --no-local of a one-commit repository, upload-pack with "
            f"streamcache git-pack-objects-hook (a hit) vs without a hook, medians of "
            f"{rounds} interleaved rounds after {STARTUP_WARMUP}, load {load:.1f}; user+sys "
            f"{fmt_time(statistics.median(cpu['hook']))} vs "
            f"{fmt_time(statistics.median(cpu['plain']))}",
        )
    ]


HOOK_CPU_BYTES = 128 * MiB

# A stand-in for ``git`` in the hook's PATH: reads its stdin, writes argv[1] to stdout.
_FAKE_GIT = """\
import shutil, sys
sys.stdin.buffer.read()
with open({path!r}, "rb") as f:
    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
"""


def cpu_into_pipe(argv: list[str], env: dict[str, str], cwd: str, stdin: str) -> float:
    """User+sys seconds of ``argv`` alone (not of cat) run to its end with ``stdin``
    (a file) and its stdout a pipe that cat drains to /dev/null."""
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert cat.stdin is not None
    try:
        with open(stdin, "rb") as f:
            p = subprocess.Popen(argv, stdin=f, stdout=cat.stdin, env=env, cwd=cwd)
    finally:
        cat.stdin.close()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    cat.wait(WAIT)
    expect(p.returncode == 0, f"{argv[:3]} exited 0")
    return usage.ru_utime + usage.ru_stime


def bench_git_hook_cpu(cfg: Config, data: bytes) -> list[Row]:
    """What one client costs the server on a hit of a large pack: the hook's own CPU,
    the entry's bytes moved to its stdout (a pipe, as upload-pack gives it), vs what
    ``cat`` pays to copy the same bytes into such a pipe. The hook runs with a stand-in
    ``git`` first in its PATH (the pack's bytes from a file), stored by the second call
    (min-occurrences 1, as configured by default)."""
    py = sys.executable
    rounds = cfg.startup_rounds
    with scratch("git-hook-cpu") as d:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        env["PYTHONPYCACHEPREFIX"] = os.path.join(d, "pycache")
        pack = os.path.join(d, "pack")
        write_file(pack, data, HOOK_CPU_BYTES // len(data))
        bindir = os.path.join(d, "bin")
        os.mkdir(bindir)
        with open(os.path.join(bindir, "git"), "w") as f:
            f.write(f"#!{py}\n" + _FAKE_GIT.format(path=pack))
        os.chmod(os.path.join(bindir, "git"), 0o755)
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
        repo = os.path.join(d, "repo")
        os.mkdir(repo)
        env["GIT_DIR"] = repo
        request = os.path.join(d, "request")
        with open(request, "wb") as f:
            f.write(b"0032want " + b"1" * 40 + b"\n00000009done\n")
        hook = [py, "-m", "streamcache", "git-pack-objects-hook", "--dir", os.path.join(d, "c")]
        hook += ["git", "pack-objects", "--revs", "--thin", "--stdout", "--delta-base-offset"]
        cat = ["cat", pack]
        for _ in range(2 + STARTUP_WARMUP):  # uncached, stored, then hits
            cpu_into_pipe(hook, env, repo, request)
        samples: dict[str, list[float]] = {"hook": [], "cat": []}
        log(f"git-hook-cpu: {rounds} rounds of a hook hit on {fmt_size(HOOK_CPU_BYTES)} and cat")
        loads = [os.getloadavg()[0]]
        for i in range(rounds):
            order = [("hook", hook), ("cat", cat)]
            for k, argv in order if i % 2 == 0 else order[::-1]:
                samples[k].append(cpu_into_pipe(argv, env, repo, request))
        loads.append(os.getloadavg()[0])
        leak_check_dir(os.path.join(d, "c"))
    mo, mb = statistics.median(samples["hook"]), statistics.median(samples["cat"])
    return [
        Row(
            f"git hook hit {fmt_size(HOOK_CPU_BYTES)} (cpu)",
            fmt_time(mo),
            fmt_time(mb),
            None,
            "reference",
            None,
            "absolute",
            "s",
            mo,
            mb,
            samples["hook"],
            samples["cat"],
            f"user+sys of the hook alone on a hit, stdout a pipe drained by cat, vs cat F "
            f"into such a pipe; medians of {rounds} interleaved rounds, load "
            f"{loads[0]:.1f} -> {loads[1]:.1f}",
        )
    ]


# -- main ----------------------------------------------------------------------------------

BENCHES: dict[str, Callable[[Config, bytes], list[Row]]] = {
    "stream": bench_stream,
    "fanout": bench_fanout,
    "fanout-fd": bench_fanout_fd,
    "wakes": bench_wakes,
    "stream-api": bench_stream_api,
    "hit": bench_hit,
    "socket": bench_socket,
    "small-hit": bench_small_hit,
    "small-hit-syscalls": bench_small_hit_syscalls,
    "small-miss": bench_small_miss,
    "wakeup": bench_wakeup,
    "index": bench_index,
    "storm": bench_storm,
    "memory": bench_memory,
    "startup": bench_startup,
    "git-hook": bench_git_hook,
    "git-hook-cpu": bench_git_hook_cpu,
}


def machine_info() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tempdir": tempfile.gettempdir(),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def code_version() -> str:
    """The library's git HEAD, with "+dirty" if streamcache/ or ipc/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "streamcache", "ipc"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def spread(samples: Sequence[float], unit: str) -> str:
    """``min..max`` of ``samples`` (seconds or bytes), "-" when there are none."""
    if not samples:
        return "-"
    fmt = fmt_size if unit == "bytes" else fmt_time
    return f"{fmt(min(samples))}..{fmt(max(samples))}"


def ratio_spread(r: Row) -> str:
    """min..max of the per-rep ratios (rep i of ours against rep i of the baseline, run
    back to back), where both sides have one sample per rep."""
    o, b = r.ours_samples, r.baseline_samples
    paired = r.kind == "throughput" or r.extra.get("paired", False)
    if not paired or not o or len(o) != len(b):
        return "-"
    if r.kind == "throughput":
        ratios = [y / x for x, y in zip(o, b, strict=True) if x > 0]
    else:
        ratios = [x / y for x, y in zip(o, b, strict=True) if y > 0]
    return f"{min(ratios):.2f}..{max(ratios):.2f}" if ratios else "-"


def print_table(rows: list[Row], cfg: Config, info: dict[str, Any], wall: float) -> None:
    head = (
        "name",
        "ours (median)",
        "ours min..max",
        "baseline (median)",
        "baseline min..max",
        "ratio",
        "ratio min..max",
        "target",
        "met",
    )
    cells = []
    for r in rows:
        ratio = "-" if r.ratio is None or not math.isfinite(r.ratio) else f"{r.ratio:.2f}"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        cells.append(
            (
                r.name,
                r.ours,
                r.extra.get("ours_spread") or spread(r.ours_samples, r.unit),
                r.baseline,
                r.extra.get("baseline_spread") or spread(r.baseline_samples, r.unit),
                ratio,
                r.extra.get("ratio_spread") or ratio_spread(r),
                r.target,
                met,
            )
        )
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]

    def line(c: Sequence[str]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |"

    mode = "quick" if cfg.quick else "full"
    print(
        f"streamcache bench ({mode}, reps {cfg.reps}) of {info['code_at_start']}: "
        f"{info['cpu_count']} cpus, {info['cpu_model']}, Python {info['python']}, "
        f"{info['platform']}"
    )
    if info["code_at_end"] != info["code_at_start"]:
        print(
            f"WARNING: the library changed during the run ({info['code_at_start']} -> "
            f"{info['code_at_end']}): children spawned later ran the new code"
        )
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print(line(c))
    print()
    print("ratio: throughput rows base/ours (higher is better), latency rows ours/base (lower is")
    print("better); medians of interleaved reps (ours and baseline alternate, each after a")
    print("warm-up write bigger than its data); min..max show the spread of the samples and of")
    print("the per-rep ratios. Notes:")
    for r in rows:
        if r.note:
            print(f"- {r.name}: {r.note}")
    print(f"wall time {wall:.1f} s")


def int_list(text: str, what: str, parser: argparse.ArgumentParser) -> list[int]:
    """A comma-separated list of whole numbers >= 1 (``--peers-procs 16,64``)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"{what} takes whole numbers, comma-separated")
    if not values or any(v < 1 for v in values):
        parser.error(f"{what} needs numbers of at least 1")
    return values


@contextlib.contextmanager
def background_load(cpus: int) -> Iterator[str]:
    """``stress-ng --cpu N`` beside the block (production hosts are never idle); stopped
    by its pid afterwards. Yields its command line."""
    binary = shutil.which("stress-ng")
    if binary is None:
        raise BenchError("--load needs stress-ng, which is not installed")
    cmd = [binary, "--cpu", str(cpus), "--quiet"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        yield " ".join(cmd[1:])
    finally:
        proc.terminate()  # stress-ng stops its workers on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # its own group (start_new_session): only its workers
            proc.wait(30)


def run_peers(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import peers  # tools/peers.py: only for --peers

    kinds = list(peers.CONTENDERS)
    if args.peers_only:
        kinds = [x.strip() for x in args.peers_only.split(",") if x.strip()]
        unknown = [x for x in kinds if x not in peers.CONTENDERS]
        if unknown:
            parser.error(f"unknown contender(s) {unknown}; choose from {peers.CONTENDERS}")
    try:
        rates = [float(x) * MiB for x in args.peers_rates.split(",") if x.strip()]
    except ValueError:
        parser.error("--peers-rates takes numbers (MiB/s), 0 for unlimited")
    if not rates or any(r < 0 for r in rates):
        parser.error("--peers-rates needs at least one rate >= 0")
    sizes = int_list(args.peers_size, "--peers-size", parser)
    procs = int_list(args.peers_procs, "--peers-procs", parser)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    info = machine_info()
    info["code_at_start"] = code_version()
    t0 = time.perf_counter()
    texts: list[str] = []
    raws: list[dict[str, Any]] = []
    try:
        with background_load(args.load) if args.load else contextlib.nullcontext("") as load_cmd:
            if load_cmd:
                log(f"peers: stress-ng {load_cmd} runs beside the benchmark")
            for n in procs:
                for size in sizes:
                    text, raw = peers.main(n, size * MiB, rates, args.reps or 3, kinds)
                    texts.append(text)
                    raws.append(raw)
    except BenchError as exc:
        log(f"peers: FAILED: {exc}")
        return 1
    wall = time.perf_counter() - t0
    beside = f"stress-ng --cpu {args.load} beside it" if args.load else "nothing else started"
    if args.json:
        print(
            json.dumps(
                {"machine": info, "wall_seconds": wall, "load": args.load, "tables": raws},
                indent=2,
            )
        )
    else:
        print(
            f"streamcache peers of {info['code_at_start']}: {info['cpu_count']} cpus, "
            f"{info['cpu_model']}, Python {info['python']}, reps {args.reps or 3}, {beside}"
        )
        print("\n".join(texts))
        print(f"\n{peers.LEGEND}\nwall time {wall:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        epilog=f"benchmarks: {', '.join(BENCHES)}",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--reps", type=int, help="repetitions (default 5; 3 with --quick)")
    peers = parser.add_argument_group("peers (the headline job against the alternatives)")
    peers.add_argument(
        "--peers", action="store_true", help="run the peers table instead (tools/peers.py)"
    )
    peers.add_argument(
        "--peers-size", default="1024", help="blob MiB, comma-separated (default 1024; 1024,4096)"
    )
    peers.add_argument(
        "--peers-procs", default="16", help="processes, comma-separated (default 16; 16,64)"
    )
    peers.add_argument(
        "--peers-rates",
        default="200,0",
        help="generator rates in MiB/s, comma-separated; 0 is unlimited (default 200,0)",
    )
    peers.add_argument(
        "--peers-only", help="comma-separated contenders (fetch,stream,nocache,filelock,...)"
    )
    peers.add_argument(
        "--load",
        type=int,
        nargs="?",
        const=2,
        default=0,
        metavar="CPUS",
        help="run stress-ng --cpu CPUS (default 2) beside the peers runs",
    )
    git = parser.add_argument_group("git (concurrent clones with a pack-objects hook)")
    git.add_argument(
        "--git",
        action="store_true",
        help="run tools/bench_git.py instead; the arguments after --git are its own",
    )
    argv = sys.argv[1:] if argv is None else argv
    if "--git" in argv:
        import bench_git  # tools/bench_git.py: only for --git

        at = argv.index("--git")
        parser.parse_args(argv[:at])  # nothing of bench.py's own is used; refuse what it isn't
        return bench_git.main(argv[at + 1 :])
    args = parser.parse_args(argv)
    if args.peers:
        return run_peers(args, parser)
    names = list(BENCHES)
    if args.only:
        names = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in names if x not in BENCHES]
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    cfg = make_config(args.quick, args.reps)
    info = machine_info()
    info["code_at_start"] = code_version()
    data = os.urandom(MiB)
    t_start = time.perf_counter()
    rows: list[Row] = []
    failures: list[str] = []
    for name in names:
        log(f"{name}: start")
        t0 = time.perf_counter()
        try:
            rows.extend(BENCHES[name](cfg, data))
        except Exception as exc:
            tb = traceback.format_exc()
            log(f"{name}: FAILED\n{tb}")
            failures.append(name)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            rows.append(Row(name, "FAILED", "", None, "", False, "failed", note=first, error=tb))
        log(f"{name}: {time.perf_counter() - t0:.1f} s")
    wall = time.perf_counter() - t_start
    info["code_at_end"] = code_version()
    if info["code_at_end"] != info["code_at_start"]:
        log(f"WARNING: the library changed during the run: {info['code_at_end']}")
    if args.json:
        sizes = asdict(cfg)
        print(
            json.dumps(
                {
                    "quick": cfg.quick,
                    "reps": cfg.reps,
                    "machine": info,
                    "sizes": sizes,
                    "rows": [asdict(r) for r in rows],
                    "failures": failures,
                    "wall_seconds": wall,
                },
                indent=2,
            )
        )
    else:
        print_table(rows, cfg, info, wall)
    if failures:
        log(f"failed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
