"""The example fleet of tools/fleet: nginx (``hash $request_uri consistent``,
``proxy_http_version 1.1``, ``proxy_buffering off``) in front of two gunicorn hosts,
each with a cache directory of its own, as two machines would have.

Concurrent clients over 8 keys: each key is produced exactly once across the fleet,
and its bytes reach the clients through nginx while it is being produced.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import serving_checks as checks
from apps.blob import MiB
from servers import (
    Response,
    Server,
    get,
    gunicorn,
    nginx,
    nginx_binary,
    read_events,
    serving,
    together,
)

HOSTS = 2
KEYS = 8
CLIENTS_PER_KEY = 4
SIZE = 16 * MiB
RATE = 16 * MiB  # one second per key: long enough to see bytes pass while produced
LIVENESS = 1.0

pytestmark = pytest.mark.skipif(
    nginx_binary() is None,
    reason="nginx is not installed (the CI script installs Debian's package; "
    "elsewhere: apt-get install nginx)",
)


@dataclass
class Fleet:
    nginx: Server
    hosts: list[Server]

    def creates(self, key: str) -> dict[int, int]:
        """Host index -> creates of ``key`` there."""
        out = {}
        for i, host in enumerate(self.hosts):
            n = sum(1 for e in read_events(host.events, key) if e.kind == "create")
            if n:
                out[i] = n
        return out

    def end_time(self, key: str) -> float:
        ends = [e.time for h in self.hosts for e in read_events(h.events, key) if e.kind == "end"]
        assert len(ends) == 1, ends
        return ends[0]

    def tails(self) -> str:
        return "\n".join(f"== {s.name}\n{s.tail(20)}" for s in [self.nginx, *self.hosts])


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    host = functools.partial(gunicorn, workers=2, worker_class="gthread", threads=8)
    with contextlib.ExitStack() as stack:
        hosts: list[Server] = []
        for i in range(HOSTS):
            tmp = tmp_path / f"host{i}"
            tmp.mkdir()
            hosts.append(stack.enter_context(serving(tmp, host, LIVENESS)))
        front = nginx(tmp_path, [s.port for s in hosts])
        stack.callback(front.stop)
        yield Fleet(front, hosts)


def test_each_key_produced_once_across_the_fleet(fleet: Fleet) -> None:
    keys = [checks.new_key(f"fleet{i}") for i in range(KEYS)]

    def client(i: int) -> Response:
        # Half the keys announce their size (Content-Length), half do not (chunked).
        path = checks.blob(keys[i % KEYS], SIZE, RATE, announce=i % 2 == 0)
        return get(fleet.nginx.port, path, timeout=checks.WAIT)

    t0 = time.time() - time.monotonic()  # monotonic -> wall clock
    rs = together(KEYS * CLIENTS_PER_KEY, client)
    for i, r in enumerate(rs):
        assert r.status == 200, f"{checks.describe(r)}\n{fleet.tails()}"
        assert r.complete and r.framing in ("length", "chunked"), checks.describe(r)
        assert r.sha256 == checks.expected_sha(keys[i % KEYS], SIZE), checks.describe(r)
        assert r.extra == 0, checks.describe(r)
    per_key = {key: fleet.creates(key) for key in keys}
    for key, where in per_key.items():
        assert sum(where.values()) == 1, f"{key} created {where} (host: creates)\n{fleet.tails()}"
    # Streamed through nginx while produced: each key's first client had bytes long
    # before its producer finished (the producer takes SIZE / RATE = 1 s).
    lead = []
    for k, key in enumerate(keys):
        first = min(t0 + r.t_first_byte for r in rs[k::KEYS])
        lead.append(fleet.end_time(key) - first)
    assert min(lead) > 0.25 * SIZE / RATE, f"first byte only {lead} s before the end"
    hosts = [next(iter(w)) for w in per_key.values()]
    print(
        f"\n[fleet] creates per key: {[sum(w.values()) for w in per_key.values()]}; "
        f"keys per host: {[hosts.count(h) for h in range(HOSTS)]}; first byte before the "
        f"producer's end: median {statistics.median(lead):.3f} s, min {min(lead):.3f} s"
    )


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "chunked"])
def test_killed_producer_behind_nginx(fleet: Fleet, announce: bool) -> None:
    """nginx passes a body cut short upstream on as one the client can tell is cut
    short (HTTP/1.1 to the upstream keeps the chunked framing), within liveness + 0.5 s
    of the producer's death."""
    key = checks.new_key("fleet-killed")
    path = checks.blob(key, SIZE, RATE / 4, announce=announce)  # 4 s: killed mid-way
    streaming = threading.Event()
    results: list[Response] = []

    def client(i: int) -> Response:
        return get(fleet.nginx.port, path, timeout=checks.WAIT, on_body=lambda n: streaming.set())

    runner = threading.Thread(target=lambda: results.extend(together(4, client)))
    runner.start()
    try:
        assert streaming.wait(checks.WAIT), fleet.tails()
        where = fleet.creates(key)
        assert len(where) == 1, where
        host = fleet.hosts[next(iter(where))]
        deadline = time.monotonic() + checks.WAIT
        while checks.produced(host, key) < 2 * MiB:
            assert time.monotonic() < deadline, fleet.tails()
            time.sleep(0.005)
        events = read_events(host.events, key)
        assert not [e for e in events if e.kind == "end"], "finished before the kill"
        t_kill = time.monotonic()
        dying = host.kill_worker(next(e.pid for e in events if e.kind == "create"))
    finally:
        runner.join(checks.WAIT + 5)
    assert len(results) == 4
    for r in results:
        assert r.status == 200 and not r.complete and r.length < SIZE, checks.describe(r)
    notice = sorted(r.t_end - t_kill for r in results)
    print(f"\n[fleet] killed producer (dead after {dying} s) noticed after {notice} s")
    assert notice[-1] - dying <= LIVENESS + checks.NOTICE_MARGIN, (notice, dying)
