"""Figures for the core: fan-out time, wake-up latency, producer lead over a stalled reader.

    python tools/measure.py [--quick] [--json] [--wake-breakdown | --miss-inodes]

Absolute times on a shared machine are noisy; every figure is the median of several runs.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import struct
import sys
import tempfile
import time
from typing import Any

import ipc
import streamcache
from ipc.channel import SEGMENT
from ipc.naming import object_name
from streamcache.cache import LAYOUT, channel_base, key_hash
from streamcache.disk.index import Index

MiB = 1 << 20


class Sink:
    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def write(self, b: bytes) -> int:
        self.h.update(b)
        return len(b)


def _block(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (MiB // 32)


def _fanout_reader(cache_dir: str, size_mib: int, barrier: Any, out: Any) -> None:
    cache = streamcache.StreamCache(cache_dir)

    def create(w: Any) -> None:
        for i in range(size_mib):
            w.write(_block(i))

    barrier.wait(30)
    t0 = time.perf_counter()
    sink = Sink()
    written, created = cache.fetch("fanout", sink, create, timeout=300)
    out.put((time.perf_counter() - t0, written, created, sink.h.hexdigest()))
    cache.stop()


def fanout(procs: int, size_mib: int) -> float:
    """Seconds until all ``procs`` processes have each received one cold ``size_mib`` entry."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        barrier = ctx.Barrier(procs + 1)
        out = ctx.Queue()
        ps = [
            ctx.Process(target=_fanout_reader, args=(tmp + "/c", size_mib, barrier, out))
            for _ in range(procs)
        ]
        for p in ps:
            p.start()
        barrier.wait(60)
        t0 = time.perf_counter()
        results = [out.get(timeout=300) for _ in ps]
        elapsed = time.perf_counter() - t0
        for p in ps:
            p.join(30)
        assert sum(r[2] for r in results) == 1, "create must run once"
        assert len({r[3] for r in results}) == 1 and results[0][1] == size_mib * MiB
        return elapsed


def _wake_producer(cache_dir: str, n: int, created: Any, attached: Any) -> None:
    cache = streamcache.StreamCache(cache_dir, window=0)

    def create(w: Any) -> None:
        attached.wait(30)
        for _ in range(n):
            time.sleep(0.002)  # the reader in the other process goes back to sleep
            w.write(struct.pack("<q", time.clock_gettime_ns(time.CLOCK_MONOTONIC)))

    with cache.stream("wake", create) as s:
        created.set()
        while s.read(8):  # the creator drains its own copy
            pass
    cache.stop()


