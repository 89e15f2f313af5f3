"""streamcache run: concurrent identical invocations share one run of the command, all
stream its stdout, all exit with its status; real processes, real signals."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from collections.abc import Iterator
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
from xproc import readable

from streamcache.cli.options import duration


@pytest.fixture
def launch() -> Iterator[Launcher]:
    launcher = Launcher()
    yield launcher
    launcher.close()


def read_line(proc: subprocess.Popen[bytes], timeout: float = WAIT) -> bytes:
    """The first line ``proc`` prints, read as soon as it is there (bounded)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not readable(fd, left):
            raise AssertionError(f"no line from {proc.args} in time (got {got!r})")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"{proc.args} ended its output early: {got!r}")
        got += chunk
    return got


def run_args(cache_dir: Path, argv: list[str], *options: str) -> list[str]:
    return ["run", "--dir", str(cache_dir), *options, "--", *argv]


def test_eight_concurrent_invocations_run_the_command_once(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    g = launch.gated(tmp_path)
    # max-age bounds how long all eight may take to start (a late one would find the
    # entry expired and run the command again), and how long the test waits for expiry.
    args = run_args(cache_dir, g.argv(), "--max-age", "12s")
    batch = [launch.start(*args, cwd=tmp_path) for _ in range(8)]
    # All eight read the entry in flight (the command waits for the gate meanwhile).
    wait_until(lambda: readers_of_entries_in_flight(cache_dir) == 8, "8 readers of the entry")
    wait_until(lambda: len(g.runs()) == 1, "the command to start")
    g.open()
    results = finish(batch)
    assert [rc for rc, _, _ in results] == [0] * 8, [err for _, _, err in results]
    outputs = {out for _, out, _ in results}
    assert len(outputs) == 1
    first = outputs.pop()
    assert first.startswith(b"first ") and first.count(b"\n") == 5001
    assert len(g.runs()) == 1

    # After max-age (waited for on the clock, bounded) a second batch runs it again.
    def expired() -> bool:
        return [e["state"] for e in stats(cache_dir)["entries"]] == ["expired"]

    wait_until(expired, "the entry to expire", timeout=20)
    results = finish([launch.start(*args, cwd=tmp_path) for _ in range(8)])
    assert [rc for rc, _, _ in results] == [0] * 8, [err for _, _, err in results]
    outputs = {out for _, out, _ in results}
    assert len(outputs) == 1 and outputs != {first}
    assert len(g.runs()) == 2


def test_a_follower_gets_the_output_while_the_command_runs(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    g = launch.gated(tmp_path)
    args = run_args(cache_dir, g.argv())
    runner = launch.start(*args, cwd=tmp_path)
    wait_until(lambda: len(g.runs()) == 1, "the command to start")
    follower = launch.start(*args, cwd=tmp_path)
    line = read_line(follower)
    # The command is still waiting for its gate: the line was streamed, not buffered.
    assert line.startswith(b"first ")
    assert is_running(g.runs()[0][0]) and not g.gate.exists()
    g.open()
    (rc1, out1, err1), (rc2, out2, err2) = finish([runner, follower])
    assert (rc1, rc2) == (0, 0), (err1, err2)
    assert out1 == line + out2
    assert len(g.runs()) == 1


def test_every_invocation_exits_with_the_command_status_and_a_failure_is_not_cached(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    g = launch.gated(tmp_path)
    args = run_args(cache_dir, g.argv(status=3))
    runner = launch.start(*args, cwd=tmp_path)
    wait_until(lambda: len(g.runs()) == 1, "the command to start")
    follower = launch.start(*args, cwd=tmp_path)
    wait_until(lambda: readers_of_entries_in_flight(cache_dir) == 2, "the follower to attach")
    g.open()
    (rc1, out1, err1), (rc2, out2, err2) = finish([runner, follower])
    assert (rc1, rc2) == (3, 3), (err1, err2)
    assert out1 == out2 and out1.count(b"\n") == 5001  # all of the output, then the status
    assert b"exited with status 3" in err2
    assert stats(cache_dir)["entries"] == []
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 3
    assert len(g.runs()) == 2  # not cached: run again


def test_a_successful_run_is_served_without_running_it(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    g = launch.gated(tmp_path)
    g.open()
    args = run_args(cache_dir, g.argv())
    first = cli(*args, cwd=tmp_path)
    second = cli(*args, cwd=tmp_path)
    assert (first.returncode, second.returncode) == (0, 0)
    assert first.stdout == second.stdout
    assert len(g.runs()) == 1


def test_exit_statuses_of_run_itself(cache_dir: Path, tmp_path: Path) -> None:
    missing = cli(*run_args(cache_dir, ["no-such-command-here"]), cwd=tmp_path)
    assert missing.returncode == 127 and "cannot run" in missing.stderr
    script = tmp_path / "not-executable"
    script.write_text("echo hi\n")
    denied = cli(*run_args(cache_dir, [str(script)]), cwd=tmp_path)
    assert denied.returncode == 126
    killed = cli(*run_args(cache_dir, ["sh", "-c", "kill -KILL $$"]), cwd=tmp_path)
    assert killed.returncode == 128 + signal.SIGKILL
    nothing = cli("run", "--dir", str(cache_dir), "--")
    assert nothing.returncode == 2 and "needs a command" in nothing.stderr


def test_the_key_is_argv_and_cwd_unless_given(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    g = launch.gated(tmp_path)
    g.open()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    args = run_args(cache_dir, g.argv())
    assert cli(*args, cwd=a).returncode == 0
    assert cli(*args, cwd=a).returncode == 0
    assert len(g.runs()) == 1
    assert cli(*args, cwd=b).returncode == 0  # another directory: another key
    assert len(g.runs()) == 2
    keyed = run_args(cache_dir, ["echo", "one"], "--key", "k")
    assert cli(*keyed).stdout == "one\n"
    other = run_args(cache_dir, ["echo", "two"], "--key", "k")
    assert cli(*other).stdout == "one\n"  # the key, not the command, names the entry


@pytest.mark.parametrize("text", ["", "5x", "-1", "1e3", "m", "0", "5 m s", "nan", "inf"])
def test_bad_durations_are_usage_errors(cache_dir: Path, text: str) -> None:
    out = cli("run", "--dir", str(cache_dir), "--max-age", text, "--", "true")
    assert out.returncode == 2 and "--max-age" in out.stderr
    assert not cache_dir.exists()


def test_durations() -> None:
    assert [duration(t) for t in ("90", "90s", "5m", "1h", "1.5m", "250ms", "1d")] == [
        90.0,
        90.0,
        300.0,
        3600.0,
        90.0,
        0.25,
        86400.0,
    ]
    with pytest.raises(argparse.ArgumentTypeError):
        duration("1w")


def test_min_occurrences_runs_the_first_asks_on_their_own(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    g = launch.gated(tmp_path)
    g.open()
    args = run_args(cache_dir, g.argv(), "--min-occurrences", "1")
    outputs = [cli(*args, cwd=tmp_path) for _ in range(3)]
    assert [o.returncode for o in outputs] == [0, 0, 0]
    # The first ask is not cached; the second is, and the third reads it.
    assert len(g.runs()) == 2
    assert outputs[0].stdout != outputs[1].stdout == outputs[2].stdout


def test_the_cache_warnings_show_with_verbose_only(cache_dir: Path) -> None:
    failing = ["sh", "-c", "exit 4"]
    quiet = cli(*run_args(cache_dir, failing))
    assert quiet.returncode == 4 and quiet.stderr == ""
    loud = cli(*run_args(cache_dir, failing, "--verbose"))
    assert loud.returncode == 4 and "failed" in loud.stderr
    assert "Traceback" not in loud.stderr


@pytest.mark.parametrize(
    "option",
    [["--key-preview", "257"], ["--key-preview", "-1"], ["--min-occurrences", "-1"]],
)
def test_bad_numbers_are_usage_errors(cache_dir: Path, option: list[str]) -> None:
    out = cli("run", "--dir", str(cache_dir), *option, "--", "true")
    assert out.returncode == 2 and f"argument {option[0]}" in out.stderr
    assert not cache_dir.exists()
