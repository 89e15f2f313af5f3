"""The pytest plugin's directory choice and its "off unless used": STREAMCACHE_DIR
beats the ini option, which beats the project's pytest cache; a session that asks for
no shared_artifact creates nothing; a failing build fails the test with its error; the
same key twice in a worker builds and copies once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import streamcache

REPO = Path(streamcache.__file__).resolve().parent.parent

# Up to three pytest sessions per test: 28 s for one test at load 18 against the old
# 60 s default bound.
pytestmark = pytest.mark.timeout(400)

CONFTEST = 'pytest_plugins = ["streamcache.pytest_plugin"]\n'

USES = r"""
import os

def build(w):
    with open(os.environ["BUILDS"], "a") as f:
        f.write("b")
    w.write(b"artefact bytes")

def test_uses(shared_artifact):
    first = shared_artifact("data.bin", build)
    assert shared_artifact("data.bin", build) == first
    assert first.name == "data.bin" and first.read_bytes() == b"artefact bytes"
    copy = shared_artifact("data.bin", build, path=first.with_name("copy"))
    assert copy.read_bytes() == b"artefact bytes"
    odd = shared_artifact("a key / with spaces", lambda w: [b"odd"])
    assert len(odd.name) == 64 and odd.read_bytes() == b"odd"
"""

FAILS = r"""
import pytest
import streamcache

def test_fails(shared_artifact):
    def build(w):
        w.write(b"half")
        raise RuntimeError("the build broke")
    with pytest.raises(streamcache.CreateError, match="the build broke"):
        shared_artifact("broken.bin", build)
"""

UNUSED = """
def test_nothing():
    pass
"""


def _pytest(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS"):
        full.pop(name, None)
    full.pop("STREAMCACHE_DIR", None)
    full["PYTHONPATH"] = str(REPO)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", *args],
        cwd=root,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,  # a whole pytest session: a bound for hangs, generous for a busy machine
    )


def _project(tmp_path: Path, test: str, ini: str = "") -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "conftest.py").write_text(CONFTEST)
    (root / "test_it.py").write_text(test)
    (root / "tox.ini").write_text("[pytest]\n" + ini)
    return root


def _shared(path: Path) -> bool:
    """Whether ``path`` holds a cache with a finished entry."""
    return any((path / "v2" / "entries").rglob("*"))


def test_default_dir_is_the_pytest_cache(tmp_path: Path) -> None:
    root = _project(tmp_path, USES)
    r = _pytest(root, env={"BUILDS": str(tmp_path / "builds")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "builds").read_text() == "b"  # twice asked, built once
    assert _shared(root / ".pytest_cache" / "d" / "streamcache")


def test_default_dir_under_tox_is_shared_by_its_environments(tmp_path: Path) -> None:
    """tox moves pytest's cache into each environment's dir (TOX_ENV_DIR): the
    artefacts stay in the project's, shared by every environment."""
    root = _project(tmp_path, USES)
    builds = str(tmp_path / "builds")
    for env_name in ("py310", "py313"):
        env_dir = root / ".tox" / env_name
        env_dir.mkdir(parents=True)
        r = _pytest(root, env={"BUILDS": builds, "TOX_ENV_DIR": str(env_dir)})
        assert r.returncode == 0, r.stdout + r.stderr
        assert (env_dir / ".pytest_cache").is_dir()  # pytest's own cache moved
    assert (tmp_path / "builds").read_text() == "b"
    assert _shared(root / ".pytest_cache" / "d" / "streamcache")
    assert (root / ".pytest_cache" / ".gitignore").exists()


def test_ini_option_and_environment(tmp_path: Path) -> None:
    root = _project(tmp_path, USES, ini="streamcache_dir = shared/here\n")
    env = {"BUILDS": str(tmp_path / "builds")}
    r = _pytest(root, "-p", "no:cacheprovider", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _shared(root / "shared" / "here")
    # STREAMCACHE_DIR wins over the ini option; the artefact is built there afresh.
    r = _pytest(root, env={**env, "STREAMCACHE_DIR": str(tmp_path / "env")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert _shared(tmp_path / "env")
    assert (tmp_path / "builds").read_text() == "bb"
    # Back on the ini option's directory: still shared, not built again.
    r = _pytest(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "builds").read_text() == "bb"


def test_unused_plugin_creates_nothing(tmp_path: Path) -> None:
    root = _project(tmp_path, UNUSED)
    r = _pytest(root, "-p", "no:cacheprovider")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (root / ".pytest_cache").exists()


def test_a_failing_build_fails_with_its_error(tmp_path: Path) -> None:
    root = _project(tmp_path, FAILS)
    r = _pytest(root)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_bad_max_age_is_a_clear_error(tmp_path: Path, value: str) -> None:
    root = _project(tmp_path, USES, ini=f"streamcache_max_age = {value}\n")
    r = _pytest(root, env={"BUILDS": str(tmp_path / "builds")})
    assert r.returncode != 0
    assert "streamcache_max_age" in r.stdout, r.stdout
