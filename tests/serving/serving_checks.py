"""The checks of issue 9 run against every real server (gunicorn, uvicorn, uWSGI).

Each check takes a running :class:`servers.Server` and a key no other test uses, asserts
what a client must see, and returns the figures it measured (printed by the tests, for
the record). Bodies are the seeded pattern of ``apps/blob.py``, so every byte is checked.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import multiprocessing
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from apps.blob import MiB, pattern
from helpers import NOTICE_MARGIN
from servers import Response, Server, get, read_events, together

SIZE = 64 * MiB
RATE = 50 * MiB
KILL_RATE = 4 * MiB  # check_killed_producer's: it kills at 8 MiB, long before the end
WAIT = 30.0  # bound for every wait on a server


@functools.lru_cache(maxsize=16)
def expected_sha(key: str, size: int) -> str:
    h = hashlib.sha256()
    for pos in range(0, size, 4 * MiB):
        h.update(pattern(key, pos, min(4 * MiB, size - pos)))
    return h.hexdigest()


def new_key(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:12]}"


def blob(key: str, size: int = SIZE, rate: float = RATE, announce: bool = True) -> str:
    return f"/blob/{key}?size={size}&rate={rate:.0f}&announce={int(announce)}"


def creates(server: Server, key: str) -> list[int]:
    """Pids of the processes that ran create for ``key``, in order."""
    return [e.pid for e in read_events(server.events, key) if e.kind == "create"]


def producer_time(server: Server, key: str) -> float:
    """Seconds from the (only) create's start to its end."""
    ev = {e.kind: e.time for e in read_events(server.events, key)}
    return ev["end"] - ev["create"]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def describe(r: Response) -> str:
    return (
        f"status={r.status} framing={r.framing} length={r.length} complete={r.complete} "
        f"error={r.error!r} extra={r.extra} headers={r.headers}"
    )


def assert_whole(server: Server, r: Response, key: str, size: int) -> None:
    """``r`` is the whole, correct, properly framed body of ``key``."""
    assert r.status == 200, f"{describe(r)}\n{server.tail()}"
    assert r.complete and r.length == size, f"{describe(r)}\n{server.tail()}"
    assert r.framing in ("length", "chunked"), f"undetectable truncation: {describe(r)}"
    assert r.sha256 == expected_sha(key, size), f"wrong bytes: {describe(r)}"
    assert r.extra == 0, f"bytes past the end of the body: {describe(r)}"


def check_one_create(server: Server, clients: int = 16) -> dict[str, Any]:
    """``clients`` concurrent GETs of one 64 MiB key of unknown size produced at about
    50 MiB/s: one create, identical whole bodies; then hits carry Content-Length."""
    key = new_key("fanout")
    rs = together(clients, lambda i: get(server.port, blob(key, announce=False), timeout=WAIT))
    for r in rs:
        assert_whole(server, r, key, SIZE)
    assert len(creates(server, key)) == 1, creates(server, key)
    hits = together(2, lambda i: get(server.port, blob(key, announce=False), timeout=WAIT))
    for r in hits:
        assert_whole(server, r, key, SIZE)
        assert r.framing == "length" and r.content_length == SIZE, describe(r)
    assert len(creates(server, key)) == 1, creates(server, key)
    ttfb = sorted(r.t_first_byte - r.t_sent for r in rs)
    return {
        "creates": 1,
        "producer_s": round(producer_time(server, key), 3),
        "ttfb_median_ms": ms(statistics.median(ttfb)),
        "ttfb_max_ms": ms(ttfb[-1]),
        "in_flight_framing": sorted({r.framing for r in rs}),
    }


@dataclass
class Ping:
    ok: bool
    seconds: float
    detail: str


def _pinger(port: int, every: float, stop: Any, out: Connection) -> None:
    pings = []
    while not stop.wait(every):
        r = get(port, "/ping", timeout=5)
        pings.append(Ping(r.status == 200 and r.complete, r.t_end - r.t_sent, describe(r)))
    out.send(pings)


