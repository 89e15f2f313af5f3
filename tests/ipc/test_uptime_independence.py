"""No test, and nothing in the cache, may depend on how long the machine has been up.

Process start times count from boot (ipc.liveness), so on a freshly booted machine
they are small: a test that made a "different" start time as ``start - 1000`` got a
negative one, which a segment cannot hold (``ValueError: memoryview: invalid value
for format 'Q'``). Here the pid-reuse test of tests/test_cross_process.py runs for
real a few seconds after boot: in a child process in a new time namespace
(``unshare --time``) whose boot time is moved forward, so that it, and the processes
it starts, see an uptime of a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UPTIME = 5  # seconds the child sees the machine up when it starts


def uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def child_env() -> dict[str, str]:
    """This interpreter's environment and import path, without this pytest's own
    variables (the child runs a pytest of its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return env


def just_booted(*cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a new time namespace whose boot time is UPTIME seconds ago."""
    offset = -max(int(uptime()) - UPTIME, 0)
    argv = ["unshare", "--time", f"--boottime={offset}", *cmd]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=REPO
    )


@pytest.fixture(scope="module")
def time_namespace() -> None:
    """Skip where time namespaces cannot be made: no util-linux unshare with --time, a
    kernel without CONFIG_TIME_NS (before 5.6), or not allowed (needs CAP_SYS_ADMIN)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("time namespaces are Linux's")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) (util-linux) on PATH")
    probe = just_booted(sys.executable, "-c", "import ipc; print(ipc.current_process().start)",
                        timeout=60)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"`unshare --time --boottime` is not permitted here: {probe.stderr.strip()}")
    start = float(probe.stdout)
    # The child's own start time is its uptime at birth: small, where a start time
    # 1000 s earlier would be before boot.
    assert 0 < start < UPTIME + 60, f"the child started {start} s after boot"


@pytest.mark.timeout(300)
def test_pid_reuse_is_not_life_a_few_seconds_after_boot(
    time_namespace: None, tmp_path: Path
) -> None:
    """Both variants of the pid-reuse test (this process's own identity, another live
    process's) pass when every start time involved is a few seconds."""
    test = "tests/test_cross_process.py::test_pid_reuse_is_not_life"
    out = just_booted(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
        "--basetemp", str(tmp_path / "basetemp"), test,
        timeout=240,
    )  # fmt: skip
    report = out.stdout[-4000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    assert "2 passed" in out.stdout, report
