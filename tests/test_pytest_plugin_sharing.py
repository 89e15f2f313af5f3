"""The pytest plugin's shared_artifact, used as tox -p and pytest-xdist use it: several
pytest runs at once (one per Python version found, at least two), each with ``-n 2``,
on one generated project; the artefact is built once and streamed to every worker, and
a builder that is SIGKILLed mid-build makes another worker build it afresh.

Other interpreters come from STREAMCACHE_PYTHONS (':'-separated) only; each must have
pytest-xdist. The source under test goes first on their PYTHONPATH. (Not from tox's
other environments: run from inside one tox environment, another environment's
interpreter ended up importing this one's compiled packages, hypothesis' native module
of another Python version, and failed. The run across py310..py313 with tox -p is
measured by hand; see docs/guide/pytest-plugin.md.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import settle

import streamcache

REPO = Path(streamcache.__file__).resolve().parent.parent
VERSIONS = ("3.10", "3.11", "3.12", "3.13")
MIB = 1 << 20
SIZE_MIB = 64
TESTS = 4  # per run
# Each run is bounded; the tests get more than pytest-timeout's default, as tox may
# give up to four runs of two workers each to this machine's cores at once.
RUN_TIMEOUT = 100.0
pytestmark = pytest.mark.timeout(150)

CONFTEST = r'''
import hashlib
import os
import signal
import time

import pytest

pytest_plugins = ["streamcache.pytest_plugin"]

LOG = os.environ["ARTEFACT_LOG"]
BLOCKS = int(os.environ["ARTEFACT_MIB"])
KILL = os.environ.get("ARTEFACT_KILL") == "1"


def block(i):
    return hashlib.sha256(b"%d" % i).digest() * (2**20 // 32)


def note(name, text=""):
    with open(os.path.join(LOG, name), "w") as f:
        f.write(text)


def a_reader_streams(timeout=30.0):
    """Wait (bounded) until another worker's copy holds bytes: it is streaming."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in os.listdir(LOG):
            if name.startswith("copy-") and name != f"copy-{os.getpid()}":
                with open(os.path.join(LOG, name)) as f:
                    path = f.read()
                if os.path.exists(path) and os.path.getsize(path) > 0:
                    return True
        time.sleep(0.01)
    return False


def build(w):
    try:
        first = os.open(os.path.join(LOG, "first-build"), os.O_CREAT | os.O_EXCL)
        os.close(first)
        first = True
    except FileExistsError:
        first = False
    note(f"build-{os.getpid()}")
    for i in range(BLOCKS):
        if first and i == BLOCKS // 2:
            streamed = a_reader_streams()
            note(f"streamed-{os.getpid()}", str(streamed))
            if KILL:
                os.kill(os.getpid(), signal.SIGKILL)
        w.write(block(i))


@pytest.fixture(scope="session")
def artefact(shared_artifact, tmp_path_factory):
    path = tmp_path_factory.mktemp("copy") / "artefact.bin"
    note(f"copy-{os.getpid()}", str(path))
    return shared_artifact("artefact-v1.bin", build, path=path)
