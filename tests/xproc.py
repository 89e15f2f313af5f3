"""Child-process functions for the cross-process tests (spawn context) and shared helpers.

Everything a spawned child runs lives here at module level so that the spawn context
can import it by name. Children talk to the test through multiprocessing queues and
events only; every wait in a child is bounded so a broken library fails a test instead
of hanging it. A child reports an unexpected exception as ``("error", traceback)``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import queue
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import ipc
import streamcache
from streamcache.cache import LAYOUT

WAIT = 30.0  # bound on every wait in a child (a test fails long before)

F = TypeVar("F", bound=Callable[..., None])


# -- payloads ---------------------------------------------------------------------------------


def payload_chunk(seed: str, i: int, size: int) -> bytes:
    """Chunk ``i`` of the deterministic payload named ``seed`` (distinct per chunk)."""
    head = f"{seed}:{i}:".encode()
    block = hashlib.sha256(head).digest()
    return (head + block * (size // len(block) + 1))[:size]


def payload(seed: str, total: int, chunk: int) -> Iterator[bytes]:
    """The payload ``seed`` of ``total`` bytes in writes of ``chunk`` bytes."""
    i = 0
    done = 0
    while done < total:
        n = min(chunk, total - done)
        yield payload_chunk(seed, i, n)
        done += n
        i += 1


def payload_bytes(seed: str, total: int, chunk: int) -> bytes:
    return b"".join(payload(seed, total, chunk))


def payload_sha(seed: str, total: int, chunk: int) -> str:
    h = hashlib.sha256()
    for c in payload(seed, total, chunk):
        h.update(c)
    return h.hexdigest()


class HashSink:
    """A dst that keeps only the sha256 and length of what it receives."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        b = bytes(data)
        self._h.update(b)
        self.n += len(b)
        return len(b)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def writer_of(seed: str, total: int, chunk: int) -> Callable[[Any], None]:
    """A create that writes the payload ``seed``."""

    def create(w: Any) -> None:
        for c in payload(seed, total, chunk):
            w.write(c)

    return create


def forbidden_create(w: Any) -> None:
    """The create a reader passes when it must not become the producer."""
    raise RuntimeError("this fetch was expected to find the entry, not create it")


def append_line(path: str, text: str) -> None:
    """Append one line atomically (O_APPEND): counts creates across processes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


# -- test-side helpers ------------------------------------------------------------------------


def readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` becomes readable within ``timeout`` seconds. poll, not select: a
    long-lived test process holds descriptors past select's limit of 1023 (each cache
    directory a process used keeps its lock files open)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(timeout, 0.0) * 1000))


def expect(q: Any, tag: str, timeout: float = 20.0) -> tuple[Any, ...]:
    """The next message of a child's queue, which must carry ``tag``."""
    try:
        msg = q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {tag!r} message from the child within {timeout} s") from None
    if msg[0] == "error":
        raise AssertionError(f"child failed while the test expected {tag!r}:\n{msg[1]}")
    assert msg[0] == tag, f"expected {tag!r}, got {msg!r}"
    return tuple(msg[1:])


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Re-check ``cond`` until true; fail after ``timeout`` s (observing another process's
    shared memory has no notification to wait on)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def wait_pid(pid: int, timeout: float) -> int:
    """Reap a forked child (bounded): its exit code, or -signal."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1
    if pidfd >= 0:
        try:
            ready = readable(pidfd, timeout)
        finally:
            os.close(pidfd)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child {pid} did not exit within {timeout} s")
        _, status = os.waitpid(pid, 0)
    else:  # pragma: no cover - no pidfd (old kernel / macOS)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"forked child {pid} did not exit within {timeout} s")
            time.sleep(0.01)
    return os.waitstatus_to_exitcode(status)


def data_files(cache_dir: str | os.PathLike[str]) -> list[str]:
    """Files holding entries' bytes: in flight (data/) and finished (entries/)."""
    found: list[str] = []
    for sub in ("data", "entries"):
        for dirpath, _dirs, files in os.walk(os.path.join(os.fspath(cache_dir), LAYOUT, sub)):
            found.extend(os.path.join(dirpath, f) for f in files)
    return found


def ipc_names(cache_dir: str | os.PathLike[str]) -> list[str]:
    return [o.name for o in ipc.list_objects(ipc.prefix_for(cache_dir))]


# -- child functions --------------------------------------------------------------------------


