"""Command line: ``streamcache gc``, ``stats`` and ``demo`` (also ``python -m streamcache``)."""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

import ipc
from ipc.channel import SEGMENT
from ipc.naming import object_name

from .cache import LAYOUT, StreamCache
from .filestore import TRAILER, Filestore
from .index import Index
from .store import channel_base

MiB = 1 << 20


def _cmd_gc(args: argparse.Namespace) -> int:
    cache = StreamCache(args.dir, cleanup_interval=0)
    report = cache.gc()
    if not report.ran:
        print("another process is running cleanup; nothing done", file=sys.stderr)
        return 0
    print(
        f"expired {report.expired}, discarded {report.discarded}, "
        f"data files removed {report.files_removed}, ipc objects removed {report.ipc_removed}"
    )
    return 0


def collect_stats(cache_dir: str) -> dict[str, Any]:
    """Entries, sizes, states and producer progress, read without taking any lock."""
    cache = StreamCache(cache_dir, cleanup_interval=0)
    root = os.path.join(cache.dir, LAYOUT)
    files = Filestore(root)
    index = Index(root)
    entries = []
    now = time.time()
    for key, st in files.entries():
        expires = st.st_mtime_ns / 1e9
        item: dict[str, Any] = {
            "key": key,
            "state": "done",
            "size": max(st.st_size - TRAILER.size, 0),
            "expires_in_s": round(expires - now, 3),
        }
        entries.append(item)
    for key in index.keys():
        rec = index.read(key)
        if rec is None:
            continue
        item = {
            "key": key,
            "state": "writing",
            "producer_pid": rec.pid,
            "producer_alive": ipc.is_alive(rec.pid, rec.start),
            "expires_in_s": round(rec.expires - now, 3),
        }
        try:
            base = channel_base(ipc.prefix_for(cache.dir), rec.file)
            seg = ipc.Segment.open(object_name(base, SEGMENT))
        except ipc.SegmentError:
            pass
        else:
            item["written"] = seg.offset
            item["readers"] = len(seg.reader_list())
            seg.close()
        entries.append(item)
    return {
        "dir": cache.dir,
        "entries": len(entries),
        "bytes": sum(e["size"] for e in entries if e["state"] == "done"),
        "in_flight": sum(1 for e in entries if e["state"] == "writing"),
        "ipc_objects": len(ipc.list_objects(ipc.prefix_for(cache.dir))),
        "items": entries,
    }


def _cmd_stats(args: argparse.Namespace) -> int:
    stats = collect_stats(args.dir)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(
        f"{stats['dir']}: {stats['entries']} entries, {stats['bytes']} bytes finished, "
        f"{stats['in_flight']} in flight, {stats['ipc_objects']} IPC objects"
    )
    for e in stats["items"]:
        if e["state"] == "done":
            detail = f"size={e['size']}"
        else:
            detail = f"pid={e['producer_pid']}"
            if "written" in e:
                detail += f" written={e['written']} readers={e['readers']}"
        print(f"  {e['key'][:16]}  {e['state']:7} {detail} expires_in={e['expires_in_s']}s")
    return 0


# -- demo -----------------------------------------------------------------------------


