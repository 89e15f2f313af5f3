"""streamcache demo: worker processes hammering shared keys in a throwaway cache.

Each worker fetches every key ``rounds`` times in its own random order; whichever
fetch comes first for a key produces it (slowly, as an expensive producer would),
the others stream it while it is written. The summary checks what the cache
promises: one producer per key, every fetch got the right bytes, nothing left in
shared memory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import ipc

from ..cache import StreamCache

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

MiB = 1 << 20
WINDOW = 4 * MiB
PRODUCER_PAUSE = 0.002  # seconds per MiB: an "expensive" producer

# The per-worker words of the shared progress array (each written by its worker only).
_KEY, _POS, _SERVED, _ROLE, _WRITTEN, _BLOCKED_US, _CREATE_US, _FETCHES = range(8)
_WORDS = 8
_IDLE, _READING, _PRODUCING = 0, 1, 2

DESCRIPTION = """\
Start worker processes that fetch the same keys from a throwaway cache at once, and
show what the cache does: one producer per key, the others streaming the entry while
it is written, the producer held back to the pace of its readers (back pressure),
and nothing left behind. Progress per worker is redrawn live on a terminal, and
printed every 2 s otherwise. The exit status is 0 only if every check passed.
"""


def _content(key: str, index: int) -> bytes:
    return hashlib.sha256(f"{key}:{index}".encode()).digest() * (MiB // 32)


def expected_digest(key: str, size_mib: int) -> str:
    h = hashlib.sha256()
    for i in range(size_mib):
        h.update(_content(key, i))
    return h.hexdigest()


class _Sink:
    """A worker's dst: hashes what it gets and publishes its position."""

    def __init__(self, words: Any, base: int) -> None:
        self.hash = hashlib.sha256()
        self._words = words
        self._base = base

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self._words[self._base + _POS] += len(data)
        self._words[self._base + _SERVED] += len(data)
        return len(data)


def _worker(
    cache_dir: str, keys: list[str], size_mib: int, rounds: int, me: int, words: Any, out: Any
) -> None:
    import random

    cache = StreamCache(cache_dir, window=WINDOW)
    rng = random.Random(me)
    base = me * _WORDS
    creates: list[str] = []
    mismatches = 0
    digests = {k: expected_digest(k, size_mib) for k in keys}

    def make(key: str) -> Any:
        def create(w: Any) -> None:
            words[base + _ROLE] = _PRODUCING
            started = time.perf_counter()
            try:
                produce(key, w)
            finally:
                words[base + _CREATE_US] += int((time.perf_counter() - started) * 1e6)

        return create

    def produce(key: str, w: Any) -> None:
        for i in range(size_mib):
            chunk = _content(key, i)
            time.sleep(PRODUCER_PAUSE)
            t = time.perf_counter()
            w.write(chunk)
            words[base + _BLOCKED_US] += int((time.perf_counter() - t) * 1e6)
            words[base + _WRITTEN] += len(chunk)

    for _ in range(rounds):
        order = list(range(len(keys)))
        rng.shuffle(order)
        for k in order:
            key = keys[k]
            words[base + _POS] = 0
            words[base + _ROLE] = _READING
            words[base + _KEY] = k
            sink = _Sink(words, base)
            _, created = cache.fetch(key, sink, make(key))
            if created:
                creates.append(key)
            if sink.hash.hexdigest() != digests[key]:
                mismatches += 1
            words[base + _FETCHES] += 1
    words[base + _ROLE] = _IDLE
    words[base + _KEY] = -1
    cache.stop()
    out.put((me, creates, mismatches))


