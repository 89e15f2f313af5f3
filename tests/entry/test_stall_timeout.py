"""``StreamCache(stall_timeout=...)``: an entry whose producer, alive, writes nothing for
that long while readers wait fails for everyone with ProducerStalled (a CreateError)
and leaves the index; the next call creates afresh; the stalled producer's next write
raises (docs/design.md, "Failure model": a producer alive but writing nothing).

The producer runs in a process of its own and blocks on an Event after its first
bytes; readers run in other processes. Only one reader's cache has a stall_timeout, so
the others (and the producer's own reader) learn of the stall from the segment's mark,
not from their own clocks. A second case runs the reader on a fake clock: a producer
writing every 0.6 stall_timeouts is never declared stalled, and the clock standing
still for real seconds declares nothing.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, FakeMonotonic, index_records

import ipc
import streamcache
from streamcache import ProducerStalled, Writer

pytestmark = pytest.mark.timeout(400)
# Bound of the waits on other processes: spawned interpreters start slowly on a machine
# at load 80 (20 s was seen to pass before a reader attached).
LONG = 4 * WAIT

KEY = "stall-key"
FIRST = b"first bytes"
STALLED = "stalled: it wrote nothing for the cache's stall_timeout while readers waited"


def _produce(dir: str, orders: Any, out: Any) -> None:
    """Create KEY (a producer thread; this process's own call reads it): write FIRST,
    then one chunk per "write" order until "end". Report what the call and the writes
    raised."""
    cache = streamcache.StreamCache(dir, cleanup_interval=0, registry=None, liveness=0.2)

    def create(w: Writer) -> None:
        w.write(FIRST)
        out.put(("wrote",))
        while (order := orders.get(timeout=LONG)) != "end":
            try:
                w.write(order)
            except BaseException as exc:
                out.put(("write raised", type(exc).__name__, str(exc)))
                raise

    try:
        with cache.stream(KEY, create) as s:
            got = b""
            try:
                while chunk := s.read(1 << 16):
                    got += chunk
            except streamcache.CreateError as exc:
                out.put(("call raised", type(exc).__name__, str(exc), got))
            else:
                out.put(("call ended", got))
        assert cache.wait_producers(WAIT)
    finally:
        cache.stop()


def _read(dir: str, stall_timeout: float | None, ready: Any, out: Any) -> None:
    """Attach to KEY in flight, read FIRST, then wait for more; report how it ended and
    how many stalls this process counted."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    cache = streamcache.StreamCache(
        dir, cleanup_interval=0, registry=registry, liveness=0.2, stall_timeout=stall_timeout
    )

    def create(w: Writer) -> None:
        raise AssertionError("the reader created the entry instead of attaching")

    try:
        with cache.stream(KEY, create) as s:
            assert not s.created
            got = s.read(len(FIRST))
            ready.set()
            try:
                got += s.read()
                outcome: tuple[Any, ...] = ("ended", got)
            except Exception as exc:
                outcome = ("raised", type(exc).__name__, str(exc), got)
        stalls = registry.get_sample_value("streamcache_stalled_entries_total", {"dir": cache.dir})
        out.put((*outcome, stalls))
    finally:
        cache.stop()


def test_a_stalled_producer_fails_every_reader_in_every_process(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext
) -> None:
    orders, produced = spawn.Queue(), spawn.Queue()
    producer = spawn.Process(target=_produce, args=(str(cache_dir), orders, produced))
    producer.start()
    readers = []
    try:
        assert recv_queue(produced) == ("wrote",)
        # Two readers that learn of the stall from the mark only, then the one whose
        # cache declares it (so it cannot before the others attached).
        for stall_timeout in (None, None, 0.5):
            ready, out = spawn.Event(), spawn.Queue()
            proc = spawn.Process(target=_read, args=(str(cache_dir), stall_timeout, ready, out))
            proc.start()
            readers.append((proc, ready, out))
            assert ready.wait(LONG), "a reader never got the first bytes"
        results = [recv_queue(out) for _, _, out in readers]
        for i, (kind, name, text, got, stalls) in enumerate(results):
            assert (kind, name, got) == ("raised", "ProducerStalled", FIRST), results
            assert STALLED in text and "pid" in text
            assert stalls == (1.0 if i == 2 else 0.0), results  # counted once, by the finder
        # The producer's own call fails too; its producer, alive, still blocks.
        call = recv_queue(produced)
        assert call[:2] == ("call raised", "ProducerStalled") and STALLED in call[2]
        assert call[3] == FIRST
        # The entry left the index: the next call creates afresh, though the stalled
        # producer is still alive.
        assert producer.is_alive() and not index_records(cache_dir)
        with streamcache.StreamCache(cache_dir, cleanup_interval=0, registry=None) as cache:
            out_buf = io.BytesIO()
            res = cache.fetch(KEY, out_buf, _writing(b"afresh"))
            assert res == (6, True) and out_buf.getvalue() == b"afresh"
            # The stalled producer's next write raises.
            orders.put(b"late")
            kind, name, text = recv_queue(produced)
            assert (kind, name) == ("write raised", "ProducerStalled")
            producer.join(LONG)
            assert producer.exitcode == 0
            # Its end published nothing over the fresh entry.
            again = io.BytesIO()
            assert cache.fetch(KEY, again, _writing(b"never")) == (6, False)
            assert again.getvalue() == b"afresh"
    finally:
        orders.put("end")
        for proc, _, _ in readers:
            proc.join(LONG)
            assert proc.exitcode == 0
        producer.join(LONG)


