"""The git hook behind git's smart HTTP server: ``git http-backend`` run as a CGI
program by a small threaded WSGI server on 127.0.0.1, which is how web servers
(nginx with fcgiwrap, Apache, lighttpd) serve git. Four concurrent clones over http
share one pack-objects run; every clone is complete, fsck clean, and has the same
pack."""

from __future__ import annotations

import os
import socketserver
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import test_git_fetches_share_pack_objects as shared
from cli_helpers import finish, readers_of_entries_in_flight, stats, wait_until
from test_git_fetches_share_pack_objects import (
    GIT,
    WAIT,
    Server,
    pack_digest,
)

HTTP_BACKEND = (
    os.path.join(
        subprocess.run([GIT, "--exec-path"], capture_output=True, text=True).stdout.strip(),
        "git-http-backend",
    )
    if GIT is not None
    else ""
)
pytestmark = pytest.mark.skipif(
    not os.access(HTTP_BACKEND, os.X_OK), reason="git http-backend is not installed"
)
origin = shared.origin  # the repository fixture (module-scoped) of those tests
CLIENTS = 4


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def http_backend_app(root: Path, env: dict[str, str]) -> Any:
    """A WSGI application that runs ``git http-backend`` for each request as a web
    server runs a CGI program: the request in the environment and on stdin, the
    response (CGI headers, then the body) read from its stdout."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi = {
            **env,
            "GIT_PROJECT_ROOT": str(root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": environ.get("PATH_INFO", ""),
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(length),
            "REMOTE_ADDR": environ.get("REMOTE_ADDR", "127.0.0.1"),
            "SERVER_PROTOCOL": environ.get("SERVER_PROTOCOL", "HTTP/1.0"),
        }
        # Git-Protocol (version=2) and Content-Encoding, as CGI passes headers.
        cgi.update({k: v for k, v in environ.items() if k.startswith("HTTP_")})
        done = subprocess.run(
            [HTTP_BACKEND], input=body, capture_output=True, env=cgi, timeout=WAIT
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = "200 OK"
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name, value.strip()))
        if done.returncode != 0 and not head:
            status, payload = "500 Internal Server Error", done.stderr
        headers.append(("Content-Length", str(len(payload))))
        start_response(status, headers)
        return [payload]

    return app


class HttpServer(Server):
    """The repository served over http by git http-backend."""

    def __init__(self, tmp: Path, repo: Path) -> None:
        super().__init__(tmp, repo)
        self.httpd = make_server(
            "127.0.0.1",
            0,
            http_backend_app(repo.parent, self.env),
            server_class=ThreadingWSGIServer,
            handler_class=QuietHandler,
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{self.repo.name}"

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(WAIT)


@pytest.fixture
def http_server(tmp_path: Path, origin: Path) -> Iterator[HttpServer]:
    s = HttpServer(tmp_path, origin)
    yield s
    s.close()


def test_concurrent_http_clones_share_one_pack_objects_run(
    http_server: HttpServer, tmp_path: Path
) -> None:
    server = http_server
    server.gated.touch()
    clients = [server.clone(tmp_path / f"clone{i}") for i in range(CLIENTS)]
    wait_until(lambda: server.runs() == 1, "pack-objects to start", timeout=WAIT)
    wait_until(
        lambda: readers_of_entries_in_flight(server.cache) == CLIENTS,
        f"{CLIENTS} clients to attach",
        WAIT,
    )
    server.gate.touch()
    results = finish(clients, WAIT)
    assert [rc for rc, _, _ in results] == [0] * CLIENTS, [err for _, _, err in results]
    assert server.runs() == 1
    for i in range(CLIENTS):
        server.check(tmp_path / f"clone{i}")
    assert len({pack_digest(tmp_path / f"clone{i}") for i in range(CLIENTS)}) == 1
    counts = stats(server.cache)["commands"]
    assert (counts["miss"], counts["hit"], counts["failed"]) == (1, CLIENTS - 1, 0)