class _Display:
    """Per-worker progress: redrawn in place on a terminal, a line every 2 s otherwise."""

    def __init__(self, workers: int, keys: list[str], size_mib: int, total: int) -> None:
        self.workers = workers
        self.keys = keys
        self.size = size_mib * MiB
        self.total = total
        self.tty = sys.stderr.isatty()
        self.drawn = 0
        self.last = 0.0
        self.started = time.monotonic()

    def _worker_line(self, words: Any, i: int) -> str:
        b = i * _WORDS
        k, role, pos = words[b + _KEY], words[b + _ROLE], words[b + _POS]
        if role == _IDLE or k < 0:
            fetches = words[b + _FETCHES]
            return f"w{i} done ({fetches} fetches)" if fetches else f"w{i} starting"
        what = "producing" if role == _PRODUCING else "reading  "
        width = 20
        filled = min(width, int(width * pos / self.size)) if self.size else width
        return (
            f"w{i} {what} {self.keys[k]:8} [{'#' * filled}{'.' * (width - filled)}] "
            f"{pos / MiB:6.1f}/{self.size / MiB:.0f} MiB"
        )

    def show(self, words: Any, final: bool = False) -> None:
        now = time.monotonic()
        served = sum(words[i * _WORDS + _SERVED] for i in range(self.workers))
        head = (
            f"{now - self.started:6.1f}s  served {served / MiB:8.1f} / {self.total / MiB:.0f} MiB"
        )
        if self.tty:
            lines = [head] + ["  " + self._worker_line(words, i) for i in range(self.workers)]
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            sys.stderr.write(up + "".join(f"\x1b[K{line}\n" for line in lines))
            sys.stderr.flush()
            self.drawn = len(lines)
            return
        if not final and now - self.last < 2.0:
            return
        self.last = now
        parts = "; ".join(self._worker_line(words, i) for i in range(self.workers))
        print(f"{head} | {parts}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    # Imported here, not at the top: every command line builds the parser, which
    # imports this module, and these cost as much as a cache hit.
    import multiprocessing
    import queue
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="streamcache-demo-")
    cache_dir = os.path.join(tmp, "cache")
    keys = [f"blob-{i}" for i in range(args.keys)]
    fetches = args.workers * args.rounds * args.keys
    total = fetches * args.size * MiB
    print(
        f"streamcache demo: {args.workers} worker processes, {args.keys} keys of {args.size} MiB, "
        f"{args.rounds} rounds each, window {WINDOW // MiB} MiB, cache dir {cache_dir}",
        file=sys.stderr,
    )
    ctx = multiprocessing.get_context("spawn")
    words = ctx.RawArray("q", args.workers * _WORDS)
    for i in range(args.workers):
        words[i * _WORDS + _KEY] = -1
    results: Any = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(cache_dir, keys, args.size, args.rounds, i, words, results),
            name=f"streamcache-demo-{i}",
        )
        for i in range(args.workers)
    ]
    display = _Display(args.workers, keys, args.size, total)
    started = time.perf_counter()
    got: list[tuple[int, list[str], int]] = []
    try:
        for w in workers:
            w.start()
        while len(got) < len(workers):
            try:
                got.append(results.get(timeout=0.1))
                continue
            except queue.Empty:
                pass
            display.show(words)
            if not any(w.is_alive() for w in workers) and results.empty():
                display.show(words, final=True)
                print("a worker died; see its error above", file=sys.stderr)
                return 1
        display.show(words, final=True)
        elapsed = time.perf_counter() - started
        for w in workers:
            w.join(30)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join(10)
        leftover = _clean(cache_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(args, keys, words, got, elapsed, leftover)


def _clean(cache_dir: str) -> int:
    """A cleanup pass (what dead workers left goes); the IPC objects still left."""
    if os.path.isdir(cache_dir):
        cache = StreamCache(cache_dir, cleanup_interval=0)
        cache.gc()
    return len(ipc.list_objects(ipc.prefix_for(cache_dir)))


def _summary(
    args: argparse.Namespace,
    keys: list[str],
    words: Any,
    got: list[tuple[int, list[str], int]],
    elapsed: float,
    leftover: int,
) -> int:
    creates = {k: 0 for k in keys}
    mismatches = 0
    for _, made, bad in got:
        for k in made:
            creates[k] += 1
        mismatches += bad
    n = args.workers
    served = sum(words[i * _WORDS + _SERVED] for i in range(n))
    written = sum(words[i * _WORDS + _WRITTEN] for i in range(n))
    blocked = sum(words[i * _WORDS + _BLOCKED_US] for i in range(n)) / 1e6
    creating = sum(words[i * _WORDS + _CREATE_US] for i in range(n)) / 1e6
    fetches = sum(words[i * _WORDS + _FETCHES] for i in range(n))
    print("summary:")
    for k in keys:
        print(f"  {k}: produced {creates[k]} time(s)")
    print(f"  fetches: {fetches}, bytes served: {served} ({served / MiB:.0f} MiB)")
    ratio = served / written if written else 0.0
    print(
        f"  disk bytes written by producers: {written} ({written / MiB:.0f} MiB); "
        f"served {ratio:.1f}x what was written"
    )
    print(f"  corrupt fetches: {mismatches}")
    share = blocked / creating if creating else 0.0
    print(
        f"  back pressure: producers ran {creating:.2f} s, {blocked:.2f} s ({share:.0%}) of it "
        f"in w.write: writing to disk and held back until a reader was within the "
        f"{WINDOW // MiB} MiB window"
    )
    print(f"  wall time: {elapsed:.2f} s, throughput: {served / MiB / elapsed:.0f} MiB/s served")
    print(f"  IPC objects left after cleanup: {leftover}")
    ok = (
        mismatches == 0
        and all(c == 1 for c in creates.values())
        and leftover == 0
        and fetches == n * args.rounds * len(keys)
    )
    print("  result: OK" if ok else "  result: FAILED")
    return 0 if ok else 1
