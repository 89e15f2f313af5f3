"""Gitaly's internal/streamcache/filestore_test.go, ported to streamcache.disk.filestore.Filestore.

Files live at ``<root>/<aa>/<name>``. Gitaly's stores are per process; here several
processes share one root, so the concurrency and uniqueness tests also run across
processes. Child-process functions live at module level: spawn children import this module.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamcache.disk.filestore import Filestore

SpawnContext = multiprocessing.context.SpawnContext

WAIT = 20.0  # bound on every wait for another process or thread (seconds)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*") if p.is_file())


def create_many(
    fs: Filestore, count: int, release: Callable[[], None], remove: bool
) -> tuple[list[str], list[str]]:
    """``count`` threads, released at once, each create (and close, and maybe remove) one
    file. Returns (names, errors)."""
    names: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def one() -> None:
        if not go.wait(WAIT):
            errors.append("never released")
            return
        try:
            name, fd = fs.create()
            os.close(fd)
            if remove:
                os.unlink(fs.path(name))
            with lock:
                names.append(name)
        except BaseException as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    try:
        release()
    finally:
        go.set()
        for t in threads:
            t.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a create thread is stuck"
    return names, errors


def child_create_many(root: str, count: int, remove: bool, ready: Any, go: Any, q: Any) -> None:
    def release() -> None:
        ready.set()
        go.wait(WAIT)

    q.put(create_many(Filestore(os.path.dirname(root)), count, release, remove))


def child_create_sequential(root: str, count: int, q: Any) -> None:
    fs = Filestore(os.path.dirname(root))
    names = []
    for _ in range(count):
        name, fd = fs.create()
        os.close(fd)
        names.append(name)
    q.put(names)


def test_filestore_create(tmp_path: Path) -> None:
    """Go: TestFilestoreCreate.

    The new file is writable and lives at <root>/data/aa/name: one directory deep, a 2-hex
    shard dir. Port: also 0600 in a 0700 shard, and the shard is the name's first 2 digits.
    """
    root = tmp_path / "data"
    fs = Filestore(str(root.parent))
    name, fd = fs.create()
    try:
        assert os.write(fd, b"\0") == 1, "file is writeable"
    finally:
        os.close(fd)
    path = fs.path(name)
    rel = os.path.relpath(path, fs.data_dir)
    assert re.fullmatch(r"[0-9a-f]{2}/[^/]+", rel), f"path {rel!r} should be aa/name"
    assert rel.split("/")[0] == name[:2]
    assert Path(path).read_bytes() == b"\0"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


@pytest.mark.parametrize("where", ["threads", "two processes"])
def test_filestore_create_concurrency(tmp_path: Path, spawn: SpawnContext, where: str) -> None:
    """Go: TestFilestoreCreate_concurrency.

    100 concurrent creates (each closes and removes its file) all succeed, including the
    races to create the same shard dirs. "two processes": 50 threads here and 50 in a child
    process on the same root, released at once.
    """
    n = 100
    root = tmp_path / "data"
    fs = Filestore(str(root.parent))
    if where == "threads":
        names, errors = create_many(fs, n, lambda: None, remove=True)
    else:
        ready, go, q = spawn.Event(), spawn.Event(), spawn.Queue()
        args = (str(root), n // 2, True, ready, go, q)
        proc = spawn.Process(target=child_create_many, args=args, daemon=True)
        proc.start()

        def release() -> None:
            assert ready.wait(WAIT), "the child's threads are ready"
            go.set()

        try:
            names, errors = create_many(fs, n - n // 2, release, remove=True)
            child_names, child_errors = q.get(timeout=WAIT)
        finally:
            go.set()
        proc.join(WAIT)
        assert proc.exitcode == 0
        names += child_names
        errors += child_errors
    assert errors == []
    assert len(set(names)) == n
    assert files_under(root) == [], "every file was removed"


@pytest.mark.parametrize("where", ["one process", "processes"])
def test_filestore_create_uniqueness(tmp_path: Path, spawn: SpawnContext, where: str) -> None:
    """Go: TestFilestoreCreate_uniqueness.

    10 stores on one root create 10 files each: all 100 names are unique and all 100
    files exist. "one process": 10 Filestore instances here (Gitaly's case); "processes":
    each store in its own process, whose counters all start at 0.
    """
    m, n = 10, 10
    root = tmp_path / "data"
    names: list[str] = []
    if where == "one process":
        for _ in range(m):
            fs = Filestore(str(root.parent))
            for _ in range(n):
                name, fd = fs.create()
                os.close(fd)
                names.append(name)
    else:
        procs = []
        for _ in range(m):
            q = spawn.Queue()
            proc = spawn.Process(
                target=child_create_sequential, args=(str(root), n, q), daemon=True
            )
            proc.start()
            procs.append((proc, q))
        for proc, q in procs:
            names += q.get(timeout=WAIT)
            proc.join(WAIT)
            assert proc.exitcode == 0
    assert len(names) == m * n
    assert len(set(names)) == m * n, "all filenames must be unique"
    assert len(files_under(root)) == m * n


def test_filestore_cleanwalk(tmp_path: Path) -> None:
    """Go: TestFilestoreCleanwalk.

    The sweep deletes files older than the cutoff, keeps directories, and repairs a
    mode-000 dir to at least 0700 (root ignores the mode for access, but the repair is
    still visible). Port: files in ``keep`` (owned by live entries) and files newer than
    the cutoff survive, as does a directory inside a shard.
    """
    root = tmp_path / "data"
    root.mkdir()
    fs = Filestore(str(root.parent))
    dir1, dir2 = root / "dir1", root / "dir2"
    file = dir2 / "file"
    dir1.mkdir(mode=0o755)
    dir2.mkdir(mode=0o755)
    file.write_bytes(b"")
    kept = dir1 / "kept"
    kept.write_bytes(b"owned by a live entry")
    newer = dir1 / "newer"
    newer.write_bytes(b"")
    nested = dir1 / "nested"
    nested.mkdir()
    cutoff = time.time() + 3600
    os.utime(newer, (cutoff + 60, cutoff + 60))
    os.chmod(dir2, 0)  # a dir with pathological permissions

    removed = fs.sweep(cutoff, {"kept"})

    for d in (dir1, dir2):
        assert d.is_dir(), "directories do not get deleted"
        mode = stat.S_IMODE(d.stat().st_mode)
        assert mode & 0o700 == 0o700, f"unexpected file mode {mode:o}"
    assert not file.exists()
    assert removed == 1
    assert kept.exists(), "files a live entry owns are kept"
    assert newer.exists(), "files newer than the cutoff are kept"
    assert nested.is_dir()
