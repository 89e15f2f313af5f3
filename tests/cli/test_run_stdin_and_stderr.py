"""streamcache run --stdin gives the command this invocation's stdin (read to its end
first) and keys the entry by it; every invocation replays the command's stderr, or
only the first one with --stderr=first."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cli_helpers import cli_cmd, env

WAIT = 120.0


def run(cache_dir: Path, tmp_path: Path, stdin: bytes, *options: str) -> tuple[int, bytes, bytes]:
    # The command counts its runs, echoes its stdin and writes a line to stderr.
    script = f"echo run >> {tmp_path / 'runs'}; cat; echo progress >&2"
    done = subprocess.run(
        cli_cmd("run", "--dir", str(cache_dir), *options, "--", "sh", "-c", script),
        input=stdin,
        capture_output=True,
        timeout=WAIT,
        env=env(),
        cwd=tmp_path,
    )
    return done.returncode, done.stdout, done.stderr


def runs(tmp_path: Path) -> int:
    path = tmp_path / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_stdin_is_given_to_the_command_and_keys_the_entry(cache_dir: Path, tmp_path: Path) -> None:
    big = bytes(range(256)) * 4096  # more than a pipe holds
    assert run(cache_dir, tmp_path, big, "--stdin")[:2] == (0, big)
    assert run(cache_dir, tmp_path, big, "--stdin")[:2] == (0, big)
    assert runs(tmp_path) == 1  # the same stdin: a hit
    assert run(cache_dir, tmp_path, b"other\n", "--stdin")[:2] == (0, b"other\n")
    assert runs(tmp_path) == 2  # another stdin: another entry
    # Without --stdin the command reads /dev/null.
    assert run(cache_dir, tmp_path, b"ignored\n")[:2] == (0, b"")


def test_stderr_is_replayed_to_every_invocation_unless_first(
    cache_dir: Path, tmp_path: Path
) -> None:
    assert run(cache_dir, tmp_path, b"a\n", "--stdin") == (0, b"a\n", b"progress\n")
    assert run(cache_dir, tmp_path, b"a\n", "--stdin") == (0, b"a\n", b"progress\n")
    assert runs(tmp_path) == 1
    first = ("--stdin", "--stderr=first")
    assert run(cache_dir, tmp_path, b"b\n", *first) == (0, b"b\n", b"progress\n")
    assert run(cache_dir, tmp_path, b"b\n", *first) == (0, b"b\n", b"")
    assert runs(tmp_path) == 2
