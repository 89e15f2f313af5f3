"""A full disk degrades instead of failing (docs/design.md, "Beyond Gitaly"): the entry
being written fails with a CreateError saying the disk is full (its readers, in every
process, get it); new misses bypass the cache and succeed while the condition lasts, hits
are served, and after a back-off (on the cache's clock) with room again misses are cached
again.

Run for real on a small tmpfs in a private mount namespace (ENOSPC), and with
RLIMIT_FSIZE (EFBIG), which needs no privilege."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BODY = str(HERE / "procs_full_disk.py")
TMPFS_SIZE = "24m"
TMPFS_INODES = 2000  # few, so that the test can use them all up


def _run(argv: list[str]) -> dict[str, object]:
    # The script imports the shared child processes of tests/ (xproc, procs.budget).
    path = [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=50, check=False, env=env)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stderr}"
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    return report


def _can_mount_tmpfs(at: Path) -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    at.mkdir()
    probe = f"mount -t tmpfs -o size=1m tmpfs {at}"
    ok = subprocess.run([unshare, "-rm", "sh", "-c", probe], capture_output=True, timeout=10)
    at.rmdir()
    return ok.returncode == 0


def test_full_tmpfs(cache_dir: Path, tmp_path: Path) -> None:
    if not _can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("this kernel lets no unprivileged user mount a tmpfs (unshare -rm)")
    cache_dir.mkdir(mode=0o700)
    # The tmpfs is mounted on the cache dir itself, so the IPC names (derived from its
    # path) are the ones the cache_dir fixture checks for leaks.
    options = f"size={TMPFS_SIZE},nr_inodes={TMPFS_INODES},mode=0700"
    script = f'mount -t tmpfs -o {options} tmpfs "$0" && exec "$@"'
    argv = ["unshare", "-rm", "sh", "-c", script, str(cache_dir)]
    report = _run([*argv, sys.executable, BODY, "tmpfs", str(cache_dir)])
    assert "No space left on device" in str(report["creator_error"])
    assert os.listdir(cache_dir) == [], "the tmpfs went with its namespace"


def test_file_size_limit(cache_dir: Path) -> None:
    report = _run([sys.executable, BODY, "rlimit", str(cache_dir)])
    assert "File too large" in str(report["creator_error"])
