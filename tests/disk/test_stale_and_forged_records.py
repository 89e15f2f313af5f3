"""A record from before a reboot, or one naming a live process that is not producing,
never makes anyone wait (docs/design.md, "Failure model"): the producer is identified by
boot, pid and start time, and is alive only while it holds the flock it took on its data
file when it made it.

Real processes throughout: a sleeping child named by a forged record, and a producer that
execs (same pid, same start time, its descriptors closed) in the middle of an entry, which
leaves readers with a live pid and no producer.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import data_files, index_records, writing

import ipc
from ipc.channel import unlink_channel
from streamcache import ProducerDied, StreamCache
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.filestore import Filestore
from streamcache.disk.index import Index, Record

KEY = "forged"
BOUND = 60.0  # catches a hang only; the waits below end within liveness (0.2 s)


def _plant(cache_dir: Path, pid: int, start: float, boot: str, *, lock: bool) -> tuple[str, int]:
    """A record of ``KEY`` naming process (``pid``, ``start``) of boot ``boot``, and its
    data file, with half an entry in it; locked by this process if ``lock`` (the
    descriptor is returned, to be closed by the caller)."""
    root = str(cache_dir / LAYOUT)
    name = f"{os.urandom(8).hex()}-{pid:x}-0"
    path = Filestore(root).path(name)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.write(fd, b"half an entry")
    if lock:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
    index = Index(root)
    rec = Record(key_hash(KEY), name, pid, start, time.time() + 3600, boot)
    os.makedirs(os.path.dirname(index.record_path(rec.key)), mode=0o700, exist_ok=True)
    index.write(rec)
    return name, fd


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A long-lived process that has nothing to do with the cache."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(BOUND)


def _fresh_fetch(cache: StreamCache) -> tuple[float, bool, bytes]:
    out = io.BytesIO()
    started = time.monotonic()
    res = cache.fetch(KEY, out, writing(b"whole"), timeout=BOUND)
    return time.monotonic() - started, res.created, out.getvalue()


def test_a_forged_record_naming_a_live_process_is_not_waited_on(
    cache_dir: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """The record names a live process (the right pid, start time and boot) whose data
    file nobody locks: the fetch creates afresh at once. (Before the lock, it attached
    and waited for its timeout.)"""
    cache = StreamCache(cache_dir, cleanup_interval=0, liveness=0.2, registry=None)
    pid = sleeper.pid
    name, fd = _plant(cache_dir, pid, ipc.start_time(pid), ipc.BOOT, lock=False)
    os.close(fd)
    try:
        took, created, got = _fresh_fetch(cache)
    finally:
        cache.stop()
    assert (created, got) == (True, b"whole")
    assert took < BOUND / 2
    assert name not in [p.name for p in data_files(cache_dir)], "the forged entry is gone"
    assert sleeper.poll() is None, "nothing was done to the process it named"


def test_a_record_of_another_boot_is_dead_even_with_a_live_locked_producer(
    cache_dir: Path,
) -> None:
    """The record names this very process, with its start time, and the data file is
    locked; only the boot differs (start times count from boot, so after a reboot a new
    process can match both): the entry is discarded and created afresh. With this
    boot's tag the same record is live, and the fetch waits on it."""
    me = ipc.current_process()
    other_boot = "0badb007" if ipc.BOOT != "0badb007" else "0badb008"
    cache = StreamCache(cache_dir, cleanup_interval=0, liveness=0.2, registry=None)
    try:
        name, fd = _plant(cache_dir, me.pid, me.start, other_boot, lock=True)
        try:
            took, created, got = _fresh_fetch(cache)
        finally:
            os.close(fd)
        assert (created, got) == (True, b"whole")
        assert took < BOUND / 2
        assert name not in [p.name for p in data_files(cache_dir)]
        cache.invalidate(KEY)

        # The control: this boot's tag, everything else the same, is a live producer.
        name, fd = _plant(cache_dir, me.pid, me.start, ipc.BOOT, lock=True)
        try:
            with pytest.raises(TimeoutError):
                cache.fetch(KEY, io.BytesIO(), writing(b"whole"), timeout=1.0)
        finally:
            os.close(fd)
        cache.invalidate(KEY)
        # The control's fetch made the entry's channel, which only a producer unlinks.
        unlink_channel(cache._store.channel_base(name))
    finally:
        cache.stop()
    assert index_records(cache_dir) == []


