"""The two signals of a producer's life besides its pid: the kernel-held lock on its data
file (:func:`ipc.lock_held`) and the boot's tag (:data:`ipc.BOOT`)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ipc

HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_lock_held_by_another_process_is_seen_and_goes_with_it(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    assert not ipc.lock_held(fd)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert ipc.lock_held(fd)
        assert ipc.lock_held(fd)  # probing took nothing from the holder
        other = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    finally:
        holder.kill()
        holder.wait(60)
    assert not ipc.lock_held(fd), "the kernel let go of a dead holder's lock"
    os.close(fd)


def test_the_boot_tag_is_this_boots_id() -> None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
    except OSError:
        assert ipc.BOOT == "0"
        return
    assert boot_id.replace("-", "")[:8] == ipc.BOOT
