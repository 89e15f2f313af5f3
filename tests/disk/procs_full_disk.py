"""The body of tests/disk/test_full_disk.py, run as a script on a really full disk:

- ``tmpfs DIR``: inside a private mount namespace (``unshare -rm``) where DIR is a small
  tmpfs; the disk fills up with a filler file (ENOSPC);
- ``rlimit DIR``: with RLIMIT_FSIZE (EFBIG) in this process, SIGXFSZ ignored.

Prints one line of JSON with what it measured; any failed check is a traceback and exit
status 1. A reader in another process (spawned) streams the entry that fails.
"""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import resource
import signal
import sys
import time
from typing import Any

from procs.budget import bypasses
from xproc import WAIT, HashSink, forbidden_create, payload_bytes, payload_sha, writer_of

import streamcache
from ipc.clock import Clock
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.usage import MAX_BACKOFF

MiB = 2**20
CHUNK = 256 * 1024
ROOM = 2 * MiB  # what the disk takes before it is full (tmpfs) / the file size limit
BIG = 8 * MiB  # more than ROOM: its write fails


def attached_reader(dir: str, attached: Any, q: Any) -> None:
    """Stream ``big`` (which another process creates) until it fails; report."""
    cache = streamcache.StreamCache(dir, max_age=3600, cleanup_interval=0)
    got = 0
    try:
        with cache.stream("big", forbidden_create, timeout=WAIT) as s:
            assert not s.created
            attached.set()
            for chunk in s:
                got += len(chunk)
        q.put(("ended", got, ""))
    except streamcache.CreateError as exc:
        q.put((type(exc).__name__, got, str(exc)))
    finally:
        cache.stop()


def bypassing_fetch(dir: str, now: float, q: Any) -> None:
    """Another process's miss while the disk is full (its wall clock stopped at ``now``,
    however long it took to start): bypasses at once."""
    clock = Clock(wall=lambda: now)
    cache = streamcache.StreamCache(dir, max_age=3600, cleanup_interval=0, clock=clock)
    sink = HashSink()
    res = cache.fetch("elsewhere", sink, writer_of("elsewhere", BIG, CHUNK))
    ok = sink.hexdigest() == payload_sha("elsewhere", BIG, CHUNK)
    q.put((res.created, ok, bypasses(cache)))
    cache.stop()


class Filler:
    """Makes a tmpfs full, but for ``room`` bytes, with a file outside the cache's layout."""

    def __init__(self, dir: str) -> None:
        self.path = os.path.join(dir, "filler")

    def fill(self, room: int = 0) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            block = b"f" * CHUNK
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            while True:  # the last partial page
                try:
                    os.write(fd, b"f" * 4096)
                except OSError:
                    break
            if room:
                os.ftruncate(fd, max(os.fstat(fd).st_size - room, 0))
        finally:
            os.close(fd)

    def remove(self) -> None:
        os.unlink(self.path)