@contextlib.contextmanager
def pinging(server: Server, every: float = 0.02) -> Iterator[list[Ping]]:
    """GET /ping on a new connection every ``every`` s while the block runs, from a
    process of its own (the test's client threads would delay a thread of this one);
    the list it yields gets the pings when the block ends."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    theirs, ours = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_pinger, args=(server.port, every, stop, ours))
    proc.start()
    pings: list[Ping] = []
    try:
        yield pings
    finally:
        stop.set()
        if theirs.poll(WAIT):
            pings.extend(theirs.recv())
        proc.join(WAIT)
        if proc.is_alive():
            proc.kill()
            proc.join()


def check_disconnects(
    server: Server, clients: int = 8, leaving: int = 2, at_once: int = 8
) -> dict[str, Any]:
    """Of ``clients`` streaming clients, ``leaving`` hang up at 4 MiB; the others get the
    whole body from the one create. A leaving client hangs up only once as many of the
    others stream as the server serves at once (``at_once`` requests): were it the
    entry's only reader, its leaving would rightly abandon the entry."""
    key = new_key("disconnect")
    staying = min(clients - leaving, at_once - leaving)
    lock = threading.Condition()
    streaming: set[int] = set()

    def client(i: int) -> Response:
        def on_body(n: int) -> None:
            if i >= leaving:
                with lock:
                    streaming.add(i)
                    lock.notify_all()
            elif n >= 4 * MiB:
                with lock:
                    lock.wait_for(lambda: len(streaming) >= staying, WAIT)

        stop = 4 * MiB if i < leaving else None
        path = blob(key, announce=False)
        return get(server.port, path, timeout=WAIT, stop_after=stop, on_body=on_body)

    rs = together(clients, client)
    for r in rs[:leaving]:
        assert r.error == "aborted by client" and r.length >= 4 * MiB, describe(r)
    for r in rs[leaving:]:
        assert_whole(server, r, key, SIZE)
    assert len(creates(server, key)) == 1, creates(server, key)
    return {"creates": 1, "unharmed": clients - leaving}


def wait_finished(server: Server, key: str, timeout: float = 10.0) -> None:
    """Until the entry of ``key``, whose every byte a client has read, is published as
    finished (bounded: that takes milliseconds)."""
    deadline = time.monotonic() + timeout
    while not ((info := server.peek(key)) and info.finished):
        assert info is not None, f"{key}: the entry was dropped after it was read whole"
        assert time.monotonic() < deadline, f"{key} not finished: {info}"
        time.sleep(0.005)


def produced(server: Server, key: str) -> int:
    """Bytes of ``key``'s entry written so far (0 when there is none)."""
    info = server.peek(key)
    return 0 if info is None else info.produced


def check_killed_producer(
    server: Server, clients: int, liveness: float, announce: bool, streams_unknown: bool = True
) -> dict[str, Any]:
    """SIGKILL the worker running create while ``clients`` stream the entry: each client
    sees a body it can tell is incomplete (short of Content-Length, or no chunked
    terminator) within ``liveness`` + NOTICE_MARGIN of its death; the next request creates afresh.

    ``streams_unknown`` False: the server cannot frame a body of unknown size (uWSGI's
    http-socket never chunks), so such clients wait for the end; killed before it,
    they get 502 (or a whole body, when the helper made the entry afresh), or a
    connection closed before any response for a client of the killed worker itself."""
    key = new_key("killed")
    streams = announce or streams_unknown
    streaming = [threading.Event() for _ in range(clients)]

    def client(i: int) -> Response:
        def on_body(n: int) -> None:
            streaming[i].set()

        # Not hashed: a client that keeps up keeps its reader waiting on the producer.
        # Paced to 16 s: at RATE the producer finished before the kill at load 20-30.
        path = blob(key, rate=KILL_RATE, announce=announce)
        return get(server.port, path, timeout=WAIT, on_body=on_body, hash_body=False)

    results: list[Response] = []
    runner = threading.Thread(target=lambda: results.extend(together(clients, client)))
    runner.start()
    try:
        if streams:
            for ev in streaming:
                assert ev.wait(WAIT), f"a client got no byte:\n{server.tail()}"
        deadline = time.monotonic() + WAIT
        while produced(server, key) < 8 * MiB:
            assert time.monotonic() < deadline, f"nothing produced:\n{server.tail()}"
            time.sleep(0.005)
        pids = creates(server, key)
        assert len(pids) == 1, pids
        assert not [e for e in read_events(server.events, key) if e.kind == "end"], "too late"
        log_before = len(server.log_text())
        t_kill = time.monotonic()
        dying = server.kill_worker(pids[0])
    finally:
        runner.join(WAIT + 5)
    assert len(results) == clients
    # Clients that got a whole body (made afresh) had nothing to notice.
    whole = [r for r in results if r.status == 200 and r.complete]
    notice = sorted(r.t_end - t_kill for r in results if r not in whole)
    assert notice, "no client saw the producer die"
    for r in results:
        if streams:
            assert r.status == 200, describe(r)
            assert r.framing == ("length" if announce else "chunked"), describe(r)
            assert not r.complete and r.length < SIZE, f"truncation not detectable: {describe(r)}"
        elif r.status == 200:  # the helper made the entry afresh before its first byte
            assert r.complete and r.length == SIZE and r.framing == "length", describe(r)
        else:
            assert r.status == 502 or (r.status == 0 and r.error), describe(r)
    # The bound runs from the producer's death: SIGKILL takes the kernel a while to
    # carry out on a loaded machine (it is reported, as dying_ms).
    late = notice[-1] - dying
    assert late <= liveness + NOTICE_MARGIN, f"noticed after {notice} s, dead after {dying} s"
    # No traceback per reader in the server's log.
    log = server.log_text()[log_before:]
    assert log.count("Traceback") == 0, log[-4000:]
    # A fresh create (8 MiB); or the whole entry a client's helper made afresh.
    size = SIZE if whole else 8 * MiB
    again = get(server.port, blob(key, 8 * MiB, announce=announce), timeout=WAIT)
    assert_whole(server, again, key, size)
    assert len(creates(server, key)) >= 2, creates(server, key)
    return {
        "notice_ms": [ms(t) for t in notice],
        "dying_ms": ms(dying),
        "statuses": sorted({r.status for r in results}),
        "liveness_s": liveness,
    }


