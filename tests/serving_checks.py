"""The checks of issue 9 run against every real server (gunicorn, uvicorn, uWSGI).

Each check takes a running :class:`servers.Server` and a key no other test uses, asserts
what a client must see, and returns the figures it measured (printed by the tests, for
the record). Bodies are the seeded pattern of ``apps/blob.py``, so every byte is checked.
"""

from __future__ import annotations

import functools
import hashlib
import statistics
import threading
import time
import uuid
from typing import Any

from apps.blob import MiB, pattern
from servers import Response, Server, get, read_events, together

import streamcache

SIZE = 64 * MiB
RATE = 50 * MiB
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
    hits = together(4, lambda i: get(server.port, blob(key, announce=False), timeout=WAIT))
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


def wait_finished(server: Server, key: str) -> None:
    """Until the entry of ``key`` is published as finished (bounded)."""
    cache = streamcache.StreamCache(server.cache_dir, cleanup_interval=0)
    deadline = time.monotonic() + WAIT
    while not ((info := cache.peek(key)) and info.finished):
        assert time.monotonic() < deadline, f"{key} not finished: {info}"
        time.sleep(0.005)


def check_killed_producer(
    server: Server, clients: int, liveness: float, announce: bool
) -> dict[str, Any]:
    """SIGKILL the worker running create while ``clients`` stream the entry: each client
    sees a body it can tell is incomplete (short of Content-Length, or no chunked
    terminator) within ``liveness`` + 0.5 s; the next request creates afresh."""
    key = new_key("killed")
    streaming = [threading.Event() for _ in range(clients)]
    produced_enough = threading.Event()

    def client(i: int) -> Response:
        def on_body(n: int) -> None:
            streaming[i].set()
            if n >= 8 * MiB:
                produced_enough.set()

        return get(server.port, blob(key, announce=announce), timeout=WAIT, on_body=on_body)

    results: list[Response] = []
    runner = threading.Thread(target=lambda: results.extend(together(clients, client)))
    runner.start()
    try:
        for ev in streaming:
            assert ev.wait(WAIT), f"a client got no byte:\n{server.tail()}"
        assert produced_enough.wait(WAIT)
        pids = creates(server, key)
        assert len(pids) == 1, pids
        assert not [e for e in read_events(server.events, key) if e.kind == "end"], "too late"
        log_before = len(server.log_text())
        t_kill = time.monotonic()
        server.kill_worker(pids[0])
    finally:
        runner.join(WAIT + 5)
    assert len(results) == clients
    notice = sorted(r.t_end - t_kill for r in results)
    for r in results:
        assert r.status == 200, describe(r)
        assert not r.complete and r.length < SIZE, f"truncation not detectable: {describe(r)}"
        assert r.framing == ("length" if announce else "chunked"), describe(r)
    assert notice[-1] <= liveness + 0.5, f"noticed after {notice} s (liveness {liveness} s)"
    # No traceback per reader in the server's log.
    log = server.log_text()[log_before:]
    assert log.count("Traceback") == 0, log[-4000:]
    again = get(server.port, blob(key, announce=announce), timeout=WAIT)
    assert_whole(server, again, key, SIZE)
    assert len(creates(server, key)) == 2, creates(server, key)
    return {"notice_ms": [ms(t) for t in notice], "liveness_s": liveness}


def check_range_in_flight(server: Server) -> dict[str, Any]:
    """Range for the last 1 MiB of an entry still being written (size announced): 206 and
    the right bytes; once finished, a Range in the middle and a whole hit are exact."""
    key = new_key("range")
    head = threading.Event()
    results: list[Response] = []

    def full() -> None:
        results.append(get(server.port, blob(key), timeout=WAIT, on_body=lambda n: head.set()))

    runner = threading.Thread(target=full)
    runner.start()
    try:
        assert head.wait(WAIT), f"no byte of the entry:\n{server.tail()}"
        r = get(server.port, blob(key), headers=[("Range", "bytes=-1048576")], timeout=WAIT)
        head_wall = time.time() - (time.monotonic() - r.t_head)
    finally:
        runner.join(WAIT + 5)
    assert r.status == 206, f"{describe(r)}\n{server.tail()}"
    assert r.headers.get("content-range") == f"bytes {SIZE - MiB}-{SIZE - 1}/{SIZE}", describe(r)
    assert r.complete and r.length == MiB and r.extra == 0, describe(r)
    assert r.sha256 == hashlib.sha256(pattern(key, SIZE - MiB, MiB)).hexdigest(), "wrong bytes"
    end = [e.time for e in read_events(server.events, key) if e.kind == "end"]
    assert end and head_wall < end[0], "the entry was finished before the 206 started"
    assert_whole(server, results[0], key, SIZE)
    # Finished: served from the file (zero copy where the server offers it).
    wait_finished(server, key)
    a, b = 1_000_001, 40 * MiB + 7
    r = get(server.port, blob(key), headers=[("Range", f"bytes={a}-{b}")], timeout=WAIT)
    assert r.status == 206 and r.complete and r.extra == 0, describe(r)
    assert r.headers.get("content-range") == f"bytes {a}-{b}/{SIZE}", describe(r)
    assert r.sha256 == hashlib.sha256(pattern(key, a, b - a + 1)).hexdigest(), "wrong bytes"
    assert_whole(server, get(server.port, blob(key), timeout=WAIT), key, SIZE)
    assert len(creates(server, key)) == 1
    return {"range_head_before_end_ms": ms(end[0] - head_wall)}


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
