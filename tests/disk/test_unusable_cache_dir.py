"""A cache directory this process cannot use is refused when the cache is opened
(``StreamCache(dir)``, ``new(cfg)``), with the precise OSError naming the path and what
is wrong, never on a later miss; ``streamcache run`` then runs its command uncached
with a one-line warning. ``~`` in a cache dir is expanded.

Modes are real (chmod). Where chmod does not bind (root with CAP_DAC_OVERRIDE) those
cases are skipped; a parent that is a regular file refuses everyone, root included.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import writing

import streamcache
from streamcache.cache import LAYOUT

RUN_TIMEOUT = 60.0


def chmod_binds(tmp_path: Path) -> bool:
    """Whether a directory's mode stops this process (false for a privileged root)."""
    probe = tmp_path / "mode-probe"
    probe.mkdir()
    probe.chmod(0o500)
    try:
        (probe / "f").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o700)
    return False


@pytest.fixture
def modes(tmp_path: Path) -> Iterator[Callable[[Path, int], None]]:
    """chmod that skips the test where modes do not bind, and gives every directory
    under tmp_path back its owner's rights at teardown."""
    if not chmod_binds(tmp_path):
        pytest.skip("file modes do not bind for this process (privileged root)")
    yield lambda path, mode: path.chmod(mode)
    for root, dirs, _files in os.walk(tmp_path, topdown=True):
        for d in dirs:
            p = os.path.join(root, d)
            os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | 0o700)


def make_cache(path: Path) -> None:
    """A cache tree with one finished entry, as an earlier run leaves it."""
    with streamcache.StreamCache(path, cleanup_interval=0) as cache:
        assert cache.fetch("k", io.BytesIO(), writing(b"entry")).created


def chmod_tree(path: Path, dir_mode: int, file_mode: int) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for f in files:
            os.chmod(os.path.join(root, f), file_mode)
        for d in dirs:
            os.chmod(os.path.join(root, d), dir_mode)
    os.chmod(path, dir_mode)


def open_both_ways(path: Path) -> list[BaseException]:
    """What StreamCache(path) and new(Config(dir=path)) raise (each must raise)."""
    errors: list[BaseException] = []
    for open_cache in (
        lambda: streamcache.StreamCache(path, cleanup_interval=0),
        lambda: streamcache.new(streamcache.Config(dir=path), registry=None),
    ):
        with pytest.raises(OSError) as info:
            open_cache()
        errors.append(info.value)
    return errors


# -- refused at construction -------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 2])
def test_a_parent_that_is_a_file(tmp_path: Path, depth: int) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    path = blocker.joinpath(*["sub"] * depth, "cache")
    for exc in open_both_ways(path):
        assert isinstance(exc, NotADirectoryError)
        assert exc.filename == str(path)
        assert f"{blocker} is a file" in str(exc)
        assert "does not exist" not in str(exc)
    assert blocker.read_bytes() == b"not a directory"


@pytest.mark.parametrize(
    "what",
    ["whole tree", "cache dir only", "layout root", "index", "locks", "data", "entries"],
)
def test_an_existing_tree_made_read_only(
    tmp_path: Path, modes: Callable[[Path, int], None], what: str
) -> None:
    path = tmp_path / "cache"
    make_cache(path)
    sub = {"cache dir only": path, "layout root": path / LAYOUT}.get(what, path / LAYOUT / what)
    if what == "whole tree":
        chmod_tree(path, 0o500, 0o400)
        sub = path
    else:
        modes(sub, 0o500)
    for exc in open_both_ways(path):
        assert isinstance(exc, PermissionError)
        assert exc.filename == str(path)
        assert f"{sub} is not readable, writable and searchable" in str(exc)
        assert "mode 500" in str(exc)


def test_a_read_only_usage_file(tmp_path: Path, modes: Callable[[Path, int], None]) -> None:
    path = tmp_path / "cache"
    make_cache(path)
    usage = path / LAYOUT / "locks" / "usage.lock"
    modes(usage, 0o400)
    for exc in open_both_ways(path):
        assert isinstance(exc, PermissionError)
        assert f"{usage} is not readable and writable" in str(exc)


def test_a_symlink_planted_at_the_usage_file_is_no_refusal(
    tmp_path: Path, modes: Callable[[Path, int], None]
) -> None:
    """Only what is there and of its kind is checked: a symlink planted where a file of
    the cache goes is garbage, replaced when it is met, never followed to its target."""
    path = tmp_path / "cache"
    make_cache(path)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    modes(outside, 0o400)
    usage = path / LAYOUT / "locks" / "usage.lock"
    usage.unlink()
    usage.symlink_to(outside)
    with streamcache.StreamCache(path, cleanup_interval=0) as cache:
        assert cache.fetch("k2", io.BytesIO(), writing(b"x")).created
    assert outside.read_bytes() == b"precious"