def check_range_in_flight(server: Server) -> dict[str, Any]:
    """Range for the last 1 MiB of an entry still being written (size announced): 206 and
    the right bytes."""
    key = new_key("range")
    path = blob(key, rate=RATE / 2)  # 2.6 s: time enough for the 206 to start mid-write
    head = threading.Event()
    results: list[Response] = []

    def full() -> None:
        results.append(get(server.port, path, timeout=WAIT, on_body=lambda n: head.set()))

    runner = threading.Thread(target=full)
    runner.start()
    try:
        assert head.wait(WAIT), f"no byte of the entry:\n{server.tail()}"
        info = server.peek(key)
        assert info is not None and not info.finished, info
        r = get(server.port, path, headers=[("Range", "bytes=-1048576")], timeout=WAIT)
    finally:
        runner.join(WAIT + 5)
    assert r.status == 206, f"{describe(r)}\n{server.tail()}"
    assert r.headers.get("content-range") == f"bytes {SIZE - MiB}-{SIZE - 1}/{SIZE}", describe(r)
    assert r.complete and r.length == MiB and r.extra == 0, describe(r)
    assert r.sha256 == hashlib.sha256(pattern(key, SIZE - MiB, MiB)).hexdigest(), "wrong bytes"
    assert_whole(server, results[0], key, SIZE)
    assert len(creates(server, key)) == 1
    # Its first byte can only go out once the producer got there: at the end.
    return {"range_ttfb_ms": ms(r.t_first_byte - r.t_sent)}


def check_range_finished(server: Server, announce: bool = False) -> dict[str, Any]:
    """A finished entry (served from its file, zero copy where the server offers it):
    a Range in the middle gets exactly its bytes, a whole hit exactly the body, nothing
    past either end, and no second create."""
    key = new_key("finished")
    size = 16 * MiB
    assert_whole(server, get(server.port, blob(key, size, announce=announce)), key, size)
    wait_finished(server, key)
    a, b = 1_000_001, 10 * MiB + 7
    r = get(server.port, blob(key, size), headers=[("Range", f"bytes={a}-{b}")], timeout=WAIT)
    assert r.status == 206 and r.complete and r.extra == 0, describe(r)
    assert r.headers.get("content-range") == f"bytes {a}-{b}/{size}", describe(r)
    assert r.sha256 == hashlib.sha256(pattern(key, a, b - a + 1)).hexdigest(), "wrong bytes"
    hit = get(server.port, blob(key, size), timeout=WAIT)
    assert_whole(server, hit, key, size)
    assert hit.content_length == size, describe(hit)
    assert len(creates(server, key)) == 1, creates(server, key)
    return {"creates": 1}


def check_http10(server: Server) -> dict[str, Any]:
    """HTTP/1.0 clients get a Content-Length: at once when create announced the size,
    after the entry finished when it did not."""
    size = 8 * MiB
    out: dict[str, Any] = {}
    for announce in (True, False):
        key = new_key(f"http10-{int(announce)}")
        r = get(server.port, blob(key, size, announce=announce), version="1.0", timeout=WAIT)
        assert r.content_length == size, describe(r)
        assert_whole(server, r, key, size)
        assert len(creates(server, key)) == 1
        out[f"ttfb_ms_announce_{int(announce)}"] = ms(r.t_first_byte - r.t_sent)
    return out
