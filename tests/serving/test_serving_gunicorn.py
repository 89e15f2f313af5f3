"""streamcache.wsgi.serve behind a real gunicorn: sync workers, gthread, and --preload.

One server per worker model (module scope), on a free port, with its own cache dir;
each test uses keys of its own. The checks are in serving_checks.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
import serving_checks as checks
from servers import Server, gunicorn, serving

LIVENESS = 1.0

MODELS: dict[str, dict[str, Any]] = {
    "sync-4": {"workers": 4},
    "gthread-2x8": {"workers": 2, "worker_class": "gthread", "threads": 8},
    "sync-4-preload": {"workers": 4, "preload": True},
}


@pytest.fixture(scope="module", params=list(MODELS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"gunicorn-{request.param}")
    with serving(tmp, functools.partial(gunicorn, **MODELS[request.param]), LIVENESS) as srv:
        yield srv


def concurrency(server: Server) -> int:
    """Requests the server streams at once (a sync worker serves one at a time)."""
    return 8 if "gthread" in server.name else 4


def report(server: Server, figures: dict[str, Any]) -> None:
    print(f"\n[{server.name}] {figures}")


def test_sixteen_clients_one_create(server: Server) -> None:
    report(server, checks.check_one_create(server, clients=16))


def test_two_of_eight_disconnect(server: Server) -> None:
    report(
        server, checks.check_disconnects(server, clients=8, leaving=2, at_once=concurrency(server))
    )


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "chunked"])
def test_killed_producer(server: Server, announce: bool) -> None:
    figures = checks.check_killed_producer(
        server, clients=concurrency(server), liveness=LIVENESS, announce=announce
    )
    report(server, figures)


def test_range_while_written(server: Server) -> None:
    report(server, checks.check_range_in_flight(server))


def test_range_and_hit_on_finished_entry(server: Server) -> None:
    report(server, checks.check_range_finished(server))


def test_entry_kept_after_clients_read_its_announced_size(server: Server) -> None:
    """Clients stop at the Content-Length, maybe before the producer has published the
    entry: it is kept, and the next requests are hits."""
    report(server, checks.check_range_finished(server, announce=True))


def test_http10_gets_content_length(server: Server) -> None:
    report(server, checks.check_http10(server))
