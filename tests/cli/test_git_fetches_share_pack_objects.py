"""streamcache git-pack-objects-hook with real git: concurrent clones of a repository
(file:// with --no-local, and through git daemon on 127.0.0.1) share one git
pack-objects run (every clone complete, fsck clean, identical packs),
shallow and incremental fetches get their own keys, a client going away takes nobody
else down, a failed pack-objects is never stored, and an unusable cache directory
never fails a fetch.

The hook is configured as a git server operator would, in protected config: a
global config file named by GIT_CONFIG_GLOBAL (an absolute path). git's
``pack-objects`` is seen through a ``git`` the hook finds first in its PATH, which
counts the runs, can wait for a gate file (so that every client attaches to one run)
and can kill itself part-way through the pack."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import finish, is_running, readers_of_entries_in_flight, stats, wait_until

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="git is not installed")
WAIT = 120.0

# The git the hook runs: counts its runs, waits (bounded) for the gate when asked to,
# and when asked to, dies by SIGKILL after sending part of the pack.
FAKE_GIT = """#!/bin/sh
echo $$ >> "{runs}"
if [ -e "{gated}" ]; then
    i=0
    while [ ! -e "{gate}" ] && [ $i -lt 6000 ]; do sleep 0.05; i=$((i+1)); done
fi
if [ -e "{kill}" ]; then
    "{git}" "$@" | head -c 20000
    kill -KILL $$
fi
exec "{git}" "$@"
"""

HOOK = """#!/bin/sh
PATH="{bin}:$PATH"
exec "{python}" -m streamcache git-pack-objects-hook --dir "{cache}" --min-occurrences 0 "$@"
"""


def fast_import_stream(commits: int, files: int, seed: int) -> bytes:
    """A deterministic history: ``commits`` commits of ``files`` files of random hex."""
    rng = random.Random(seed)
    out = []
    for c in range(commits):
        out.append(b"commit refs/heads/main\n")
        when = f"{1700000000 + c * 60} +0000"
        out.append(f"committer Test <test@example.com> {when}\n".encode())
        message = f"commit {c}\n".encode()
        out.append(b"data %d\n%s\n" % (len(message), message))
        for f in range(files):
            if c and rng.random() < 0.7:
                continue  # most files change only sometimes
            blob = rng.randbytes(8192).hex().encode()
            out.append(f"M 100644 inline f{f:03}.txt\ndata {len(blob)}\n".encode() + blob + b"\n")
    return b"".join(out)


class Server:
    """A bare repository served by ``git upload-pack`` with the hook, and its clients."""

    def __init__(self, tmp: Path, repo: Path, cache: Path | None = None) -> None:
        self.tmp = tmp
        self.repo = repo
        self.cache = cache if cache is not None else tmp / "cache"
        self.runs_file = tmp / "runs"
        self.gated = tmp / "gated"
        self.gate = tmp / "gate"
        self.kill = tmp / "kill"
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "git"
        fake.write_text(
            FAKE_GIT.format(
                runs=self.runs_file, gated=self.gated, gate=self.gate, kill=self.kill, git=GIT
            )
        )
        hook = tmp / "hook"
        hook.write_text(HOOK.format(bin=bin_dir, python=sys.executable, cache=self.cache))
        for script in (fake, hook):
            script.chmod(script.stat().st_mode | stat.S_IXUSR)
        config = tmp / "gitconfig"
        config.write_text(f"[uploadpack]\n\tpackObjectsHook = {hook}\n")
        home = tmp / "home"
        home.mkdir()
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "HOME": str(home),
            "GIT_CONFIG_GLOBAL": str(config),  # absolute: protected config
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemon_url: str | None = None
        self.daemon: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.daemon_url or f"file://{self.repo}"

    def serve_with_daemon(self) -> None:
        """Serve the repository with ``git daemon`` on 127.0.0.1 instead of file://."""
        with socket.socket() as probe:  # a free port (the daemon cannot report one)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.daemon = subprocess.Popen(
            [
                GIT or "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                f"--port={port}",
                f"--base-path={self.repo.parent}",
                str(self.repo.parent),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )

        def listening() -> bool:
            assert self.daemon is not None and self.daemon.poll() is None, "git daemon ended"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, "git daemon to listen", WAIT)
        self.daemon_url = f"git://127.0.0.1:{port}/{self.repo.name}"

    def runs(self) -> int:
        return len(self.runs_file.read_text().split()) if self.runs_file.exists() else 0

    def git(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [GIT or "git", *args], capture_output=True, timeout=WAIT, env=self.env, cwd=cwd
        )

    def clone(self, dest: Path, *options: str, own_group: bool = False) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [GIT or "git", "clone", "--no-local", *options, self.url, str(dest)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=own_group,
        )
        self.procs.append(proc)
        return proc

    def clone_now(self, dest: Path, *options: str) -> None:
        ((rc, _, err),) = finish([self.clone(dest, *options)], WAIT)
        assert rc == 0, err
        self.check(dest)

    def check(self, dest: Path) -> None:
        fsck = self.git("fsck", "--full", cwd=dest)
        assert fsck.returncode == 0, fsck.stderr

    def close(self) -> None:
        self.gate.touch()  # nothing waits for it any more
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=WAIT)
        self.kill.unlink(missing_ok=True)
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait(WAIT)
        # Every pack-objects run (and the process that ran it) ends.
        for line in self.runs_file.read_text().split() if self.runs_file.exists() else []:
            wait_until(lambda pid=int(line): not is_running(pid), "a pack-objects run to end")
        if (self.cache / "v2").is_dir():
            wait_until(
                lambda: all(e["state"] != "writing" for e in stats(self.cache)["entries"]),
                "the entries in flight to end",
            )


