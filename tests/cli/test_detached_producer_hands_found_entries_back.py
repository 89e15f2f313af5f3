"""A detached producer (started by an invocation that found no entry) that finds the
entry there by the time it looks, produced by another process or stored, hands it
back to its invocation (which reads it itself) instead of relaying every byte
through one more process; it never runs the command then. At 32 concurrent git
clones most invocations started one, each relaying the whole pack."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import pytest

import streamcache
from streamcache.cli import detached
from streamcache.cli.frames import HANDOFF, STDOUT, end_frame, frame

WAIT = 60.0


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
    argv = [sys.executable, "-m", "streamcache.cli.detached", *opts.to_argv(), "-"]
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
