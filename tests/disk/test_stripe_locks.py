"""Index stripe locks across fork and kill -9: a forked child neither shares nor frees its
parent's stripe, and a holder's death frees it even if it forked. Children live in
tests/disk/procs_stripe_locks.py.
"""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing.context import SpawnContext
from pathlib import Path

import procs_stripe_locks
import pytest
from xproc import expect, readable

import streamcache
from streamcache import StreamCache
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.index import Index

WAIT = 60.0  # a bound for hangs; a busy machine needs time to spawn a checker
KEY = "stripe"


def _index(cache_dir: Path) -> Index:
    return Index(str(cache_dir / LAYOUT))


# -- fork inside another thread's critical section, then kill -9 of the parent -----------------


# Not a bug with the filelock in use: its fork hooks close the held descriptors in the
# child. Kept as a regression test (a filelock without them would hang the stripe).
def test_stripe_is_free_after_holder_killed_even_if_it_forked(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    streamcache.StreamCache(cache_dir, cleanup_interval=0)  # creates the layout
    h = key_hash("k")
    out = spawn.Queue()
    holder = spawn.Process(
        target=procs_stripe_locks.fork_while_locked, args=(str(cache_dir), h), kwargs={"out": out}
    )
    holder.start()
    (grandchild,) = expect(out, "forked")
    try:
        os.kill(holder.pid, signal.SIGKILL)
        # Wait for its death without join(): the grandchild inherited the end of the
        # pipe join() watches, so join() would wait for the grandchild too.
        os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)
        # The holder is dead; its forked child never touched the cache.
        with _index(cache_dir).locked(h, 3):
            pass
    finally:
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass
    holder.join(WAIT)
    assert holder.exitcode == -signal.SIGKILL


# -- a forked child and a held stripe ----------------------------------------------------------


def _child_tries_stripe(root: str, h: str, w: int, r: int) -> None:
    """In a forked child: report whether the stripe of ``h`` is free (0.3 s), then wait for
    the parent's go and take it (bounded by WAIT)."""
    code = 1
    try:
        index = Index(root)
        try:
            with index.locked(h, 0.3):
                os.write(w, b"got-it-while-parent-held\n")
        except TimeoutError:
            os.write(w, b"busy\n")
        os.read(r, 1)
        with index.locked(h, WAIT):
            os.write(w, b"taken\n")
        code = 0
    finally:
        os._exit(code)


def _readline(fd: int, timeout: float = WAIT) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        assert readable(fd, timeout), "the forked child did not answer in time"
        chunk = os.read(fd, 64)
        assert chunk, "the forked child closed its pipe"
        buf += chunk
    return buf.strip()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_does_not_share_a_held_stripe(cache_dir: Path, spawn: SpawnContext) -> None:
    """A process forks while holding a stripe (on its kept descriptor): the child must wait
    for it (a child flocking the inherited open file description would get it at once:
    two holders, two producers), and the child's exit must not free the parent's lock."""
    StreamCache(cache_dir, cleanup_interval=0)
    root = str(cache_dir / LAYOUT)
    index = Index(root)
    h = key_hash(KEY)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = -1
    try:
        with index.locked(h, WAIT):
            pid = os.fork()
            if pid == 0:
                _child_tries_stripe(root, h, from_child_w, to_child_r)
            assert _readline(from_child_r) == b"busy"
            # A second child that exits at once closes its copy of the descriptor.
            pid2 = os.fork()
            if pid2 == 0:
                os._exit(0)
            os.waitpid(pid2, 0)
            checker = spawn.Process(target=_never_locks, args=(root, h), daemon=True)
            checker.start()
            checker.join(WAIT)
            assert checker.exitcode is not None, f"the checker did not end in {WAIT} s"
            assert checker.exitcode == 0, "the stripe was free while this process held it"
        os.write(to_child_w, b"g")
        assert _readline(from_child_r) == b"taken"
        _, status = os.waitpid(pid, 0)
        pid = -1
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
            os.close(fd)


def _never_locks(root: str, h: str) -> None:
    try:
        with Index(root).locked(h, 0.3):
            sys.exit(1)
    except TimeoutError:
        sys.exit(0)
