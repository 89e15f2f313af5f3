"""One detached producer per key: an invocation that finds no entry takes the key's
spawn lock before it starts one, and the detached producer lets go of it once its
command starts, so invocations arriving meanwhile find the entry and read it
themselves. A detached producer that finds the entry there anyway (produced by
another process, or stored) hands it back to its invocation instead of relaying every
byte through one more process, and never runs the command. At 32 concurrent git
clones most invocations had started one, each relaying the whole pack."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import psutil
import pytest
from cli_helpers import Launcher, finish, readers_of_entries_in_flight, wait_until
from test_cli_run import launch, run_args

import streamcache
from streamcache.cli import detached
from streamcache.cli.frames import HANDOFF, STDOUT, end_frame, frame

WAIT = 60.0
_ = launch


def _store(cache_dir: Path, key: str, body: bytes) -> None:
    def create(w: BinaryIO) -> None:
        w.write(frame(STDOUT, body) + end_frame(0))

    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0, registry=None)
    try:
        cache.fetch(key, io.BytesIO(), create)
    finally:
        cache.stop()


def _producer(cache_dir: Path, key: str, command: list[str]) -> subprocess.CompletedProcess[bytes]:
    opts = detached.Options("streamcache run", str(cache_dir), 300.0)
    argv = [sys.executable, "-m", "streamcache.cli.detached", *opts.to_argv(), "-", "-"]
    argv += [key.encode().hex(), "--", *command]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT)


def test_a_detached_producer_hands_a_stored_entry_back(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    _store(cache_dir, "shared-key", b"stored output\n")
    marker = tmp_path / "ran"
    done = _producer(cache_dir, "shared-key", ["touch", str(marker)])
    assert done.returncode == 0, done.stderr
    assert done.stdout == HANDOFF
    assert not marker.exists()  # the command never ran


def test_a_detached_producer_without_an_entry_runs_the_command(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    done = _producer(cache_dir, "fresh-key", ["echo", "made here"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == frame(STDOUT, b"made here\n") + end_frame(0)


@pytest.mark.parametrize("chunk", [HANDOFF, frame(STDOUT, b"x") + end_frame(0)])
def test_an_invocation_reads_the_entry_itself_only_when_handed_back(chunk: bytes) -> None:
    r, w = os.pipe()
    os.write(w, chunk)
    os.close(w)
    out_r, out_w = os.pipe()
    try:
        status = detached._relay(r, detached.Demux(out_w, None), "streamcache run")
    finally:
        os.close(out_w)
    got = os.read(out_r, 100)
    os.close(out_r)
    if chunk == HANDOFF:
        assert (status, got) == (None, b"")
    else:
        assert (status, got) == (0, b"x")


def test_invocations_wait_for_the_one_detached_producer_then_read_themselves(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    import fcntl

    g = launch.gated(tmp_path)
    args = run_args(cache_dir, g.argv())
    invocations = [launch.start(*args, cwd=tmp_path) for _ in range(6)]
    wait_until(lambda: len(g.runs()) == 1, "the command to start")
    # It started: its detached producer let go of the key's spawn lock (every stripe
    # is free, and one was used).
    stripes = list((cache_dir / "command-spawn").iterdir())
    assert stripes
    for path in stripes:
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    # Every invocation reads the entry itself: only the one detached producer exists.
    wait_until(lambda: readers_of_entries_in_flight(cache_dir) >= 6, "six readers")
    detached_producers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "streamcache.cli.detached" in (p.info["cmdline"] or [])
        and str(cache_dir) in (p.info["cmdline"] or [])
    ]
    assert len(detached_producers) == 1, detached_producers
    g.open()
    results = finish(invocations)
    assert all(rc == 0 for rc, _, _ in results), results
    assert len({out for _, out, _ in results}) == 1
    assert len(g.runs()) == 1
    assert len(set(g.parents())) == 1  # one detached producer ran it