def wakeup(n: int) -> list[float]:
    """Microseconds from a producer's write to a waiting reader in another process having it."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = tmp + "/c"
        created, attached = ctx.Event(), ctx.Event()
        p = ctx.Process(target=_wake_producer, args=(cache_dir, n, created, attached))
        p.start()
        assert created.wait(60), "producer did not start"
        cache = streamcache.StreamCache(cache_dir, window=0)

        def create(w: Any) -> None:
            raise RuntimeError("the reader must attach, not create")

        lat: list[float] = []
        with cache.stream("wake", create, timeout=60) as s:
            attached.set()
            buf = b""
            while len(lat) < n:
                buf += s.read(8 - len(buf))
                if len(buf) == 8:
                    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    lat.append((now - struct.unpack("<q", buf)[0]) / 1000)
                    buf = b""
        p.join(30)
        cache.stop()
        return lat


def _stamp() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _record_futex(which: str, log: list[int]) -> None:
    """Wrap ``ipc.futex.wake`` (stamp before the call) or ``ipc.futex.wait`` (stamp after
    it returns) in this process, for :func:`wake_breakdown` only."""
    from ipc import futex

    if which == "wake":
        wake = futex.wake

        def timed_wake(address: int) -> None:
            log.append(_stamp())
            wake(address)

        futex.wake = timed_wake  # type: ignore[assignment,unused-ignore]
    else:
        wait = futex.wait

        def timed_wait(address: int, expected: int, timeout: float) -> bool:
            r = wait(address, expected, timeout)
            log.append(_stamp())
            return r

        futex.wait = timed_wait  # type: ignore[assignment,unused-ignore]


def _breakdown_producer(
    cache_dir: str, n: int, via_fetch: bool, ready: Any, attached: Any, out: Any
) -> None:
    wakes: list[int] = []
    _record_futex("wake", wakes)
    cache = streamcache.StreamCache(cache_dir, window=0, cleanup_interval=0)

    def create(w: Any) -> None:
        if via_fetch:
            ready.set()
        attached.wait(60)
        for _ in range(n):
            time.sleep(0.002)
            w.write(struct.pack("<q", _stamp()))

    if via_fetch:
        cache.fetch("wake", Sink(), create)
    else:
        with cache.stream("wake", create) as s:
            ready.set()
            while s.read(MiB):
                pass
    cache.wait_producers(60)
    cache.stop()
    out.put(wakes)


def wake_breakdown(n: int, via_fetch: bool) -> dict[str, list[float]]:
    """The wake-up of a reader in another process, in three parts (microseconds):
    ``write``: the producer's write call up to its futex wake call; ``kernel``: that call
    to the reader's futex wait returning; ``reader``: from there to the reader having the
    bytes. Linux only (the futex bell); the stamps wrap ipc.futex in both processes."""
    from ipc import futex

    if not futex.SUPPORTED:
        raise RuntimeError("the breakdown needs the futex bell (Linux)")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = tmp + "/c"
        ready, attached, out = ctx.Event(), ctx.Event(), ctx.Queue()
        p = ctx.Process(
            target=_breakdown_producer, args=(cache_dir, n, via_fetch, ready, attached, out)
        )
        p.start()
        assert ready.wait(60), "producer did not start"
        waits: list[int] = []
        _record_futex("wait", waits)
        cache = streamcache.StreamCache(cache_dir, window=0, cleanup_interval=0)

        def refuse(w: Any) -> None:
            raise RuntimeError("the reader must attach, not create")

        got: list[tuple[int, int]] = []
        with cache.stream("wake", refuse, timeout=60) as s:
            attached.set()
            buf = b""
            while len(got) < n:
                buf += s.read(8 - len(buf))
                if len(buf) == 8:
                    got.append((struct.unpack("<q", buf)[0], _stamp()))
                    buf = b""
        wakes: list[int] = out.get(timeout=60)
        p.join(30)
        cache.stop()
    parts: dict[str, list[float]] = {"write": [], "kernel": [], "reader": [], "total": []}
    for s0, s3 in got:
        i = bisect.bisect_right(wakes, s0)
        if i == len(wakes) or wakes[i] > s3:
            continue  # no ring for this stamp (the reader was not asleep)
        j = bisect.bisect_right(waits, wakes[i])
        if j == len(waits) or waits[j] > s3:
            continue
        s1, s2 = wakes[i], waits[j]
        for k, v in (("write", s1 - s0), ("kernel", s2 - s1), ("reader", s3 - s2)):
            parts[k].append(v / 1000)
        parts["total"].append((s3 - s0) / 1000)
    return parts


def lead(window: int, write: int) -> int:
    """The producer's largest lead (bytes) over a reader that read one chunk and stalled."""
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = tmp + "/c"
        cache = streamcache.StreamCache(cache_dir, window=window, liveness=0.5)
        total = max(window, MiB) * 8

        def create(w: Any) -> None:
            chunk = b"x" * write
            for _ in range(total // write):
                w.write(chunk)

        with cache.stream("lead", create) as s:
            s.read(write)  # one chunk, then stall
            rec = Index(os.path.join(cache_dir, LAYOUT)).read(key_hash("lead"))
            assert rec is not None
            seg = ipc.Segment.open(
                object_name(channel_base(ipc.prefix_for(cache_dir), rec.file), SEGMENT)
            )
            # The producer blocks once it is more than window ahead: it announces that
            # in the segment before sleeping.
            deadline = time.monotonic() + 30
            while not (seg.producer_waiting and seg.offset - write > window):
                if time.monotonic() > deadline:
                    raise TimeoutError("the producer never blocked")
                time.sleep(0.001)
            result = seg.offset - write
            seg.close()
            s.read()  # release the producer
        cache.wait_producers(30)
        cache.stop()
        return result


def print_breakdown(n: int, as_json: bool) -> int:
    creators = (("fetch", True), ("stream", False))
    result = {name: wake_breakdown(n, via_fetch) for name, via_fetch in creators}
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    for name, parts in result.items():
        print(f"{name} creator: {len(parts['total'])} of {n} stamps matched to a ring")
        for k, v in parts.items():
            v = sorted(v)
            if v:
                p99 = v[min(len(v) - 1, int(len(v) * 0.99))]
                print(f"  {k:7s} median {statistics.median(v):7.1f} us   p99 {p99:8.1f} us")
    return 0


def _link_unnamed(fd: int, path: str) -> None:
    """Give the O_TMPFILE ``fd`` the name ``path`` (linkat of /proc/self/fd/N with
    AT_SYMLINK_FOLLOW; needs no privilege). os.link only passes the flag along with a
    directory descriptor: without one it calls link(2), which links the magic symlink
    itself and fails with EXDEV."""
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"self/fd/{fd}", path, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def miss_inodes(rounds: int, where: str) -> dict[str, tuple[float, float]]:
    """Per miss, median (CPU us, wall us) of the file-system work of a small miss in a
    directory under ``where``, without the cache's Python: as today (a data file, a
    record symlink, rename into entries/, unlink of the record); with one inode (an
    O_TMPFILE linked at the record's name, then renamed into entries/); and the floor
    (create and close one empty file). Batches of 50, interleaved."""
    d = tempfile.mkdtemp(dir=where)
    for sub in ("data", "index", "entries", "floor"):
        os.mkdir(os.path.join(d, sub), 0o700)
    value, trailer = os.urandom(4096), os.urandom(16)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    n = [0]

    def seal(fd: int) -> None:
        os.write(fd, value)
        os.fchmod(fd, 0o400)
        os.write(fd, trailer)
        os.utime(fd, ns=(1, 1))
        os.close(fd)

    def today() -> None:
        n[0] += 1
        name = f"{n[0]:x}"
        fd = os.open(f"{d}/data/{name}", flags, 0o600)
        os.setxattr(fd, "user.streamcache.info", b'{"created": 1}')
        os.symlink(f"3 {name} 1 2", f"{d}/index/{name}.rec")
        seal(fd)
        os.rename(f"{d}/data/{name}", f"{d}/entries/{name}")
        os.unlink(f"{d}/index/{name}.rec")

    def one_inode() -> None:
        n[0] += 1
        name = f"{n[0]:x}"
        fd = os.open(f"{d}/data", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        os.setxattr(fd, "user.streamcache.info", b'{"created": 1, "record": "3 1 2"}')
        _link_unnamed(fd, f"{d}/index/{name}.rec")
        seal(fd)
        os.rename(f"{d}/index/{name}.rec", f"{d}/entries/{name}")

    def floor() -> None:
        n[0] += 1
        os.close(os.open(f"{d}/floor/{n[0]:x}", flags, 0o600))

    kinds = {"today": today, "one inode": one_inode, "floor": floor}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for _ in range(rounds):
            for k, f in kinds.items():
                t, w = time.thread_time_ns(), time.perf_counter_ns()
                for _ in range(50):
                    f()
                cpu[k].append((time.thread_time_ns() - t) / 50e3)
                wall[k].append((time.perf_counter_ns() - w) / 50e3)
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)
    return {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in kinds}


def print_miss_inodes(rounds: int) -> int:
    if not hasattr(os, "O_TMPFILE"):
        print("no O_TMPFILE on this platform")
        return 0
    for where in (tempfile.gettempdir(), "/dev/shm"):
        load0 = os.getloadavg()[0]
        try:
            got = miss_inodes(rounds, where)
        except OSError as exc:
            print(f"{where}: not measured ({exc})")
            continue
        print(f"{where}: medians of {rounds} interleaved batches of 50, load {load0:.1f}")
        for k, (c, w) in got.items():
            print(f"  {k:10s} cpu {c:7.1f} us  wall {w:7.1f} us")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--wake-breakdown",
        action="store_true",
        help="only: the wake-up split into the producer's write path, the kernel's wake-up "
        "and the reader's path (fetch and stream() creators)",
    )
    parser.add_argument(
        "--miss-inodes",
        action="store_true",
        help="only: the file-system work of a small miss as today (2 inodes) against one "
        "inode (O_TMPFILE linked at the record's name) and one file's creation",
    )
    args = parser.parse_args()
    if args.miss_inodes:
        return print_miss_inodes(5 if args.quick else 40)
    if args.wake_breakdown:
        return print_breakdown(50 if args.quick else 300, args.json)
    reps = 1 if args.quick else 3
    size = 16 if args.quick else 64
    fan = [fanout(16, size) for _ in range(reps)]
    wake = wakeup(50 if args.quick else 300)
    wake.sort()
    leads = {w: lead(w, 64 * 1024) for w in (0, MiB, 4 * MiB)}
    figures = {
        "fanout_16_procs_seconds_median": statistics.median(fan),
        "fanout_entry_mib": size,
        "wakeup_us_median": statistics.median(wake),
        "wakeup_us_p99": wake[min(len(wake) - 1, int(len(wake) * 0.99))],
        "max_lead_bytes_by_window": {str(k): v for k, v in leads.items()},
        "write_size": 64 * 1024,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"16 processes each receive one cold {size} MiB entry: "
            f"{figures['fanout_16_procs_seconds_median']:.2f} s (median of {reps})"
        )
        print(
            f"wake-up producer write -> reader in another process: median "
            f"{figures['wakeup_us_median']:.0f} us, p99 {figures['wakeup_us_p99']:.0f} us"
        )
        for w, v in leads.items():
            print(
                f"producer lead over a stalled reader, window {w}: {v} bytes "
                f"(limit window + one 64 KiB write = {w + 64 * 1024})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
