"""Helpers of the CLI tests: ``python -m streamcache`` as a real subprocess, a gated
command for ``streamcache run`` to share, and bounded waits on a cache's stats."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamcache.cli.stats import cache_root, collect

WAIT = 30.0

# The command that `streamcache run` shares in the tests. It appends its pid to the
# counter file (one line per run), prints a first line at once, waits (bounded) for the
# gate file, prints the rest (a token unique to this run, so identical outputs prove one
# run) and exits with the given status. With a fourth argument it also starts a child
# that sleeps (its pid after the command's in the counter file): the process group.
COMMAND = r"""
import os, subprocess, sys, time, uuid
counter, gate, status = sys.argv[1:4]
with open(counter + ".parents", "a") as f:
    f.write(f"{os.getppid()}\n")
pids = [os.getpid()]
if len(sys.argv) > 4:
    pids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]).pid)
with open(counter, "a") as f:
    f.write(" ".join(map(str, pids)) + "\n")
token = uuid.uuid4().hex
sys.stdout.write(f"first {token}\n")
sys.stdout.flush()
deadline = time.monotonic() + 600  # a bound for a test that never opens the gate
while not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.005)
for i in range(5000):
    sys.stdout.write(f"{token} {i}\n")
sys.stdout.flush()
sys.exit(int(status))
"""


class Gated:
    """One test's gated command: ``argv(status)`` to run it, ``open()`` the gate."""

    def __init__(self, tmp: Path) -> None:
        self.script = tmp / "command.py"
        self.script.write_text(COMMAND)
        self.counter = tmp / "counter"
        self.gate = tmp / "gate"

    def argv(self, status: int = 0, *, child: bool = False) -> list[str]:
        argv = [sys.executable, str(self.script), str(self.counter), str(self.gate), str(status)]
        return [*argv, "child"] if child else argv

    def open(self) -> None:
        self.gate.touch()

    def runs(self) -> list[list[int]]:
        """The pids of each run so far (the command's, then its child's)."""
        if not self.counter.exists():
            return []
        return [[int(p) for p in line.split()] for line in self.counter.read_text().splitlines()]

    def parents(self) -> list[int]:
        """The pid of the process that started each run (an invocation, or the detached
        producer one started)."""
        path = Path(f"{self.counter}.parents")
        return [int(line) for line in path.read_text().split()] if path.exists() else []


def env() -> dict[str, str]:
    """The invocations' environment: this interpreter's path, and faulthandler on, so
    an invocation that hangs shows its threads' stacks when ``finish`` aborts it."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONFAULTHANDLER": "1"}


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamcache", *args]


def cli(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m streamcache ARGS`` run to its end."""
    return subprocess.run(
        cli_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env(), cwd=cwd
    )


class Launcher:
    """Starts ``python -m streamcache`` processes and gated commands for one test, and
    at its end (passed or failed) kills whatever is left of them: the invocations and
    the commands' process groups."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.commands: list[Gated] = []

    def gated(self, tmp: Path) -> Gated:
        g = Gated(tmp)
        self.commands.append(g)
        return g

    def start(
        self,
        *args: str,
        cwd: Path | None = None,
        own_group: bool = False,
        interruptible: bool = False,
    ) -> subprocess.Popen[bytes]:
        """``python -m streamcache ARGS`` started (stdout and stderr piped); with
        ``own_group`` in a process group of its own, as a shell's job is. With
        ``interruptible``, SIGINT is at its default in it, as in a command started
        from a terminal: a test run started in the background by a shell without job
        control inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
        handler (the command ignores SIGINT, as it should there)."""
        proc = subprocess.Popen(
            cli_cmd(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env(),
            cwd=cwd,
            start_new_session=own_group,
            preexec_fn=_default_sigint if interruptible else None,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for g in self.commands:
            for pids in g.runs():
                with contextlib.suppress(OSError):
                    os.killpg(pids[0], signal.SIGKILL)  # its own group: it and its child
        for p in self.procs:
            p.communicate(timeout=WAIT)
        # The processes that ran the commands end once their command did (and clean up).
        for g in self.commands:
            for pid in g.parents():
                wait_until(lambda pid=pid: not is_running(pid), f"process {pid} to end")


def wait_until(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.01)


def stats(cache_dir: Path) -> dict[str, Any]:
    """The stats document of ``cache_dir`` (what ``stats --json`` prints), in-process."""
    return collect(*cache_root(str(cache_dir)))


def readers_of_entries_in_flight(cache_dir: Path) -> int:
    if not (cache_dir / "v2").is_dir():
        return 0
    return sum(len(e["readers"]) for e in stats(cache_dir)["entries"] if e["state"] == "writing")


def finish(
    procs: list[subprocess.Popen[bytes]], timeout: float = WAIT
) -> list[tuple[int, bytes, bytes]]:
    """(exit status, stdout, stderr) of each process, waiting at most ``timeout`` for all.

    Every process's output is read at once, as a terminal or a shell pipeline would: read
    one after another, an unread invocation could block in a write to its full stdout
    (the inline creator then holds create in that write, a documented limitation) while
    the one being read waits for the bytes it would produce."""
    deadline = time.monotonic() + timeout
    outputs: dict[int, tuple[bytes, bytes]] = {}

    def read(i: int, p: subprocess.Popen[bytes]) -> None:
        try:
            outputs[i] = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass

    readers = [threading.Thread(target=read, args=(i, p)) for i, p in enumerate(procs)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    results = []
    for i, p in enumerate(procs):
        if i not in outputs:
            p.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack
            try:
                _, err = p.communicate(timeout=WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            text = err.decode(errors="replace")
            raise AssertionError(f"invocation {p.args} did not end in time:\n{text}")
        out, err = outputs[i]
        results.append((p.returncode, out, err))
    return results


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reaped by nobody here, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
