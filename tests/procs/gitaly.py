"""Child processes and the helpers that start them and read their one result, shared by
tests/gitaly/test_gitaly_cache.py and tests/entry/test_inline_creator.py (spawn context:
module level)."""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Callable
from typing import Any

from streamcache import Create, CreateError, StreamCache

SpawnContext = multiprocessing.context.SpawnContext

WAIT = 20.0  # bound on every wait for another process or thread (seconds)
HOUR = 3600.0


def writer(data: bytes) -> Create:
    """Gitaly's writeString: a create that writes ``data`` in one write."""

    def create(w: Any) -> None:
        w.write(data)

    return create


def result_of(q: Any, proc: multiprocessing.process.BaseProcess) -> Any:
    """The one result a child puts on ``q``; the child must then exit cleanly."""
    try:
        result = q.get(timeout=WAIT)
    except Exception as exc:
        proc.kill()
        proc.join(5)
        msg = f"child {proc.name} sent no result (exit code {proc.exitcode})"
        raise AssertionError(msg) from exc
    proc.join(WAIT)
    assert proc.exitcode == 0, f"child {proc.name} exited with {proc.exitcode}"
    return result


def start(
    spawn: SpawnContext, target: Callable[..., None], *args: Any
) -> tuple[multiprocessing.process.BaseProcess, Any]:
    q = spawn.Queue()
    proc = spawn.Process(target=target, args=(*args, q), daemon=True)
    proc.start()
    return proc, q


def wait_event(event: Any, what: str) -> None:
    assert event.wait(WAIT), f"timed out waiting for {what}"


def child_produce_gated(
    cache_dir: str,
    key: str,
    head: bytes,
    tail: bytes,
    fail: bool,
    produced: Any,
    go: Any,
    q: Any,
) -> None:
    """Create ``key``: write ``head``, set ``produced``, wait for ``go``, then either raise
    ValueError("test error") or write ``tail``. Reports what this process's fetch saw."""
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)

    def create(w: Any) -> None:
        w.write(head)
        produced.set()
        if not go.wait(WAIT):
            raise RuntimeError("the test never released the producer")
        if fail:
            raise ValueError("test error")
        w.write(tail)

    out = io.BytesIO()
    try:
        res = cache.fetch(key, out, create)
        q.put(("ok", out.getvalue(), res.created))
    except CreateError as exc:
        cause = exc.__cause__
        q.put(("CreateError", str(exc), type(cause).__name__, str(cause), out.getvalue()))
    finally:
        cache.stop()


def child_wait(cache_dir: str, key: str, attached: Any, q: Any) -> None:
    """Attach to the entry of ``key`` (a create that must not run), say so, read it all."""
    cache = StreamCache(cache_dir, max_age=HOUR, liveness=0.2)
    got = bytearray()
    created: bool | None = None
    try:
        with cache.stream(key, writer(b"WRONG")) as s:
            created = s.created
            attached.set()
            for chunk in s:
                got += chunk
        q.put(("ok", bytes(got), created))
    except CreateError as exc:
        q.put((type(exc).__name__, str(exc), bytes(got), created))
    finally:
        cache.stop()