'''

TEST_MODULE = r"""
import hashlib
import os
import sys

import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_reads_the_artefact(artefact, n):
    h = hashlib.sha256()
    size = 0
    with open(artefact, "rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
            size += len(chunk)
    with open(os.path.join(os.environ["ARTEFACT_LOG"], f"read-{{os.getpid()}}-{{n}}"), "w") as f:
        f.write(f"{{sys.version_info[0]}}.{{sys.version_info[1]}} {{size}} {{h.hexdigest()}}")
"""


def _expected() -> str:
    h = hashlib.sha256()
    for i in range(SIZE_MIB):
        h.update(hashlib.sha256(b"%d" % i).digest() * (MIB // 32))
    return h.hexdigest()


def _env(log: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("STREAMCACHE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["ARTEFACT_LOG"] = str(log)
    env["ARTEFACT_MIB"] = str(SIZE_MIB)
    env.update(extra)
    return env


def _for_interpreter(python: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a run of ``python``: under tox this process's environment names its
    own virtualenv (VIRTUAL_ENV, its bin first on PATH), and processes the other run
    starts by name (xdist's workers) would otherwise get this interpreter."""
    env = dict(env)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    return env


def _usable(python: str) -> str | None:
    """The version of ``python`` if it runs this checkout's streamcache with xdist."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys, xdist, streamcache; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _pythons() -> list[str]:
    """One interpreter per Python version with xdist (this one first), at least two
    entries: with only one version, two runs of it stand for two tox environments."""
    found = {"{}.{}".format(*sys.version_info[:2]): sys.executable}
    candidates: list[str] = []
    candidates += [p for p in os.environ.get("STREAMCACHE_PYTHONS", "").split(":") if p]
    for python in candidates:
        if os.path.exists(python):
            version = _usable(python)
            if version and version not in found:
                found[version] = python
    pythons = list(found.values())
    return pythons if len(pythons) > 1 else pythons * 2


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "conftest.py").write_text(CONFTEST)
    (root / "test_artefact.py").write_text(TEST_MODULE.format(tests=TESTS))
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


def _run_all(project: Path, log: Path, **extra: str) -> list[subprocess.CompletedProcess[str]]:
    """One ``pytest -n 2`` per interpreter, all at once; each bounded."""
    log.mkdir()
    procs = [
        subprocess.Popen(
            [python, "-m", "pytest", "-n", "2", "-q", "-rf"],
            cwd=project,
            env=_for_interpreter(python, _env(log, **extra)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for python in _pythons()
    ]
    done = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=RUN_TIMEOUT)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, None))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def _reads(log: Path) -> list[tuple[str, int, str]]:
    reads = []
    for f in log.glob("read-*"):
        version, size, digest = f.read_text().split()
        reads.append((version, int(size), digest))
    return reads


def test_built_once_and_streamed_to_every_worker_of_every_run(
    project: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    runs = _run_all(project, log)
    for r in runs:
        assert r.returncode == 0, r.stdout
    assert len(list(log.glob("build-*"))) == 1, "built more than once"
    (streamed,) = log.glob("streamed-*")
    assert streamed.read_text() == "True", "no other worker streamed while it was built"
    reads = _reads(log)
    assert len(reads) == TESTS * len(runs)
    assert {(size, digest) for _, size, digest in reads} == {(SIZE_MIB * MIB, _expected())}
    # The default directory: the pytest cache of the project's rootdir, private.
    shared = project / ".pytest_cache" / "d" / "streamcache"
    assert shared.is_dir() and shared.stat().st_mode & 0o077 == 0
    assert (project / ".pytest_cache" / ".gitignore").exists()
    assert not settle(shared), "IPC objects leaked"


def test_a_killed_builder_makes_another_worker_build(project: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    shared = tmp_path / "shared"
    runs = _run_all(project, log, ARTEFACT_KILL="1", STREAMCACHE_DIR=str(shared))
    builds = sorted(p.name for p in log.glob("build-*"))
    assert len(builds) == 2, builds  # the killed one and one afresh
    (streamed,) = log.glob("streamed-*")
    assert streamed.read_text() == "True", "no worker was streaming when the builder died"
    # The builder's own test fails (its worker crashed); every other test passes.
    failed = [r for r in runs if r.returncode != 0]
    assert len(failed) == 1, [r.stdout for r in runs]
    assert "crashed" in failed[0].stdout and "1 failed" in failed[0].stdout, failed[0].stdout
    reads = _reads(log)
    assert len(reads) == TESTS * len(runs) - 1
    assert {(size, digest) for _, size, digest in reads} == {(SIZE_MIB * MIB, _expected())}
    assert shared.is_dir()  # STREAMCACHE_DIR, not the project's pytest cache
    assert not (project / ".pytest_cache" / "d" / "streamcache").exists()
    assert not settle(shared), "IPC objects leaked"