def pack_digest(dest: Path) -> str:
    (pack,) = (dest / ".git" / "objects" / "pack").glob("*.pack")
    return hashlib.sha256(pack.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare repository of about 2 MB, the same in every run."""
    repo = tmp_path_factory.mktemp("origin") / "repo.git"
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo.parent)}
    subprocess.run(
        [GIT or "git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True, env=env
    )
    subprocess.run(
        [GIT or "git", "fast-import", "--quiet"],
        input=fast_import_stream(commits=6, files=60, seed=18),
        cwd=repo,
        check=True,
        timeout=WAIT,
        env=env,
    )
    return repo


@pytest.fixture
def server(tmp_path: Path, origin: Path) -> Iterator[Server]:
    s = Server(tmp_path, origin)
    yield s
    s.close()


@pytest.mark.parametrize("transport", ["file://", "git daemon"])
def test_eight_concurrent_clones_share_one_pack_objects_run(
    server: Server, tmp_path: Path, transport: str
) -> None:
    if transport == "git daemon":
        server.serve_with_daemon()
    server.gated.touch()
    clients = [server.clone(tmp_path / f"clone{i}") for i in range(8)]
    wait_until(lambda: server.runs() == 1, "pack-objects to start", timeout=WAIT)
    # One reader per client: the first one's detached producer, and the others.
    wait_until(lambda: readers_of_entries_in_flight(server.cache) == 8, "8 clients to attach", WAIT)
    server.gate.touch()
    results = finish(clients, WAIT)
    assert [rc for rc, _, _ in results] == [0] * 8, [err for _, _, err in results]
    assert server.runs() == 1
    for i in range(8):
        server.check(tmp_path / f"clone{i}")
    assert len({pack_digest(tmp_path / f"clone{i}") for i in range(8)}) == 1
    counts = stats(server.cache)["commands"]
    assert counts["miss"] == 1 and counts["hit"] == 7 and counts["failed"] == 0
    assert counts["served_bytes"] > 8 * 1_000_000


def test_shallow_and_incremental_fetches_get_their_own_keys(
    server: Server, tmp_path: Path, origin: Path
) -> None:
    repo = tmp_path / "repo.git"  # a copy of its own: a commit is added
    shutil.copytree(origin, repo)
    server.repo = repo
    server.clone_now(tmp_path / "a")
    server.clone_now(tmp_path / "b")
    assert server.runs() == 1  # the second identical fetch: a hit
    server.clone_now(tmp_path / "shallow1", "--depth", "1")
    server.clone_now(tmp_path / "shallow2", "--depth", "1")
    assert server.runs() == 2
    # A new commit on the server, then the same incremental fetch (want + have) twice.
    work = tmp_path / "work"
    assert server.git("clone", "-q", str(repo), str(work)).returncode == 0
    (work / "new.txt").write_text("new\n")
    for args in (
        ["add", "new.txt"],
        ["-c", "user.name=T", "-c", "user.email=t@e", "commit", "-qm", "new"],
        ["push", "-q", "origin", "main"],
    ):
        done = server.git(*args, cwd=work)
        assert done.returncode == 0, done.stderr
    for name in ("a", "b"):
        done = server.git("fetch", "-q", "origin", cwd=tmp_path / name)
        assert done.returncode == 0, done.stderr
        server.check(tmp_path / name)
    assert server.runs() == 3
    assert stats(server.cache)["commands"]["hit"] == 3


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT to its process group"])
def test_the_first_client_going_away_leaves_the_others_whole(
    server: Server, tmp_path: Path, how: str
) -> None:
    server.gated.touch()
    first = server.clone(tmp_path / "first", "--progress", own_group=True)
    wait_until(lambda: server.runs() == 1, "pack-objects to start", timeout=WAIT)
    others = [server.clone(tmp_path / f"other{i}", "--progress") for i in range(2)]
    wait_until(lambda: readers_of_entries_in_flight(server.cache) == 3, "3 clients to attach", WAIT)
    if how == "SIGKILL":
        first.kill()  # the client alone: its upload-pack and hook see it disconnect
    else:
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: the client, upload-pack and hook
    first.wait(WAIT)
    assert first.returncode != 0
    server.gate.touch()
    results = finish(others, WAIT)
    assert [rc for rc, _, _ in results] == [0, 0], [err for _, _, err in results]
    for i, (_, _, err) in enumerate(results):
        server.check(tmp_path / f"other{i}")
        assert b"remote: Enumerating objects" in err  # every client sees the progress
    assert server.runs() == 1


def test_a_pack_objects_killed_mid_pack_fails_every_client_and_is_not_stored(
    server: Server, tmp_path: Path
) -> None:
    server.gated.touch()
    server.kill.touch()
    clients = [server.clone(tmp_path / f"clone{i}") for i in range(3)]
    wait_until(lambda: server.runs() == 1, "pack-objects to start", timeout=WAIT)
    wait_until(lambda: readers_of_entries_in_flight(server.cache) == 3, "3 clients to attach", WAIT)
    server.gate.touch()
    results = finish(clients, WAIT)
    assert all(rc != 0 for rc, _, _ in results), results
    for i in range(3):
        assert not (tmp_path / f"clone{i}").exists()  # git removed the partial clone
    wait_until(lambda: stats(server.cache)["entries"] == [], "the failed entry to go")
    server.kill.unlink()
    server.clone_now(tmp_path / "after")
    assert server.runs() == 2


def test_an_unusable_cache_directory_never_fails_a_fetch(tmp_path: Path, origin: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    server = Server(tmp_path, origin, cache=blocker / "cache")
    try:
        server.clone_now(tmp_path / "a")
        server.clone_now(tmp_path / "b")
        assert server.runs() == 2  # uncached, each
        assert pack_digest(tmp_path / "a") == pack_digest(tmp_path / "b")
    finally:
        server.close()