def fill_inodes(dir: str) -> list[str]:
    """Create empty files (and directories) until the tmpfs has no inode left."""
    made: list[str] = []
    while True:
        path = os.path.join(dir, f"inode-{len(made)}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return made
        made.append(path)


def fetched(cache: streamcache.StreamCache, key: str, size: int) -> bool:
    """Fetch ``key`` (checking every byte); whether this call ran create."""
    out = io.BytesIO()
    res = cache.fetch(key, out, writer_of(key, size, CHUNK))
    assert res.written == size and out.getvalue() == payload_bytes(key, size, CHUNK), key
    return res.created


def is_cached(dir: str, key: str) -> bool:
    h = key_hash(key)
    return os.path.exists(os.path.join(dir, LAYOUT, "entries", h[:2], h))


def main(mode: str, dir: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    # The wall clock stands still but for the test's steps: the back-off is on it.
    base, skew = time.time(), [0.0]
    clock = Clock(wall=lambda: base + skew[0])
    cache = streamcache.StreamCache(dir, max_age=3600, cleanup_interval=0, clock=clock)
    backoff = min(3600, MAX_BACKOFF)
    report: dict[str, Any] = {"mode": mode}

    assert fetched(cache, "hit", MiB)  # cached before the disk fills
    filler = Filler(dir)
    if mode == "tmpfs":
        filler.fill(room=ROOM)
    else:
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (ROOM, hard))

    # 1. The entry being written fails: its creator's stream and a reader in another
    # process, both streaming already, get a CreateError saying the disk is full.
    attached, q = spawn.Event(), spawn.Queue()

    seen: list[str] = []

    def create_big(w: Any) -> None:
        """Swallows the write's error and returns: the entry must fail all the same."""
        if not attached.wait(WAIT):
            raise TimeoutError("the other reader never attached")
        try:
            for chunk in (
                payload_bytes("big", BIG, CHUNK)[i : i + CHUNK] for i in range(0, BIG, CHUNK)
            ):
                w.write(chunk)
        except OSError as exc:
            seen.append(str(exc))

    s = cache.stream("big", create_big, timeout=WAIT)
    assert s.created
    child = spawn.Process(target=attached_reader, args=(dir, attached, q), daemon=True)
    child.start()
    got = 0
    try:
        for chunk in s:
            got += len(chunk)
        raise AssertionError("the entry did not fail")
    except streamcache.CreateError as exc:
        text = str(exc)
    finally:
        s.close()
    kind, child_got, child_text = q.get(timeout=WAIT)
    child.join(WAIT)
    assert "disk is full" in text, text
    assert len(seen) == 1 and "disk is full" in seen[0], seen
    assert kind == "CreateError" and "disk is full" in child_text, (kind, child_text)
    assert 0 < got < BIG and 0 < child_got < BIG, (got, child_got)
    assert cache.wait_producers(WAIT)
    report.update(creator_error=text, reader_error=child_text, streamed=[got, child_got])

    # 2. While the condition lasts: hits are served, misses bypass and succeed (in this
    # process and in another), and no entry is made for them.
    assert not fetched(cache, "hit", MiB)
    assert fetched(cache, "miss-1", BIG)
    with cache.stream("miss-2", writer_of("miss-2", BIG, CHUNK)) as s2:
        assert s2.created and s2.read() == payload_bytes("miss-2", BIG, CHUNK)
    assert bypasses(cache) == 2
    other = spawn.Process(target=bypassing_fetch, args=(dir, base, q), daemon=True)
    other.start()
    assert q.get(timeout=WAIT) == (True, True, 1)
    other.join(WAIT)
    assert not is_cached(dir, "miss-1") and not is_cached(dir, "miss-2")
    skew[0] += backoff / 2
    assert fetched(cache, "miss-1", MiB) and not is_cached(dir, "miss-1")
    assert bypasses(cache) == 3

    if mode == "tmpfs":
        # 3. Past the back-off, with the disk still full, the probe sees no room: the
        # miss still bypasses (and succeeds).
        filler.fill()
        skew[0] += backoff + 1
        assert fetched(cache, "miss-1", MiB) and not is_cached(dir, "miss-1")
        assert bypasses(cache) == 4
        assert not fetched(cache, "hit", MiB)
        filler.remove()
    else:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)

    # 4. Space is back: before the back-off passes misses still bypass; after it the next
    # miss is cached again, and so are the others.
    bypassed = bypasses(cache)
    assert fetched(cache, "miss-2", MiB) and bypasses(cache) == bypassed + 1
    skew[0] += backoff + 1
    assert fetched(cache, "miss-2", BIG) and is_cached(dir, "miss-2")
    assert not fetched(cache, "miss-2", BIG)
    assert fetched(cache, "miss-1", BIG) and is_cached(dir, "miss-1")
    assert bypasses(cache) == bypassed + 1

    if mode == "tmpfs":
        # 5. No inode left: the miss cannot even make its lock, record or data file. It
        # bypasses (and marks the disk full) instead of failing.
        made = fill_inodes(dir)
        assert fetched(cache, "no-inode", MiB) and not is_cached(dir, "no-inode")
        assert bypasses(cache) == bypassed + 2
        for path in made:
            os.unlink(path)
        skew[0] += backoff + 1
        assert fetched(cache, "no-inode", MiB) and is_cached(dir, "no-inode")
        report["inodes_filled"] = len(made)
    report["bypassed"] = bypasses(cache)
    cache.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    main(sys.argv[1], sys.argv[2])