def test_gc_discards_a_forged_record(cache_dir: Path, sleeper: subprocess.Popen[bytes]) -> None:
    cache = StreamCache(cache_dir, cleanup_interval=0, registry=None)
    try:
        pid = sleeper.pid
        _, fd = _plant(cache_dir, pid, ipc.start_time(pid), ipc.BOOT, lock=False)
        os.close(fd)
        assert cache.peek(KEY) is None
        report = cache.gc()
    finally:
        cache.stop()
    assert report.discarded == 1
    assert index_records(cache_dir) == [] and data_files(cache_dir) == []


# A producer that stops producing while its process lives on: it execs (pid and start
# time unchanged; every descriptor of the cache is close-on-exec, so the lock goes).
EXEC_PRODUCER = textwrap.dedent(
    r"""
    import os, sys, streamcache
    cache_dir, key = sys.argv[1], sys.argv[2]
    def create(w):
        w.write(b"x" * 1000)
        print("wrote", flush=True)
        sys.stdin.readline()  # the test's reader has attached
        os.execv(sys.executable, [sys.executable, "-c", "import sys; sys.stdin.read()"])
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0, registry=None)
    with cache.stream(key, create, timeout=60) as s:
        s.read()  # a reader until the exec: the entry takes new readers
    """
)


def test_readers_of_a_producer_that_let_go_notice_within_liveness(cache_dir: Path) -> None:
    """The producer's process lives on, with the same pid and start time, but holds no
    lock: the attached reader gets ProducerDied within a few liveness periods (not its
    timeout), and the next fetch creates afresh."""
    proc = subprocess.Popen(
        [sys.executable, "-c", EXEC_PRODUCER, str(cache_dir), KEY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    cache = StreamCache(cache_dir, cleanup_interval=0, liveness=0.2, registry=None)
    try:
        assert proc.stdout.readline() == "wrote\n"
        with cache.stream(KEY, writing(b"never"), timeout=BOUND) as s:
            assert not s.created
            assert s.read(1000) == b"x" * 1000
            start = ipc.start_time(proc.pid)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            # The exec'd process is the same process to a pid check (start time too).
            deadline = time.monotonic() + BOUND
            while proc.poll() is None and time.monotonic() < deadline:
                with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                    if b"streamcache" not in f.read():
                        break
                time.sleep(0.01)
            if proc.poll() is not None:  # (an exec that failed: say how)
                pytest.fail(f"the producer exited ({proc.returncode}): {proc.stderr.read()}")
            assert ipc.is_alive(proc.pid, start)
            started = time.monotonic()
            with pytest.raises(ProducerDied, match="holds no lock"):
                s.read()
            took = time.monotonic() - started
        assert took < BOUND / 2
        took, created, got = _fresh_fetch(cache)
        assert (created, got) == (True, b"whole")
        assert proc.poll() is None
    finally:
        cache.stop()
        proc.kill()
        proc.wait(BOUND)


def test_a_record_of_the_previous_format_is_garbage(cache_dir: Path) -> None:
    """A version 3 record (no boot id; left by an older release) naming this live process
    and a locked data file is not trusted: the fetch creates afresh."""
    me = ipc.current_process()
    cache = StreamCache(cache_dir, cleanup_interval=0, liveness=0.2, registry=None)
    try:
        name, fd = _plant(cache_dir, me.pid, me.start, ipc.BOOT, lock=True)
        record = Path(Index(str(cache_dir / LAYOUT)).record_path(key_hash(KEY)))
        record.unlink()
        record.symlink_to(f"3 {name} {me.start:.3f} 9999999999")
        try:
            took, created, got = _fresh_fetch(cache)
        finally:
            os.close(fd)
    finally:
        cache.stop()
    assert (created, got) == (True, b"whole")
    assert took < BOUND / 2
    assert index_records(cache_dir) == []
