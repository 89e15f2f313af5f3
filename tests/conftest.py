"""Shared fixtures: a private cache dir per test, and a check that no IPC object leaks."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ipc
import streamcache


def ipc_objects(cache_dir: Path) -> list[str]:
    return [o.name for o in ipc.list_objects(ipc.prefix_for(cache_dir))]


def settle(cache_dir: Path, timeout: float = 10.0) -> list[str]:
    """Run cleanup passes until nothing of ``cache_dir`` is left in /dev/shm, or until
    ``timeout``: a pass removes what dead processes left at once, and objects of live
    producers go when they finish. Returns what is still left."""
    deadline = time.monotonic() + timeout
    while cache_dir.exists():
        streamcache.StreamCache(cache_dir, cleanup_interval=0).gc()
        if not ipc_objects(cache_dir) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return ipc_objects(cache_dir)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh cache directory; at teardown nothing of it may be left in /dev/shm."""
    path = tmp_path / "cache"
    yield path
    # Children of a test that failed half-way must not keep producing (and holding
    # their IPC objects) while the leak check runs.
    _kill_children()
    left = settle(path)
    assert not left, f"IPC objects leaked: {left}"


@pytest.fixture
def spawn() -> multiprocessing.context.SpawnContext:
    """A multiprocessing context that starts fresh interpreters (safe under xdist's threads)."""
    return multiprocessing.get_context("spawn")


def _kill_children() -> None:
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
    yield
    _kill_children()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
