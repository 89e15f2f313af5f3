"""The pack-objects hook's recognition of what upload-pack gives it, its key, and a
command it does not recognise run as it is (stdin, stdout and exit status untouched,
nothing stored)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_helpers import cli_cmd, env

from streamcache.cli.hook import cacheable, key_of

CLONE = ["git", "pack-objects", "--revs", "--thin", "--stdout", "--progress", "--delta-base-offset"]
SHALLOW = ["git", "--shallow-file", "", "pack-objects", "--revs", "--thin", "--stdout"]
SHALLOW += ["--shallow", "--delta-base-offset", "--include-tag"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (CLONE, True),
        (SHALLOW, True),
        (["git", "pack-objects", "--revs", "--thin", "--delta-base-offset"], False),  # no --stdout
        (["git", "pack-objects", "--stdout", "base-name"], False),  # writes files
        (["git", "-C", "elsewhere", "pack-objects", "--stdout"], False),
        (["git", "--shallow-file", "x", "pack-objects", "--stdout"], False),
        (["/usr/bin/git", "pack-objects", "--stdout"], False),
        (["cat"], False),
    ],
)
def test_only_the_commands_of_upload_pack_are_cached(argv: list[str], expected: bool) -> None:
    assert cacheable(argv) is expected


def test_the_key_is_every_part_but_progress() -> None:
    base = key_of("/srv/a.git", "version=2", CLONE, b"\x01" * 32)
    without = [a for a in CLONE if a != "--progress"]
    assert key_of("/srv/a.git", "version=2", without, b"\x01" * 32) == base
    assert key_of("/srv/b.git", "version=2", CLONE, b"\x01" * 32) != base  # a fork
    assert key_of("/srv/a.git", "", CLONE, b"\x01" * 32) != base
    assert key_of("/srv/a.git", "version=2", CLONE, b"\x02" * 32) != base  # wants, haves
    assert key_of("/srv/a.git", "version=2", SHALLOW, b"\x01" * 32) != base
    # Length-prefixed: moving bytes from one part to the next gives another key.
    assert key_of("/srv/a.gitv", "ersion=2", CLONE, b"\x01" * 32) != base


def test_a_command_it_does_not_recognise_runs_as_it_is(cache_dir: Path) -> None:
    argv = ["sh", "-c", "cat; echo done; exit 3"]
    for _ in range(2):
        done = subprocess.run(
            cli_cmd("git-pack-objects-hook", "--dir", str(cache_dir), "--", *argv),
            input=b"request\n",
            capture_output=True,
            timeout=120,
            env=env(),
        )
        assert (done.returncode, done.stdout) == (3, b"request\ndone\n"), done.stderr
    assert not cache_dir.exists()  # nothing stored, not even the directory made
