"""streamcache run: the command runs detached from every invocation, so whatever
happens to one invocation (a signal, SIGKILL, its reader going away), the first one
included, ends only that invocation's delivery; the command is stopped only when no
invocation is left reading it. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from cli_helpers import (
    WAIT,
    Launcher,
    cli,
    finish,
    is_running,
    readers_of_entries_in_flight,
    stats,
    wait_until,
)
from test_cli_run import launch, read_line, run_args

_ = launch


def start_pair(
    launch: Launcher,
    cache_dir: Path,
    tmp_path: Path,
    *,
    child: bool = False,
    own_group: bool = False,
) -> tuple[list[str], subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """The gated command's args (``child``: the command starts a child of its own), a
    first invocation (it starts the command) and a second one attached to the entry in
    flight."""
    g = launch.commands[-1]
    args = run_args(cache_dir, g.argv(child=child))
    one = launch.start(*args, cwd=tmp_path, own_group=own_group)
    wait_until(lambda: len(g.runs()) == 1, "the command to start")
    two = launch.start(*args, cwd=tmp_path)
    wait_until(lambda: readers_of_entries_in_flight(cache_dir) >= 2, "the second to attach")
    return args, one, two


def whole(out: bytes) -> bool:
    return out.startswith(b"first ") and out.count(b"\n") == 5001


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE])
def test_a_signal_to_the_first_invocation_ends_only_its_delivery(
    launch: Launcher, cache_dir: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    g = launch.gated(tmp_path)
    args, one, two = start_pair(launch, cache_dir, tmp_path, own_group=True)
    # To its whole process group, as a terminal's Ctrl-C or a job control signal is.
    os.killpg(one.pid, signum)
    assert one.wait(WAIT) == 128 + signum
    assert is_running(g.runs()[0][0])  # the command goes on
    g.open()
    ((rc, out, err),) = finish([two])
    assert rc == 0 and whole(out), err
    assert len(g.runs()) == 1
    assert cli(*args, cwd=tmp_path).stdout.encode() == out  # stored whole: a hit


def test_a_killed_first_invocation_leaves_the_others_whole(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    g = launch.gated(tmp_path)
    args, one, two = start_pair(launch, cache_dir, tmp_path)
    one.kill()
    one.wait(WAIT)
    assert is_running(g.runs()[0][0])
    g.open()
    ((rc, out, err),) = finish([two])
    assert rc == 0 and whole(out), err
    assert cli(*args, cwd=tmp_path).stdout.encode() == out
    assert len(g.runs()) == 1


def test_a_first_invocation_whose_reader_left_leaves_the_others_whole(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    g = launch.gated(tmp_path)
    _, one, two = start_pair(launch, cache_dir, tmp_path)
    assert read_line(one).startswith(b"first ")
    assert one.stdout is not None
    one.stdout.close()  # its next write gets EPIPE
    g.open()
    ((rc, out, err),) = finish([two])
    assert rc == 0 and whole(out), err
    assert one.wait(WAIT) == 128 + signal.SIGPIPE
    assert len(g.runs()) == 1


def test_the_command_stops_once_no_invocation_is_left(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    g = launch.gated(tmp_path)
    args, one, two = start_pair(launch, cache_dir, tmp_path, child=True)
    one.kill()
    two.send_signal(signal.SIGTERM)
    assert two.wait(WAIT) == 128 + signal.SIGTERM
    g.open()  # its next output finds nobody reading: its process group is stopped
    for pid in g.runs()[0]:
        wait_until(lambda pid=pid: not is_running(pid), f"process {pid} of the command to end")
    wait_until(lambda: stats(cache_dir)["entries"] == [], "the failed entry to go")
    assert cli(*args, cwd=tmp_path).returncode == 0  # runs afresh
    assert len(g.runs()) == 2
