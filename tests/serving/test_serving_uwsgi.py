"""streamcache.wsgi.serve behind a real uWSGI speaking HTTP itself (``--http-socket``).

Worker models: 4 processes with the app loaded in the master before the fork
(uWSGI's default), 4 processes with ``--lazy-apps``, and 2 processes x 8 threads.
The checks are those of the gunicorn tests (serving_checks.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
import serving_checks as checks
from servers import Server, serving, uwsgi, uwsgi_binary

LIVENESS = 1.0

MODELS: dict[str, dict[str, Any]] = {
    "processes-4": {"processes": 4},
    "processes-4-lazy-apps": {"processes": 4, "lazy_apps": True},
    "threads-2x8": {"processes": 2, "threads": 8},
}

pytestmark = pytest.mark.skipif(
    uwsgi_binary() is None,
    reason="uwsgi is not installed in this environment (pip install uwsgi: it builds from source)",
)


@pytest.fixture(scope="module", params=list(MODELS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"uwsgi-{request.param}")
    with serving(tmp, functools.partial(uwsgi, **MODELS[request.param]), LIVENESS) as srv:
        yield srv


def concurrency(server: Server) -> int:
    return 8 if "x8" in server.name else 4


def report(server: Server, figures: dict[str, Any]) -> None:
    print(f"\n[{server.name}] {figures}")


def test_sixteen_clients_one_create(server: Server) -> None:
    report(server, checks.check_one_create(server, clients=16))


def test_two_of_eight_disconnect(server: Server) -> None:
    report(
        server, checks.check_disconnects(server, clients=8, leaving=2, at_once=concurrency(server))
    )


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "unknown-size"])
def test_killed_producer(server: Server, announce: bool) -> None:
    # uWSGI's http-socket never chunks: a body of unknown size waits for the end.
    figures = checks.check_killed_producer(
        server,
        clients=concurrency(server),
        liveness=LIVENESS,
        announce=announce,
        streams_unknown=False,
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
