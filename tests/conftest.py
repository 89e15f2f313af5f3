"""Shared fixtures: a private cache dir per test, and a check that no IPC object leaks."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import settle


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
