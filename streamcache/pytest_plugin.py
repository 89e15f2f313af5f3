"""pytest plugin: one expensive artefact (a dataset, a built wheel, a model file) built
once and shared by every pytest-xdist worker and every ``tox -p`` environment, on any
Python version, while it is being built.

Installed with streamcache (the ``pytest11`` entry point), it does nothing until a test
or fixture asks for ``shared_artifact``::

    @pytest.fixture(scope="session")
    def model(shared_artifact):
        def build(w):                      # w: a binary writer
            for chunk in train():
                w.write(chunk)
        return shared_artifact("model-v3.bin", build)   # -> Path of a complete copy

The first worker anywhere to ask runs ``build``; every other worker, in this session or
in a concurrent one on the same directory, streams the bytes into its own copy as they
are written, and gets the path when the copy is complete. If the building process dies
(a SIGKILL, an OOM kill, a crashed worker), the others notice within a second and one
of them builds afresh; a ``build`` that raises fails every waiting test with its error.

The shared directory is ``STREAMCACHE_DIR`` if set, else the ini option
``streamcache_dir`` (relative to the ini file), else ``d/streamcache`` in the project's
pytest cache (``.pytest_cache`` under the rootdir, also under tox, which otherwise
gives each environment a cache of its own), which every tox environment and xdist
worker of a project shares.
An artefact stays shared for ``streamcache_max_age`` seconds (default 3600): put what
it is built from (a version, a hash of the inputs) in its key.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .cache import StreamCache
from .config import seconds
from .entry.create_types import Create
from .errors import ProducerDied

__all__ = ["SharedArtifacts"]

DEFAULT_MAX_AGE = 3600.0
# A builder that dies makes a waiting worker build afresh; this many deaths in a row
# for one key fail the test instead.
ATTEMPTS = 5

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "streamcache_dir",
        "directory shared_artifact shares artefacts through (relative to the ini file; "
        "default .pytest_cache/d/streamcache; the STREAMCACHE_DIR environment variable wins)",
        default="",
    )
    parser.addini(
        "streamcache_max_age",
        f"seconds an artefact of shared_artifact stays shared (default {DEFAULT_MAX_AGE:g})",
        default=f"{DEFAULT_MAX_AGE:g}",
    )


def shared_dir(config: pytest.Config) -> Path:
    """Where artefacts are shared: STREAMCACHE_DIR, the ini option, or the project's
    pytest cache."""
    env = os.environ.get("STREAMCACHE_DIR")
    if env:
        return Path(env).absolute()
    ini = str(config.getini("streamcache_dir"))
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return (base / ini).absolute()
    return _pytest_cache_dir(config) / "d" / "streamcache"


def _pytest_cache_dir(config: pytest.Config) -> Path:
    """The project's pytest cache dir, as pytest picks it outside tox: under tox its
    default moves into each environment's dir, which would share nothing."""
    value = str(config.getini("cache_dir"))
    tox_env = os.environ.get("TOX_ENV_DIR")
    if tox_env and value == os.path.join(tox_env, ".pytest_cache"):
        value = ".pytest_cache"
    return config.rootpath / os.path.expanduser(os.path.expandvars(value))


def _make_parent(path: Path) -> None:
    """Create the parents of the shared dir; a pytest cache dir made here gets the
    files pytest gives it (so that git and backups leave it alone)."""
    parent = path.parent
    if parent.is_dir():
        return
    parent.mkdir(parents=True, exist_ok=True)
    if parent.name == "d":
        cache = parent.parent
        for name, text in _CACHE_FILES.items():
            if not (cache / name).exists():
                (cache / name).write_text(text)


_CACHE_FILES = {
    ".gitignore": "# Created by streamcache's pytest plugin, as pytest does.\n*\n",
    "CACHEDIR.TAG": "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# A cache directory tag: backup tools may skip this directory.\n",
}


class SharedArtifacts:
    """``shared_artifact(key, build, *, path=None, timeout=None) -> Path``: the session's
    fixture. The cache on ``dir`` opens on first use."""

    def __init__(self, dir: Path, copies: Callable[[], Path], max_age: float) -> None:
        self.dir = dir
        self._copies = copies
        self._max_age = max_age
        self._cache: StreamCache | None = None
        self._done: dict[str, Path] = {}

    def _open(self) -> StreamCache:
        if self._cache is None:
            _make_parent(self.dir)
            self._cache = StreamCache(self.dir, max_age=self._max_age, registry=None)
        return self._cache

    def __call__(
        self,
        key: str,
        build: Create,
        *,
        path: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
    ) -> Path:
        """The artefact ``key`` as a complete file: at ``path``, or by default a file of
        this worker named after the key. ``build(w)`` writes it to the binary writer
        ``w`` if no one has (or is doing so); ``timeout`` bounds the wait in seconds."""
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if path is None and key in self._done:
            return self._done[key]
        dst = Path(path) if path is not None else self._copies() / _file_name(key)
        cache = self._open()
        for attempt in range(1, ATTEMPTS + 1):
            with open(dst, "wb") as f:
                try:
                    cache.fetch(key, f, build, timeout=timeout)
                    break
                except ProducerDied:
                    if attempt == ATTEMPTS:
                        raise
        if path is None:
            self._done[key] = dst
        return dst

    def close(self) -> None:
        if self._cache is not None:
            self._cache.stop()


def _file_name(key: str) -> str:
    """The key itself when it makes a plain file name (``pkg-1.0-py3-none-any.whl``),
    else its hash."""
    if _SAFE_NAME.fullmatch(key):
        return key
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@pytest.fixture(scope="session")
def shared_artifact(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedArtifacts]:
    """Build an expensive artefact once for every xdist worker and tox environment;
    see :mod:`streamcache.pytest_plugin`."""
    config = request.config
    text = str(config.getini("streamcache_max_age"))
    try:
        max_age = seconds(float(text), "streamcache_max_age")
    except ValueError:
        raise pytest.UsageError(
            f"the ini option streamcache_max_age must be seconds >= 0, not {text!r}"
        ) from None
    copies: list[Path] = []

    def copies_dir() -> Path:
        if not copies:
            copies.append(tmp_path_factory.mktemp("streamcache"))
        return copies[0]

    artifacts = SharedArtifacts(shared_dir(config), copies_dir, max_age)
    try:
        yield artifacts
    finally:
        artifacts.close()