def reporting(fn: F) -> F:
    """Run a child function; on an exception put ("error", traceback) on its ``out`` queue."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        out = kwargs["out"]
        try:
            fn(*args, **kwargs)
        except BaseException:
            out.put(("error", traceback.format_exc()))
            raise

    return run  # type: ignore[return-value]


def _read_exactly(s: streamcache.Stream, n: int, sink: HashSink) -> int:
    got = 0
    while got < n:
        data = s.read(n - got)
        if not data:
            break
        sink.write(data)
        got += len(data)
    return got


@reporting
def storm_fetch(
    dir: str,
    key: str,
    seed: str,
    total: int,
    chunk: int,
    count_path: str,
    barrier: Any,
    *,
    out: Any,
) -> None:
    """Wait for every sibling, then fetch ``key``; the create appends to ``count_path``."""
    cache = streamcache.StreamCache(dir, liveness=0.2)

    def create(w: Any) -> None:
        append_line(count_path, str(os.getpid()))
        for c in payload(seed, total, chunk):
            w.write(c)

    barrier.wait(WAIT)
    sink = HashSink()
    res = cache.fetch(key, sink, create, timeout=WAIT)
    cache.stop()
    out.put(("fetched", os.getpid(), sink.hexdigest(), res.written, res.created))


@reporting
def slow_producer(
    dir: str,
    key: str,
    seed: str,
    total: int,
    chunk: int,
    wrote_first: Any,
    release: Any,
    *,
    out: Any,
) -> None:
    """Fetch ``key`` as its creator: write the first chunk, then wait for ``release``."""
    cache = streamcache.StreamCache(dir, liveness=0.2)

    def create(w: Any) -> None:
        chunks = payload(seed, total, chunk)
        w.write(next(chunks))
        wrote_first.set()
        if not release.wait(WAIT):
            raise TimeoutError("the test never released the producer")
        for c in chunks:
            w.write(c)

    sink = HashSink()
    res = cache.fetch(key, sink, create, timeout=WAIT)
    out.put(("fetched", sink.hexdigest(), res.written, res.created))


def read_head(s: streamcache.Stream, first: int) -> bytes:
    """The first ``first`` bytes of ``s`` (fewer if it ends sooner)."""
    head = b""
    while len(head) < first:
        data = s.read(first - len(head))
        if not data:
            break
        head += data
    return head


@reporting
def first_then_rest_reader(dir: str, key: str, first: int, *, out: Any) -> None:
    """Attach to ``key`` (must not create), report its first ``first`` bytes, then the rest."""
    cache = streamcache.StreamCache(dir, liveness=0.2)
    with cache.stream(key, forbidden_create, timeout=WAIT) as s:
        out.put(("attached", s.created))
        head = read_head(s, first)
        out.put(("first", head))
        sink = HashSink()
        sink.write(head)
        for data in s:
            sink.write(data)
    out.put(("done", sink.hexdigest(), sink.n))


@reporting
def bp_producer(
    dir: str,
    key: str,
    seed: str,
    total: int,
    chunk: int,
    window: int,
    reader_attached: Any,
    progress: Any,
    *,
    out: Any,
) -> None:
    """Create ``key`` with ``window`` and leave its own reader, so another process's reader
    is the only one. ``progress`` counts bytes whose write() returned. The create reports
    its outcome (the exception's type and text) and re-raises."""
    cache = streamcache.StreamCache(dir, window=window, liveness=0.2)

    def create(w: Any) -> None:
        try:
            if not reader_attached.wait(WAIT):
                raise TimeoutError("no reader attached")
            for c in payload(seed, total, chunk):
                w.write(c)
                with progress.get_lock():
                    progress.value += len(c)
        except BaseException as exc:
            out.put(("create-failed", type(exc).__name__, str(exc)))
            raise
        out.put(("create-ok", progress.value))

    s = cache.stream(key, create, timeout=WAIT)
    out.put(("created", s.created))
    if not reader_attached.wait(WAIT):
        raise TimeoutError("no reader attached")
    s.close()  # the producer's own reader leaves: the other process's reader is the only one
    out.put(("exit", cache.wait_producers(WAIT)))


@reporting
def commanded_reader(dir: str, key: str, attached: Any, commands: Any, *, out: Any) -> None:
    """Attach to ``key``; then read exactly as many bytes as each command says ("all": to the
    end), reporting the position after each command."""
    cache = streamcache.StreamCache(dir, liveness=0.2)
    sink = HashSink()
    with cache.stream(key, forbidden_create, timeout=WAIT) as s:
        out.put(("attached", s.created, os.getpid()))
        attached.set()
        while True:
            cmd = commands.get(timeout=WAIT)
            if cmd == "all":
                for data in s:
                    sink.write(data)
                break
            _read_exactly(s, int(cmd), sink)
            out.put(("pos", sink.n))
    out.put(("done", sink.hexdigest(), sink.n))


@reporting
def stuck_producer(
    dir: str, key: str, seed: str, chunk: int, wrote_first: Any, *, out: Any
) -> None:
    """Create ``key``, write one chunk and never finish (the test SIGKILLs this process)."""
    cache = streamcache.StreamCache(dir, liveness=0.2)
    never = threading.Event()

    def create(w: Any) -> None:
        w.write(payload_chunk(seed, 0, chunk))
        wrote_first.set()
        never.wait(WAIT * 2)
        raise TimeoutError("the test did not kill the producer")

    cache.fetch(key, HashSink(), create, timeout=WAIT * 2)


@reporting
def dying_reader(dir: str, key: str, first: int, *, out: Any) -> None:
    """Attach to ``key``, report the first ``first`` bytes, then read on and report how
    the stream ended."""
    cache = streamcache.StreamCache(dir, liveness=0.2)
    with cache.stream(key, forbidden_create, timeout=WAIT) as s:
        out.put(("attached", s.created))
        head = read_head(s, first)
        out.put(("first", head))
        try:
            rest = sum(len(d) for d in s)
        except streamcache.Error as exc:
            out.put(
                (
                    "ended",
                    type(exc).__name__,
                    isinstance(exc, streamcache.ProducerDied),
                    isinstance(exc, streamcache.CreateError),
                    str(exc),
                )
            )
        else:
            out.put(("ended", "eof", False, False, f"{rest} more bytes"))


@reporting
def hold_index_lock(dir: str, key_hash: str, locked: Any, *, out: Any) -> None:
    """Hold ``key_hash``'s index lock stripe and stay inside the critical section."""
    from streamcache.disk.index import Index

    with Index(os.path.join(dir, LAYOUT)).locked(key_hash, WAIT):
        locked.set()
        time.sleep(WAIT * 2)  # the test SIGKILLs this process in here


@reporting
def idle(stop: Any, *, out: Any) -> None:
    """A live process that does nothing until ``stop`` is set."""
    out.put(("started", os.getpid(), ipc.current_process().start))
    stop.wait(WAIT * 2)


# -- children of tests/ipc/test_ipc.py ------------------------------------------------------------


@reporting
def segment_peer(name: str, commands: Any, *, out: Any) -> None:
    """Open a segment created by the test and follow its commands."""
    seg = ipc.Segment.open(name)
    try:
        me = ipc.current_process()
        prod = seg.producer
        out.put(("opened", prod.pid, prod.start, seg.slot_count, seg.offset, seg.state))
        slot: ipc.ReaderSlot | None = None
        while True:
            cmd, *args = commands.get(timeout=WAIT)
            if cmd == "claim":
                slot = seg.claim_slot(me)
                out.put(("claimed", None if slot is None else slot.index, me.pid, me.start))
            elif cmd == "position":
                assert slot is not None
                slot.set_position(args[0])
                slot.set_waiting(True)
                out.put(("positioned",))
            elif cmd == "look":
                out.put(("looked", seg.offset, seg.state, seg.error, seg.producer_waiting))
            elif cmd == "release":
                assert slot is not None
                slot.release()
                out.put(("released",))
            elif cmd == "stay":
                out.put(("staying",))
                time.sleep(WAIT * 2)  # until killed
            elif cmd == "quit":
                break
    finally:
        seg.close()


@reporting
def bell_peer(r_name: str, w_name: str, *, out: Any) -> None:
    """Wait on doorbell ``r`` (rung by the test), ring ``w``, then time out on ``r``."""
    r = ipc.Doorbell.open(r_name)
    w = ipc.Doorbell.open(w_name)
    try:
        out.put(("ready",))
        out.put(("rang", r.wait(WAIT)))
        w.ring()
        out.put(("timed", r.wait(0.05)))
    finally:
        r.close()
        w.close()


@reporting
def wakeup_reader(base: str, claim: Any, end: int, ahead: int, period: float, *, out: Any) -> None:
    """A reader of channel ``base`` that takes every byte as soon as it is published,
    sleeping whenever it has caught up, until the offset reaches ``end``. ``ahead``:
    each sleep asks to be woken only once that many more bytes are published (1: the next
    byte), never giving up before ``period``. Every sleep has its own liveness check
    ``period`` away, so a CHECK wake-up means one sleep outlasted the period while the
    producer kept publishing: a lost wake-up. Reports the CHECKs and the sleeps."""
    from ipc import futex
    from ipc.channel import Channel

    ch = Channel.open(base)
    try:
        with claim:  # slots are claimed under the caller's lock
            slot = ch.seg.claim_slot(ipc.current_process())
        assert slot is not None
        out.put(("ready", slot.index))
        position = checks = 0
        waits0 = futex.counts.waits
        while position < end:
            offset, state = ch.seg.progress()
            if offset > position:
                position = offset
                slot.set_position(position)
                ch.advanced()
                continue
            assert state == ipc.STATE_WRITING, f"ended at {offset} before {end}"
            waiter = ipc.Waiter(period)
            wake = ch.wait_for_progress(slot, position, waiter, None, position + ahead, 2 * period)
            if wake is ipc.Wake.CHECK:
                checks += 1
        slot.release()
        ch.advanced()
        out.put(("done", checks, futex.counts.waits - waits0))
    finally:
        ch.close()
