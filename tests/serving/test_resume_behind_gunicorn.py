"""``wsgi.serve(..., resume=True)`` behind real gunicorn sync workers: the worker running
create is SIGKILLed mid-entry while HTTP clients stream it; a reader in another worker
carries the entry on, so every client of the other workers gets the whole body, the
same bytes as an unkilled run. The killed worker's own client loses its connection
(nothing can save that one), gunicorn starts a new worker, and the entry is published
whole: the next request is a hit.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps.blob import MiB
from servers import Response, Server, get, gunicorn, read_events, serving, together
from serving_checks import assert_whole, blob, creates, describe, new_key, produced

LIVENESS = 0.5
WORKERS = 4
SIZE = 16 * MiB
RATE = 8 * MiB
KILL_AT = 4 * MiB  # create holds there until the test lets it go (blob.py's hold=)
WAIT = 120.0  # a bound for every wait on the server (a busy machine needs time)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path, functools.partial(gunicorn, workers=WORKERS), LIVENESS) as srv:
        yield srv


def _workers(server: Server) -> set[int]:
    return server.children() - {server.proc.pid}


def test_clients_of_other_workers_get_every_byte_after_the_producer_is_killed(
    server: Server,
) -> None:
    key = new_key("resume")
    path = blob(key, SIZE, RATE) + f"&resume=1&hold={KILL_AT}"
    streaming = [threading.Event() for _ in range(WORKERS)]

    def client(i: int) -> Response:
        return get(server.port, path, timeout=WAIT, on_body=lambda n: streaming[i].set())

    results: list[Response] = []
    runner = threading.Thread(target=lambda: results.extend(together(WORKERS, client)))
    runner.start()
    try:
        # Every client streams (so a reader of every other worker waits on the entry),
        # and the producer has published the bytes up to where it holds.
        for ev in streaming:
            assert ev.wait(WAIT), f"a client got no byte:\n{server.tail()}"
        deadline = time.monotonic() + WAIT
        while produced(server, key) < KILL_AT:
            assert time.monotonic() < deadline, f"nothing produced:\n{server.tail()}"
            time.sleep(0.005)
        (producer,) = creates(server, key)
        assert not [e for e in read_events(server.events, key) if e.kind == "end"]
        before = _workers(server)
        assert producer in before
        t_kill = time.monotonic()
        server.kill_worker(producer)
        Path(f"{server.events}.{key}.go").touch()  # the successor's create goes on
    finally:
        runner.join(WAIT + 10)
    assert len(results) == WORKERS
    # The killed worker served one client (a sync worker serves one request at a time):
    # its connection ends early. Every other client gets the whole body.
    cut = [r for r in results if not r.complete]
    assert len(cut) == 1, [describe(r) for r in results]
    assert cut[0].status == 200 and cut[0].length < SIZE, describe(cut[0])
    for r in results:
        if r is not cut[0]:
            assert_whole(server, r, key, SIZE)
    # One reader, in another worker, carried the entry on by running create again.
    successors = creates(server, key)[1:]
    assert len(successors) == 1 and successors[0] in before - {producer}, successors
    print(f"\nlast body ended {max(r.t_end for r in results) - t_kill:.2f} s after the kill")
    # gunicorn replaced the worker; the resumed entry was published whole: a hit.
    deadline = time.monotonic() + WAIT
    while len(_workers(server) - before) < 1 or len(_workers(server)) < WORKERS:
        assert time.monotonic() < deadline, f"no new worker: {_workers(server)}"
        time.sleep(0.05)
    again = get(server.port, path, timeout=WAIT)
    assert_whole(server, again, key, SIZE)
    assert len(creates(server, key)) == 2, creates(server, key)
