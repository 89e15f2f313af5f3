"""One cache shared by interpreters of different Python versions at the same time.

The other interpreters come from tox's environments (tox sets STREAMCACHE_TOX_WORKDIR;
`.ci/run` creates every environment before any test runs) or from
STREAMCACHE_PYTHONS (interpreters with streamcache installed, separated by ':').
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import streamcache

VERSIONS = ("3.10", "3.11", "3.12", "3.13")
CHUNK = 256 * 1024
CHUNKS = 32

# create: one chunk, then wait for a byte on a FIFO (the test writes it once every
# reader has attached), then the rest. Deterministic content from the key.
PRODUCER = r"""
import hashlib, sys, streamcache
cache_dir, key, fifo = sys.argv[1:4]
chunk, chunks = int(sys.argv[4]), int(sys.argv[5])
def block(i):
    return hashlib.sha256(f"{key}:{i}".encode()).digest() * (chunk // 32)
def create(w):
    w.write(block(0))
    print("first-chunk-written", flush=True)
    if fifo != "-":
        with open(fifo, "rb") as f:
            f.read(1)
    for i in range(1, chunks):
        w.write(block(i))
class Sink:
    def __init__(self): self.h = hashlib.sha256()
    def write(self, b): self.h.update(b); return len(b)
cache = streamcache.StreamCache(cache_dir, window=chunk)
sink = Sink()
written, created = cache.fetch(key, sink, create, timeout=60)
major, minor = sys.version_info[:2]
print("result", major, minor, written, created, sink.h.hexdigest(), flush=True)
cache.stop()
"""

READER = r"""
import hashlib, sys, streamcache
cache_dir, key = sys.argv[1], sys.argv[2]
def create(w):
    raise RuntimeError("a reader must not create")
cache = streamcache.StreamCache(cache_dir)
with cache.stream(key, create, timeout=60) as s:
    print("attached", s.created, flush=True)
    h = hashlib.sha256()
    n = 0
    for chunk in s:
        h.update(chunk)
        n += len(chunk)
print("result", sys.version_info[0], sys.version_info[1], n, s.created, h.hexdigest(), flush=True)
cache.stop()
"""


def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys, streamcache; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _interpreters() -> dict[str, str]:
    """Interpreters with streamcache installed, by version, this one included."""
    found = {"{}.{}".format(*sys.version_info[:2]): sys.executable}
    candidates: list[str] = []
    workdir = os.environ.get("STREAMCACHE_TOX_WORKDIR")
    if workdir:
        candidates += [
            str(Path(workdir) / f"py{v.replace('.', '')}" / "bin" / "python") for v in VERSIONS
        ]
    candidates += [p for p in os.environ.get("STREAMCACHE_PYTHONS", "").split(":") if p]
    for python in candidates:
        if os.path.exists(python):
            version = _version_of(python)
            if version and version not in found:
                found[version] = python
    return found


@pytest.fixture(scope="module")
def interpreters() -> dict[str, str]:
    found = _interpreters()
    if len(found) < 2:
        pytest.skip(
            "only Python {} has streamcache installed here; run the suite through tox "
            "(`.ci/run` builds py310..py313 first) or set STREAMCACHE_PYTHONS".format(
                ", ".join(sorted(found))
            )
        )
    return found


def _expected(key: str) -> str:
    h = hashlib.sha256()
    for i in range(CHUNKS):
        h.update(hashlib.sha256(f"{key}:{i}".encode()).digest() * (CHUNK // 32))
    return h.hexdigest()


def _result(line: str) -> tuple[str, int, bool, str]:
    _, major, minor, n, created, digest = line.split()
    return f"{major}.{minor}", int(n), created == "True", digest


def _readline(proc: subprocess.Popen[str], want: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded by the test's pytest-timeout
    assert line.startswith(want), f"expected {want!r}, got {line!r}; stderr: {_stderr(proc)}"
    return line


def _stderr(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        return "(still running)"
    assert proc.stderr is not None
    return proc.stderr.read()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("producer_version", VERSIONS)
def test_producer_streams_to_readers_on_other_versions(
    interpreters: dict[str, str], producer_version: str, cache_dir: Path, tmp_path: Path
) -> None:
    """A producer on one version streams, while still writing, to readers on the others."""
    if producer_version not in interpreters:
        pytest.skip(f"Python {producer_version} with streamcache is not available here")
    streamcache.StreamCache(cache_dir, cleanup_interval=0)  # create the dir once, 0700
    key = f"xver-{producer_version}"
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    run = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    producer = subprocess.Popen(
        [
            interpreters[producer_version],
            "-c",
            PRODUCER,
            str(cache_dir),
            key,
            str(fifo),
            str(CHUNK),
            str(CHUNKS),
        ],
        **run,  # type: ignore[call-overload]
    )
    readers: list[subprocess.Popen[str]] = []
    try:
        _readline(producer, "first-chunk-written")
        for version, python in sorted(interpreters.items()):
            if version == producer_version:
                continue
            reader = subprocess.Popen(
                [python, "-c", READER, str(cache_dir), key],
                **run,  # type: ignore[call-overload]
            )
            readers.append(reader)
            assert _readline(reader, "attached").split()[1] == "False"
        # Every reader attached mid-stream; now let the producer finish.
        with open(fifo, "wb") as f:
            f.write(b"g")
        results = [_result(_readline(p, "result")) for p in [producer, *readers]]
    finally:
        for p in [producer, *readers]:
            try:
                p.wait(timeout=60)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    expected = _expected(key)
    assert results[0][2] is True, "the producer's fetch must report created"
    for version, n, _created, digest in results:
        assert (n, digest) == (CHUNK * CHUNKS, expected), f"Python {version} got other bytes"
    assert all(not created for _, _, created, _ in results[1:])


@pytest.mark.timeout(120)
def test_finished_entry_is_a_hit_on_every_version(
    interpreters: dict[str, str], cache_dir: Path
) -> None:
    """An entry finished by one version is a hit, with the same bytes, on all others."""
    streamcache.StreamCache(cache_dir, cleanup_interval=0)
    versions = sorted(interpreters)
    key = "xver-finished"
    first = subprocess.run(
        [
            interpreters[versions[0]],
            "-c",
            PRODUCER,
            str(cache_dir),
            key,
            "-",
            str(CHUNK),
            str(CHUNKS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    line = next(ln for ln in first.stdout.splitlines() if ln.startswith("result"))
    assert _result(line)[2] is True
    for version in versions[1:]:
        out = subprocess.run(
            [interpreters[version], "-c", READER, str(cache_dir), key],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        got = next(ln for ln in out.stdout.splitlines() if ln.startswith("result"))
        _, n, created, digest = _result(got)
        assert (n, created, digest) == (CHUNK * CHUNKS, False, _expected(key)), version