def test_a_missing_dir_whose_parent_is_read_only(
    tmp_path: Path, modes: Callable[[Path, int], None]
) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    modes(parent, 0o500)
    path = parent / "cache"
    for exc in open_both_ways(path):
        assert isinstance(exc, PermissionError)
        assert exc.filename == str(path)
        assert f"cannot create it: {parent} is not writable" in str(exc)
    assert not path.exists()


def test_an_ancestor_that_is_not_searchable(
    tmp_path: Path, modes: Callable[[Path, int], None]
) -> None:
    closed = tmp_path / "closed"
    (closed / "parent").mkdir(parents=True)
    modes(closed, 0o600)
    path = closed / "parent" / "cache"
    for exc in open_both_ways(path):
        assert isinstance(exc, PermissionError)
        assert exc.filename == str(path)
        assert f"{closed} is not searchable" in str(exc)
        assert "does not exist" not in str(exc)


def test_a_missing_parent_is_still_said_to_be_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parent of the cache dir does not exist"):
        streamcache.StreamCache(tmp_path / "missing" / "cache")


def test_a_usable_tree_left_by_another_run_opens(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    make_cache(path)
    with streamcache.StreamCache(path, cleanup_interval=0) as cache:
        out = io.BytesIO()
        assert not cache.fetch("k", out, writing(b"other")).created
        assert out.getvalue() == b"entry"


# -- ~ is expanded ------------------------------------------------------------------------


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    with streamcache.StreamCache("~/sc", cleanup_interval=0) as cache:
        assert cache.dir == str(tmp_path / "home" / "sc")
        cache.fetch("k", io.BytesIO(), writing(b"x"))
    with streamcache.new(streamcache.Config(dir="~/sc2"), registry=None) as cache:
        assert isinstance(cache, streamcache.MinOccurrences)
        assert isinstance(cache.cache, streamcache.StreamCache)
        assert cache.cache.dir == str(tmp_path / "home" / "sc2")
    assert (tmp_path / "home" / "sc" / LAYOUT).is_dir()
    assert not (tmp_path / "~").exists()


# -- streamcache run ---------------------------------------------------------------------


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "streamcache", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        timeout=RUN_TIMEOUT,
    )


# The command: counts its runs in a file, writes to stdout, exits 3.
COMMAND = ["sh", "-c", 'echo run >> "$0"; echo out; exit 3']


def check_runs_uncached(path: Path, tmp_path: Path, what: str) -> None:
    runs = tmp_path / "runs"
    for n in (1, 2):
        proc = run_cli(["run", "--dir", str(path), "--", *COMMAND, str(runs)], tmp_path)
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout == b"out\n"
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("streamcache run: cannot use the cache, running uncached: ")
        assert what in lines[0]
        assert runs.read_text() == "run\n" * n  # ran every time: nothing was cached


def test_run_on_a_parent_that_is_a_file_runs_uncached(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    check_runs_uncached(blocker / "cache", tmp_path, f"{blocker} is a file")


def test_run_on_a_read_only_tree_runs_uncached(
    tmp_path: Path, modes: Callable[[Path, int], None]
) -> None:
    path = tmp_path / "cache"
    make_cache(path)
    chmod_tree(path, 0o500, 0o400)
    check_runs_uncached(path, tmp_path, f"{path}: {path} is not readable, writable")


def test_run_and_stats_expand_tilde_in_dir(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    runs = tmp_path / "runs"
    command = ["sh", "-c", 'echo run >> "$0"; echo out', str(runs)]
    for _ in range(2):
        proc = run_cli(["run", "--dir=~/sc", "--", *command], tmp_path, HOME=str(home))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"out\n"
        assert proc.stderr == b""
    assert runs.read_text() == "run\n"  # the second run was a hit
    assert (home / "sc" / LAYOUT).is_dir()
    assert not (tmp_path / "~").exists()
    proc = run_cli(["stats", "--dir=~/sc", "--json"], tmp_path, HOME=str(home))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dir"] == str(home / "sc")


@pytest.mark.parametrize("command", [["gc"], ["invalidate", "k"]])
def test_gc_and_invalidate_on_a_read_only_tree_say_so_in_one_line(
    tmp_path: Path, modes: Callable[[Path, int], None], command: list[str]
) -> None:
    path = tmp_path / "cache"
    make_cache(path)
    chmod_tree(path, 0o500, 0o400)
    proc = run_cli([command[0], "--dir", str(path), *command[1:]], tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [
        f"streamcache {command[0]}: error: {path}: {path} is not readable, writable and "
        f"searchable by this process (mode 500, owner uid {os.geteuid()}; this process "
        f"runs as uid {os.geteuid()})"
    ]
