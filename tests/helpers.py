"""Small helpers shared by test modules: bounded waits and a child-process conversation."""

from __future__ import annotations

import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import ipc

WAIT = 20.0  # bound for every wait in the tests that use these helpers


def wait_until(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``pred`` every millisecond until it holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.001)


def recv(conn: Connection, timeout: float = WAIT) -> Any:
    if not conn.poll(timeout):
        raise AssertionError("child process did not answer in time")
    return conn.recv()


def ask(conn: Connection, *cmd: Any) -> Any:
    """Send a command to a child and return its reply (AssertionError if it failed)."""
    conn.send(cmd)
    reply = recv(conn)
    if reply[0] == "error":
        raise AssertionError(f"child failed: {reply[1]}")
    return reply


def join_ok(proc: Any) -> None:
    proc.join(WAIT)
    assert proc.exitcode == 0, f"child {proc.pid} exit code {proc.exitcode}"


def is_dead(pid: int, start: float) -> bool:
    return not ipc.is_alive(pid, start)