def _content(key: str, index: int) -> bytes:
    return hashlib.sha256(f"{key}:{index}".encode()).digest() * (MiB // 32)


def expected_digest(key: str, size_mib: int) -> str:
    h = hashlib.sha256()
    for i in range(size_mib):
        h.update(_content(key, i))
    return h.hexdigest()


class _Sink:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.n += len(data)
        return len(data)


def _demo_worker(
    cache_dir: str,
    keys: list[str],
    size_mib: int,
    rounds: int,
    seed: int,
    served: Any,
    blocked_us: Any,
    results: Any,
) -> None:
    cache = StreamCache(cache_dir, window=4 * MiB)
    rng = random.Random(seed)
    creates: list[str] = []
    mismatches = 0

    def make(key: str) -> Any:
        def create(w: Any) -> None:
            for i in range(size_mib):
                chunk = _content(key, i)
                time.sleep(0.002)  # an "expensive" producer
                t = time.perf_counter()
                w.write(chunk)
                with blocked_us.get_lock():
                    blocked_us.value += int((time.perf_counter() - t) * 1e6)

        return create

    for _ in range(rounds):
        order = keys[:]
        rng.shuffle(order)
        for key in order:
            sink = _Sink()
            # No timeout: the creating worker runs create itself (the default path);
            # every wait inside is bounded by the cache's liveness checks.
            written, created = cache.fetch(key, sink, make(key))
            if created:
                creates.append(key)
            if sink.hash.hexdigest() != expected_digest(key, size_mib):
                mismatches += 1
            with served.get_lock():
                served.value += written
    cache.stop()
    results.put({"creates": creates, "mismatches": mismatches})


class _Progress:
    """A bar redrawn in place on a terminal; a line every few seconds otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and not self.tty and now - self.last < 2.0:
            return
        self.last = now
        width = 30
        filled = int(width * done / self.total) if self.total else width
        line = (
            f"  [{'#' * filled}{'.' * (width - filled)}] "
            f"{done / MiB:8.1f} / {self.total / MiB:.0f} MiB served"
        )
        if self.tty:
            print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    tmp = tempfile.mkdtemp(prefix="streamcache-demo-")
    cache_dir = os.path.join(tmp, "cache")
    keys = [f"blob-{i}" for i in range(args.keys)]
    total = args.workers * args.rounds * args.keys * args.size * MiB
    print(
        f"streamcache demo: {args.workers} worker processes, {args.keys} keys of {args.size} MiB, "
        f"{args.rounds} rounds each, cache dir {cache_dir}",
        file=sys.stderr,
    )
    ctx = multiprocessing.get_context("spawn")
    served = ctx.Value("q", 0)
    blocked_us = ctx.Value("q", 0)
    started = time.perf_counter()
    try:
        queue = ctx.Queue()
        workers = [
            ctx.Process(
                target=_demo_worker,
                args=(cache_dir, keys, args.size, args.rounds, seed, served, blocked_us, queue),
            )
            for seed in range(args.workers)
        ]
        for w in workers:
            w.start()
        results: list[dict[str, Any]] = []
        progress = _Progress(total)
        while len(results) < len(workers):
            try:
                results.append(queue.get(timeout=0.2))
                continue
            except Exception:
                if not any(w.is_alive() for w in workers) and queue.empty():
                    print(file=sys.stderr)
                    print("a worker died; see its error above", file=sys.stderr)
                    return 1
            progress.show(served.value)
        progress.show(served.value, final=True)
        for w in workers:
            w.join(60)
        elapsed = time.perf_counter() - started
        creates: dict[str, int] = {k: 0 for k in keys}
        for r in results:
            for k in r["creates"]:
                creates[k] += 1
        mismatches = sum(r["mismatches"] for r in results)
        stats = StreamCache(cache_dir, cleanup_interval=0)
        stats.gc()
        leftover = len(ipc.list_objects(ipc.prefix_for(cache_dir)))
        print("summary:")
        for k in keys:
            print(f"  {k}: produced {creates[k]} time(s)")
        print(f"  fetches: {args.workers * args.rounds * args.keys}, bytes served: {served.value}")
        print(f"  corrupt fetches: {mismatches}")
        in_write = blocked_us.value / 1e6
        print(f"  producer time in w.write (disk, own copy, back pressure): {in_write:.2f} s")
        print(f"  wall time: {elapsed:.2f} s, throughput: {served.value / MiB / elapsed:.0f} MiB/s")
        print(f"  IPC objects left after gc: {leftover}")
        ok = mismatches == 0 and all(n == 1 for n in creates.values()) and leftover == 0
        print("  result: OK" if ok else "  result: FAILED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    default_dir = os.environ.get("STREAMCACHE_DIR")

    gc = sub.add_parser("gc", help="run one cleanup pass on a cache directory")
    gc.add_argument("--dir", required=default_dir is None, default=default_dir)
    gc.set_defaults(func=_cmd_gc)

    stats = sub.add_parser("stats", help="show entries, sizes, states and producer progress")
    stats.add_argument("--dir", required=default_dir is None, default=default_dir)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_cmd_stats)

    demo = sub.add_parser("demo", help="worker processes hammering shared keys in a temp dir")
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--keys", type=int, default=3)
    demo.add_argument("--size", type=int, default=64, help="MiB per key")
    demo.add_argument("--rounds", type=int, default=2)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"streamcache: error: {exc}", file=sys.stderr)
        return 2
    return result
