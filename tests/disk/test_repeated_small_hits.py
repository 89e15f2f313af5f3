"""A small entry served once is served again from this process's copy after one
getxattr of the entry's path, which names the data file the entry was: replaced,
removed, expired or planted over by anyone, it is looked up afresh. Other processes
are real ones (``python -c``), so the copy they change is never this process's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import finished_entries, writing

from streamcache import StreamCache

KEY = "small"
SIZE = 4096
WAIT = 60.0
T0 = 2_000_000_000.0  # a fixed wall clock: both files of a key get the same expiry


def other_process(cache_dir: Path, code: str) -> None:
    """Run ``code`` in a fresh interpreter with ``cache`` open on ``cache_dir``
    (its wall clock fixed at T0, as this process's)."""
    script = "import sys\nfrom streamcache import StreamCache\n"
    script += f"cache = StreamCache(sys.argv[1], clock=lambda: {T0!r}, cleanup_interval=0)\n"
    script += textwrap.dedent(code) + "\ncache.stop()\n"
    subprocess.run([sys.executable, "-c", script, str(cache_dir)], check=True, timeout=WAIT)


class Sink:
    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, b: bytes) -> int:
        self.buf += b
        return len(b)


def fetched(cache: StreamCache, data: bytes) -> tuple[bytes, bool]:
    sink = Sink()
    _, created = cache.fetch(KEY, sink, writing(data))
    return bytes(sink.buf), created


def has_xattrs(where: Path) -> bool:
    probe = where / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except (OSError, AttributeError):
        return False
    finally:
        probe.unlink()
    return True


def seen_cache(cache_dir: Path) -> StreamCache:
    """A cache at T0 that has served the entry of KEY (b"a" * SIZE) as a hit."""
    cache = StreamCache(cache_dir, clock=lambda: T0, cleanup_interval=0)
    assert fetched(cache, b"a" * SIZE) == (b"a" * SIZE, True)
    assert fetched(cache, b"x" * SIZE) == (b"a" * SIZE, False)
    return cache


def test_an_entry_replaced_by_another_process_is_served_anew(cache_dir: Path) -> None:
    cache = seen_cache(cache_dir)
    try:
        # Same size, same expiry (one fixed clock): only the file differs.
        other_process(
            cache_dir,
            f"""
            cache.invalidate({KEY!r})
            class Sink:
                def write(self, b): return len(b)
            def create(w):
                w.write(b"b" * {SIZE})
            assert cache.fetch({KEY!r}, Sink(), create).created
            """,
        )
        assert fetched(cache, b"x" * SIZE) == (b"b" * SIZE, False)
        assert fetched(cache, b"x" * SIZE) == (b"b" * SIZE, False)
    finally:
        cache.stop()


def test_an_entry_removed_by_another_process_is_created_afresh(cache_dir: Path) -> None:
    cache = seen_cache(cache_dir)
    try:
        other_process(cache_dir, f"assert cache.invalidate({KEY!r})")
        assert fetched(cache, b"c" * SIZE) == (b"c" * SIZE, True)
    finally:
        cache.stop()


def test_a_seen_entry_expires_on_time(cache_dir: Path) -> None:
    now = [T0]
    cache = StreamCache(cache_dir, clock=lambda: now[0], max_age=60, cleanup_interval=0)
    try:
        assert fetched(cache, b"a" * SIZE) == (b"a" * SIZE, True)
        assert fetched(cache, b"x" * SIZE) == (b"a" * SIZE, False)
        now[0] = T0 + 59.9
        assert fetched(cache, b"x" * SIZE) == (b"a" * SIZE, False)
        now[0] = T0 + 60.0
        assert fetched(cache, b"d" * SIZE) == (b"d" * SIZE, True)
    finally:
        cache.stop()


def test_a_symlink_planted_over_a_seen_entry_is_never_followed(
    cache_dir: Path, tmp_path: Path
) -> None:
    cache = seen_cache(cache_dir)
    try:
        (entry,) = finished_entries(cache_dir)
        decoy = tmp_path / "decoy"
        shutil.copy2(entry, decoy)  # the same bytes, trailer and tag, elsewhere
        entry.unlink()
        entry.symlink_to(decoy)
        assert fetched(cache, b"e" * SIZE) == (b"e" * SIZE, True)
        assert not entry.is_symlink()
        assert decoy.read_bytes()[:SIZE] == b"a" * SIZE  # left alone
    finally:
        cache.stop()


def test_a_file_without_a_tag_is_read_at_every_hit(cache_dir: Path) -> None:
    cache = seen_cache(cache_dir)
    try:
        (entry,) = finished_entries(cache_dir)
        expiry = entry.stat().st_mtime_ns  # an entry's mtime is its expiry time
        fresh = entry.with_name("fresh")
        shutil.copyfile(entry, fresh)  # the same bytes and trailer, no attribute
        os.utime(fresh, ns=(expiry, expiry))
        os.replace(fresh, entry)
        for _ in range(2):
            assert fetched(cache, b"x" * SIZE) == (b"a" * SIZE, False)
        with open(entry, "r+b") as f:  # changed in place: served as it now is
            f.write(b"z")
        os.utime(entry, ns=(expiry, expiry))
        assert fetched(cache, b"x" * SIZE) == (b"z" + b"a" * (SIZE - 1), False)
    finally:
        cache.stop()


CHILD = """
import sys
from streamcache import StreamCache
cache = StreamCache(sys.argv[1], cleanup_interval=0)
class Sink:
    def write(self, b): return len(b)
def create(w):
    w.write(b"a" * 4096)
for _ in range(10 + int(sys.argv[2])):
    cache.fetch("k", Sink(), create)
cache.stop()
"""


def syscalls(cache_dir: Path, hits: int, out: Path) -> int:
    cmd = ["strace", "-f", "-c", "-U", "name,calls", "-o", str(out), sys.executable]
    cmd += ["-c", CHILD, str(cache_dir), str(hits)]
    subprocess.run(cmd, check=True, timeout=WAIT, stdout=subprocess.DEVNULL)
    total = 0
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            total += int(parts[1])
    return total


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_repeated_small_hit_makes_one_system_call(tmp_path: Path, cache_dir: Path) -> None:
    if not has_xattrs(tmp_path):
        pytest.skip("the file system keeps no extended attributes: every hit reads")
    n = 500
    one = syscalls(cache_dir, n, tmp_path / "one.txt")
    two = syscalls(cache_dir, 2 * n, tmp_path / "two.txt")
    per_hit = (two - one) / n
    assert per_hit <= 1.2, f"{per_hit:.2f} system calls per hit"
