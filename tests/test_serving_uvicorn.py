"""streamcache.asgi.serve behind a real uvicorn with 2 worker processes.

The checks of the gunicorn tests (serving_checks.py), plus: /ping answers within
100 ms while 16 clients stream.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import serving_checks as checks
from conftest import settle
from servers import Response, Server, app_env, get, together, uvicorn

LIVENESS = 1.0
WORKERS = 2
PING_BOUND = 0.1  # the bound for /ping under load


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("uvicorn")
    env = app_env(tmp / "cache", tmp / "events", STREAMCACHE_APP_LIVENESS=str(LIVENESS))
    srv = uvicorn(tmp, env, workers=WORKERS)
    try:
        yield srv
    finally:
        srv.stop()
    left = settle(tmp / "cache")
    assert not left, f"IPC objects leaked: {left}"


def report(server: Server, figures: dict[str, Any]) -> None:
    print(f"\n[{server.name}] {figures}")


def test_sixteen_clients_one_create(server: Server) -> None:
    report(server, checks.check_one_create(server, clients=16))


def test_two_of_eight_disconnect(server: Server) -> None:
    report(server, checks.check_disconnects(server, clients=8, leaving=2))


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "chunked"])
def test_killed_producer(server: Server, announce: bool) -> None:
    figures = checks.check_killed_producer(server, clients=8, liveness=LIVENESS, announce=announce)
    report(server, figures)


def test_range_while_written(server: Server) -> None:
    report(server, checks.check_range_in_flight(server))


def test_http10_gets_content_length(server: Server) -> None:
    report(server, checks.check_http10(server))


def test_ping_while_sixteen_stream(server: Server) -> None:
    """Every worker's loop stays free while 16 clients stream one entry being written:
    /ping (a new connection each time, landing on either worker) answers in time."""
    key = checks.new_key("ping")
    done = threading.Event()
    started = threading.Event()
    pings: list[Response] = []
    results: list[Response] = []

    def pinger() -> None:
        while not done.is_set():
            pings.append(get(server.port, "/ping", timeout=5))
            time.sleep(0.02)

    def client(i: int) -> Response:
        return get(
            server.port, checks.blob(key), timeout=checks.WAIT, on_body=lambda n: started.set()
        )

    ping_thread = threading.Thread(target=pinger)
    streams = threading.Thread(target=lambda: results.extend(together(16, client)))
    streams.start()
    try:
        assert started.wait(checks.WAIT), server.tail()
        ping_thread.start()
        streams.join(checks.WAIT + 5)
    finally:
        done.set()
        if ping_thread.ident is not None:
            ping_thread.join(10)
        streams.join(checks.WAIT + 5)
    assert all(p.status == 200 and p.complete for p in pings), [checks.describe(p) for p in pings]
    latencies = [p.t_end - p.t_sent for p in pings]
    for r in results:
        checks.assert_whole(server, r, key, checks.SIZE)
    assert len(latencies) >= 10, latencies
    lat = sorted(latencies)
    report(
        server,
        {
            "pings": len(lat),
            "ping_median_ms": checks.ms(statistics.median(lat)),
            "ping_max_ms": checks.ms(lat[-1]),
        },
    )
    assert lat[-1] <= PING_BOUND, f"/ping took {checks.ms(lat[-1])} ms under load"
