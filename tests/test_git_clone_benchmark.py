"""tools/bench_git.py at toy scale (a 1 MiB repository, 2 clients, 1 round): real git
clones served by real upload-pack, pack-objects and hook processes.

The tool checks every clone itself (HEAD, origin's branch, object count, fsck) and exits 1
when one is wrong; these tests check its table, that a broken clone fails the run, and that
the CPU time of a hook's detached processes is counted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_git.py"
RUN_WAIT = 120.0  # a quiet machine needs about 5 s

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

ROW = re.compile(
    r"^\s*(?P<n>\d+)\s+(?P<hook>yes|no)\s+(?P<cpu>\d+\.\d+)\s+(?P<upload_pack>\d+\.\d+)\s+(?P<wall>\d+\.\d+)\s+"
    r"(?P<runs>[\d/]+)(?:\s+(?P<cpu_ratio>\d+\.\d+)\s+(?P<wall_ratio>\d+\.\d+))?"
    r"\s+(?P<load>\d+\.\d/\d+\.\d)$"
)


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    argv = [sys.executable, str(TOOL), "--size-mb", "1", "--clients", "2", "--rounds", "1"]
    argv += ["--repo-dir", str(tmp_path / "repo"), "--bound", str(RUN_WAIT), *args]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=2 * RUN_WAIT,
        env=dict(os.environ, TMPDIR=str(tmp)),
    )
    assert os.listdir(tmp) == [], "the tool left its scratch directory"
    return result


def rows(stdout: str) -> dict[str, dict[str, str]]:
    found = {}
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            found[m["hook"]] = m.groupdict()
    return found


def test_the_table_shows_fewer_pack_objects_runs_than_clones_with_the_hook(
    tmp_path: Path,
) -> None:
    """3 clients: with the hook's default --min-occurrences 1 the first request of a key
    runs pack-objects on its own and the later ones share a run, so 2 runs, or 1."""
    r = bench(tmp_path, "--clients", "3", "--fsck-all")
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert set(table) == {"no", "yes"}, r.stdout
    assert table["no"]["runs"] == "3", r.stdout
    assert table["yes"]["runs"] in ("1", "2"), r.stdout
    assert table["yes"]["cpu_ratio"] is not None and table["no"]["cpu_ratio"] is None
    assert all(float(t["cpu"]) > 0 and float(t["wall"]) > 0 for t in table.values())
    assert "verified: 6 clones (HEAD, origin/main, object count); git fsck --full: 6" in r.stdout
    assert "goal at N = 3" in r.stdout
    # The second run reuses the generated repository.
    again = bench(tmp_path, "--no-hook")
    assert again.returncode == 0, again.stderr
    assert "(reused)" in again.stdout and "(generated in" in r.stdout


def test_a_hook_that_truncates_the_pack_fails_the_run(tmp_path: Path) -> None:
    hook = tmp_path / "truncate.sh"
    hook.write_text('#!/bin/sh\n"$@" | head -c 2000\n')
    hook.chmod(0o755)
    r = bench(tmp_path, "--hook-command", str(hook))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED: clones failed" in r.stderr, r.stderr
    assert rows(r.stdout) == {}


def test_the_cpu_time_of_a_detached_hook_process_is_counted(tmp_path: Path) -> None:
    """A hook that leaves behind, in a session of its own, a process that uses 0.5 s of CPU
    time: the two clones' server CPU time includes both, as time of orphans."""
    hook = tmp_path / "detach.sh"
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
    hook.write_text(
        "#!/bin/sh\n"
        f"(setsid {sys.executable} -c '{burn}' </dev/null >/dev/null 2>&1 &)\n"
        'exec "$@"\n'
    )
    hook.chmod(0o755)
    r = bench(tmp_path, "--hook-command", str(hook))
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert float(table["yes"]["cpu"]) >= 1.0, r.stdout
    m = re.search(r"hook=yes: CPU [\d.]+ s \(upload-pack [\d.]+ s, detached ([\d.]+) s\)", r.stderr)
    assert m is not None and float(m[1]) >= 1.0, r.stderr
    assert table["yes"]["runs"] == "2", r.stdout