def recv_queue(q: Any) -> Any:
    return q.get(timeout=LONG)


def _writing(data: bytes) -> Any:
    def create(w: Writer) -> None:
        w.write(data)

    return create


STALL = 10.0  # seconds on the fake clock
STEPS = 5


@pytest.mark.parametrize("how", ["stream", "astream"])
def test_a_steady_producer_is_never_stalled_and_silence_is_on_the_cache_clock(
    cache_dir: Path, spawn: multiprocessing.context.SpawnContext, how: str
) -> None:
    """The reader here, on a fake clock: writes 0.6 STALL apart for 3 STALL are never a
    stall; real seconds with the clock standing still declare nothing; moving the clock
    past STALL does."""
    orders, produced = spawn.Queue(), spawn.Queue()
    producer = spawn.Process(target=_produce, args=(str(cache_dir), orders, produced))
    producer.start()
    fake = FakeMonotonic()
    cache = streamcache.StreamCache(
        cache_dir,
        clock=ipc.Clock(monotonic=fake),
        cleanup_interval=0,
        registry=None,
        stall_timeout=STALL,
    )
    got = bytearray()
    cond = threading.Condition()
    raised: list[BaseException] = []

    def add(chunk: bytes) -> None:
        with cond:
            got.extend(chunk)
            cond.notify_all()

    async def aread() -> None:
        async with cache.astream(KEY, _writing(b"never")) as s:
            assert not s.created
            async for chunk in s:
                add(chunk)

    def read() -> None:
        try:
            if how == "astream":  # its waits on the process's hub
                asyncio.run(aread())
                return
            with cache.stream(KEY, _writing(b"never")) as s:
                assert not s.created
                for chunk in s:
                    add(chunk)
        except BaseException as exc:
            raised.append(exc)

    def wait_for(n: int) -> None:
        with cond:
            assert cond.wait_for(lambda: len(got) >= n, WAIT), (bytes(got), raised)

    try:
        assert recv_queue(produced) == ("wrote",)
        t = threading.Thread(target=read, daemon=True)
        t.start()
        wait_for(len(FIRST))
        for step in range(STEPS):
            fake.advance(0.6 * STALL)
            orders.put(b"%d" % step)
            wait_for(len(FIRST) + step + 1)
        t.join(1.5)
        assert t.is_alive() and not raised, raised
        fake.advance(STALL + 1)
        t.join(WAIT)
        assert not t.is_alive(), "the reader never declared the stall"
        assert len(raised) == 1 and isinstance(raised[0], ProducerStalled), raised
        assert bytes(got) == FIRST + b"01234"
        call = recv_queue(produced)
        assert call[:2] == ("call raised", "ProducerStalled")
        orders.put(b"late")
        assert recv_queue(produced)[:2] == ("write raised", "ProducerStalled")
        producer.join(LONG)
        assert producer.exitcode == 0
        assert not index_records(cache_dir)
    finally:
        orders.put("end")
        producer.join(LONG)
        cache.stop()


def test_stall_timeout_is_checked_and_pickles(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="stall_timeout"):
        streamcache.StreamCache(cache_dir, stall_timeout=0)
    with pytest.raises(TypeError, match="stall_timeout"):
        streamcache.StreamCache(cache_dir, stall_timeout="1")  # type: ignore[arg-type]
    import pickle

    cache = streamcache.StreamCache(cache_dir, stall_timeout=2.5, cleanup_interval=0)
    try:
        assert pickle.loads(pickle.dumps(cache)).stall_timeout == 2.5
    finally:
        cache.stop()
