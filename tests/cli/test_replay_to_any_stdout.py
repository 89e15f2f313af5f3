"""An invocation of ``streamcache run`` that reads a shared command's entry (a hit, or a
follower of the entry in flight) replays its frames with the payloads sent from the
entry's data file to its stdout and stderr (sendfile), or, where a descriptor refuses
that (a file opened with O_APPEND), read and written. Whatever its stdout is (a pipe,
a regular file, a socket, an appending file), every invocation gets the same bytes,
the same stderr and the same exit status as the first one (which the detached producer
relays to): in flight and then as a hit, with the producer killed mid-run, and with a
command that fails. Real processes; a last test checks under strace that a hit's
payload never goes through the invocation."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import WAIT, cli, cli_cmd, env, readers_of_entries_in_flight, wait_until

import streamcache
from streamcache.cli.run import default_key

MiB = 1 << 20
KINDS = ["pipe", "file", "socket", "append"]

# The shared command: its pid and its parent's (the detached producer) to the counter
# file, a first line and a first stderr line, then (once the gate file is there,
# bounded) 3 MiB and a bit of stdout in writes of several sizes, a stderr line after
# each, and the given status.
COMMAND = r"""
import os, sys, time
counter, gate, status = sys.argv[1:4]
with open(counter, "a") as f:
    f.write(f"{os.getpid()} {os.getppid()}\n")
out = sys.stdout.buffer
out.write(b"first\n"); out.flush()
sys.stderr.write("progress 0\n"); sys.stderr.flush()
deadline = time.monotonic() + 600
while not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.005)
block = bytes(range(256)) * 4096
for i, size in enumerate([1, 1 << 20, 70000, 3 << 19, 5]):
    out.write(block[i : i + size]); out.flush()
    sys.stderr.write(f"progress {i + 1}\n"); sys.stderr.flush()
