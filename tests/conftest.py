"""Shared fixtures: a private cache dir per test, and a check that no IPC object leaks."""

from __future__ import annotations

import multiprocessing
import os
import signal
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


# Signals whose disposition or mask a test must leave as it found them: every later test of
# the same worker starts its children with them (an ignored or blocked SIGINT is
# inherited across exec, and Python then never raises KeyboardInterrupt in the child).
_WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD)


@pytest.fixture(autouse=True)
def _signals_left_as_found() -> Iterator[None]:
    handlers = {s: signal.getsignal(s) for s in _WATCHED}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    changed = [s.name for s in _WATCHED if signal.getsignal(s) is not handlers[s]]
    now_blocked = signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    for s in _WATCHED:
        signal.signal(s, handlers[s])
    if changed or now_blocked != blocked:
        pytest.fail(
            f"the test changed the worker's signal state: handlers of {changed}, "
            f"blocked {sorted(x.name for x in now_blocked)} (was {sorted(x.name for x in blocked)})"
        )


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
