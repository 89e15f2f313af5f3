"""What tools/bench.py and tools/peers.py share: sizes, bounds, the message type of the
children's result queue, spawned children (Children), scratch directories, the warm-up
write (precondition) and sizes in words. bench imports peers for its --peers table, so
peers takes these from here instead of from bench."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from types import TracebackType
from typing import Any

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
WAIT = 300.0  # bound for a transfer, a child's work, a queue get
READY_WAIT = 120.0  # bound for children to start, events and barriers
JOIN_WAIT = 60.0  # bound for children to exit once done

Msg = tuple[str, str, Any]  # (kind, role, payload): kinds "ready", "done", "progress", "error"


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A benchmark could not run or a correctness check failed."""


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


def precondition(directory: str, nbytes: int, data: bytes) -> None:
    """Write more than ``nbytes`` (a quarter more, at least 4 chunks) to a scratch file in
    ``directory`` and delete it, just before a timed section that writes ``nbytes`` to that
    filesystem (the warm-up: a file bigger than the data).

    On this kind of VM the first large write after about a second without one runs up to
    10x slower (memory freed earlier has gone back to the host, and ext4 pays more than
    tmpfs); a write right after a bigger one does not. Ours and the baseline are
    conditioned alike, so their ratio measures the code, not the VM."""
    chunks = nbytes // len(data)
    fd, path = tempfile.mkstemp(prefix=".precondition-", dir=directory)
    try:
        for _ in range(chunks + max(chunks // 4, 4)):
            write_all(fd, data)
    finally:
        os.close(fd)
        os.unlink(path)


@contextlib.contextmanager
def reporting(out: Queue[Msg], role: str) -> Iterator[None]:
    """In a child: send any exception's traceback to the bench process, then re-raise."""
    try:
        yield
    except BaseException:
        out.put(("error", role, traceback.format_exc()))
        raise


class Children:
    """Spawned children with one result queue; on failure every child is killed, and on
    success every child must exit 0 within JOIN_WAIT."""

    def __init__(self) -> None:
        self.ctx: SpawnContext = mp.get_context("spawn")
        self.procs: list[SpawnProcess] = []
        self.out: Queue[Msg] = self.ctx.Queue()

    def start(self, target: Callable[..., None], *args: Any) -> SpawnProcess:
        p = self.ctx.Process(target=target, args=args, daemon=True)
        p.start()
        self.procs.append(p)
        return p

    def next(self, deadline: float, what: str) -> Msg:
        while True:
            try:
                msg = self.out.get(timeout=0.25)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise BenchError(f"timed out waiting for {what}") from None
                self._check_deaths(what)
                continue
            if msg[0] == "error":
                raise BenchError(f"child {msg[1]} failed:\n{msg[2]}")
            return msg

    def _check_deaths(self, what: str) -> None:
        for p in self.procs:
            if p.exitcode not in (None, 0):
                with contextlib.suppress(queue.Empty):
                    msg = self.out.get(timeout=1.0)  # its traceback may be on the way
                    if msg[0] == "error":
                        raise BenchError(f"child {msg[1]} failed:\n{msg[2]}")
                raise BenchError(f"child {p.name} exited with {p.exitcode} during {what}")

    def collect(self, kind: str, count: int, timeout: float, what: str) -> list[dict[str, Any]]:
        """``count`` messages of ``kind``; each payload gets its sender as "role"."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while len(got) < count:
            k, role, payload = self.next(deadline, what)
            if k != kind:
                raise BenchError(f"unexpected {k!r} from {role} while waiting for {what}")
            got.append({**payload, "role": role})
        return got

    def kill_all(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if et is not None:
                self.kill_all()
                return
            deadline = time.monotonic() + JOIN_WAIT
            for p in self.procs:
                p.join(max(deadline - time.monotonic(), 0.1))
            stuck = [p for p in self.procs if p.is_alive()]
            failed = [p for p in self.procs if not p.is_alive() and p.exitcode != 0]
            if stuck or failed:
                self.kill_all()
                raise BenchError(
                    f"children did not exit cleanly: stuck {[p.pid for p in stuck]}, "
                    f"failed {[(p.pid, p.exitcode) for p in failed]}"
                )
        finally:
            self.out.close()


@contextlib.contextmanager
def scratch(tag: str) -> Iterator[str]:
    """A fresh unique directory under tempfile.gettempdir(), removed afterwards."""
    d = tempfile.mkdtemp(prefix=f"scbench-{tag}-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fmt_size(n: float) -> str:
    if abs(n) >= GiB and n % GiB == 0:
        return f"{n / GiB:.0f} GiB"
    if abs(n) >= MiB:
        return f"{n / MiB:.1f} MiB".replace(".0 MiB", " MiB")
    return f"{n / KiB:.0f} KiB"