sys.exit(int(status))
"""


def expected_stdout() -> bytes:
    block = bytes(range(256)) * 4096
    sizes = [1, 1 << 20, 70000, 3 << 19, 5]
    return b"first\n" + b"".join(block[i : i + n] for i, n in enumerate(sizes))


PROGRESS = b"".join(b"progress %d\n" % i for i in range(6))


class Invocation:
    """``streamcache run`` started with its stdout a descriptor of ``kind``, and what
    collects what its stdout and stderr get."""

    def __init__(self, kind: str, args: list[str], where: Path, name: str) -> None:
        self.kind = kind
        self.out = bytearray()
        self._path = where / f"stdout-{name}"
        self._drain: threading.Thread | None = None
        if kind in ("file", "append"):
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            mine = os.open(self._path, flags | (os.O_APPEND if kind == "append" else 0), 0o600)
        elif kind == "pipe":
            r, mine = os.pipe()
            self._reader = r
        else:
            a, b = socket.socketpair()
            mine = os.dup(a.fileno())
            a.close()
            self._sock = b
        try:
            self.proc = subprocess.Popen(
                cli_cmd(*args), stdout=mine, stderr=subprocess.PIPE, env=env(), cwd=where
            )
        finally:
            os.close(mine)
        if kind == "pipe":
            self._drain = threading.Thread(target=self._take, args=(self._read_pipe,))
        elif kind == "socket":
            self._drain = threading.Thread(target=self._take, args=(self._sock.recv,))
        if self._drain is not None:
            self._drain.daemon = True
            self._drain.start()

    def _read_pipe(self, n: int) -> bytes:
        return os.read(self._reader, n)

    def _take(self, read: object) -> None:
        assert callable(read)
        while chunk := read(1 << 18):
            self.out += chunk

    def got(self) -> bytes:
        """What its stdout got so far."""
        if self._drain is None:
            return self._path.read_bytes() if self._path.exists() else b""
        return bytes(self.out)

    def finish(self) -> tuple[int, bytes, bytes]:
        """Its exit status, stdout and stderr, once it ended (bounded)."""
        try:
            _, err = self.proc.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"{self.kind}: the invocation did not end in time") from None
        if self._drain is not None:
            self._drain.join(WAIT)
            assert not self._drain.is_alive(), f"{self.kind}: stdout never ended"
        if self.kind == "pipe":
            os.close(self._reader)
        elif self.kind == "socket":
            self._sock.close()
        return self.proc.returncode, self.got(), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


class Shared:
    """One test's command, its gate and counter, and the invocations it started (all
    killed at its end, with what is left of the command)."""

    def __init__(self, tmp: Path, cache_dir: Path, status: int) -> None:
        self.tmp = tmp
        script = tmp / "command.py"
        script.write_text(COMMAND)
        self.counter = tmp / "counter"
        self.gate = tmp / "gate"
        argv = [sys.executable, str(script), str(self.counter), str(self.gate), str(status)]
        self.args = ["run", "--dir", str(cache_dir), "--", *argv]
        self.started: list[Invocation] = []

    def start(self, kind: str) -> Invocation:
        inv = Invocation(kind, self.args, self.tmp, f"{kind}-{len(self.started)}")
        self.started.append(inv)
        return inv

    def runs(self) -> list[tuple[int, int]]:
        """(the command's pid, its parent's) of each run so far."""
        if not self.counter.exists():
            return []
        lines = self.counter.read_text().splitlines()
        return [(int(a), int(b)) for a, b in (line.split() for line in lines)]

    def close(self) -> None:
        for inv in self.started:
            inv.kill()
        for pid, _ in self.runs():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def shared(tmp_path: Path, cache_dir: Path, request: pytest.FixtureRequest) -> Iterator[Shared]:
    s = Shared(tmp_path, cache_dir, getattr(request, "param", 0))
    yield s
    s.close()


def first_and_followers(shared: Shared, cache_dir: Path) -> tuple[Invocation, list[Invocation]]:
    """The first invocation (its stdout a pipe: the detached producer relays to it) and
    one follower of each kind, all attached to the entry in flight, each stdout holding
    the first line, while the command waits for its gate."""
    first = shared.start("pipe")
    wait_until(lambda: len(shared.runs()) == 1, "the command to start")
    followers = [shared.start(kind) for kind in KINDS]
    wait_until(
        lambda: readers_of_entries_in_flight(cache_dir) == 1 + len(KINDS),
        "every follower to attach",
    )
    for inv in [first, *followers]:
        wait_until(lambda inv=inv: inv.got() == b"first\n", f"the first line ({inv.kind})")
    assert not shared.gate.exists()
    return first, followers


def test_followers_then_hits_replay_the_same_bytes_to_any_stdout(
    shared: Shared, cache_dir: Path
) -> None:
    first, followers = first_and_followers(shared, cache_dir)
    shared.gate.touch()
    results = [inv.finish() for inv in [first, *followers]]
    hits = [shared.start(kind).finish() for kind in KINDS]
    for kind, (rc, out, err) in zip(["first", *KINDS, *KINDS], results + hits, strict=True):
        assert (rc, err) == (0, PROGRESS), (kind, rc, err)
        assert out == expected_stdout(), (kind, len(out))
    assert len(shared.runs()) == 1


@pytest.mark.parametrize("shared", [3], indirect=True)
def test_a_failing_command_replays_the_same_bytes_and_status_to_any_stdout(
    shared: Shared, cache_dir: Path
) -> None:
    first, followers = first_and_followers(shared, cache_dir)
    shared.gate.touch()
    for inv in [first, *followers]:
        rc, out, err = inv.finish()
        assert rc == 3, (inv.kind, rc, err)
        assert out == expected_stdout(), (inv.kind, len(out))
        assert err.startswith(PROGRESS), (inv.kind, err)
        # (the first one's stderr is the command's alone: its own run said it all)
        assert inv is first or b"status 3" in err, (inv.kind, err)


def produced(cache: streamcache.StreamCache, key: str) -> int:
    info = cache.peek(key)
    return -1 if info is None else info.produced


def test_a_producer_killed_mid_run_fails_every_stdout_alike(
    shared: Shared, cache_dir: Path
) -> None:
    first, followers = first_and_followers(shared, cache_dir)
    # Both first frames (a line of stdout, one of stderr) are in the entry: 2 headers.
    key = default_key(shared.args[4:], os.path.realpath(shared.tmp))
    cache = streamcache.StreamCache(cache_dir, cleanup_interval=0)
    try:
        wait_until(lambda: produced(cache, key) == 2 * 5 + 6 + 11, "both first frames")
    finally:
        cache.stop()
    command, producer = shared.runs()[0]
    os.kill(producer, signal.SIGKILL)
    for inv in [first, *followers]:
        rc, out, err = inv.finish()
        assert (rc, out) == (125, b"first\n"), (inv.kind, rc, out[:100], err)
        assert err.startswith(b"progress 0\n"), (inv.kind, err)
    wait_until(lambda: not os.path.exists(f"/proc/{command}"), "the command to end")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_hit_sends_the_payload_without_reading_it(cache_dir: Path, tmp_path: Path) -> None:
    size = 4 * MiB
    argv = [sys.executable, "-c", f"import sys; sys.stdout.buffer.write(b'x' * {size})"]
    args = ["run", "--dir", str(cache_dir), "--", *argv]
    assert cli(*args, cwd=tmp_path).returncode == 0  # stored
    log = tmp_path / "strace.log"
    trace = ["strace", "-f", "-qq", "-y", "-e", "trace=sendfile,splice,read,pread64,write"]
    out = tmp_path / "out"
    with open(out, "wb") as stdout:
        done = subprocess.run(
            [*trace, "-o", str(log), *cli_cmd(*args)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env(),
            cwd=tmp_path,
            timeout=WAIT * 4,
        )
    if "Operation not permitted" in log.read_text()[:500]:
        pytest.skip("ptrace not permitted here")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"x" * size
    sent = read = 0
    for line in log.read_text().splitlines():
        call = line.split(None, 1)[-1]
        result = call.rsplit("=", 1)[-1].split()[0] if "=" in call else ""
        if not result.isdigit():
            continue
        if call.startswith(("sendfile(", "splice(")):
            sent += int(result)
        elif call.startswith(("read(", "pread64(")) and str(cache_dir) in call:
            read += int(result)
    assert sent == size, f"sendfile moved {sent} of {size} bytes"
    assert read < 64 * 1024, f"{read} bytes of the cache's files read into the invocation"
