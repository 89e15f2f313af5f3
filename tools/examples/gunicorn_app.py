"""streamcache behind gunicorn (any WSGI server): ``/blob/<key>`` through the WSGI helper.

    gunicorn --chdir tools/examples -w 4 --worker-class gthread --threads 8 gunicorn_app:app
    curl -s localhost:8000/blob/a | wc -c          # run several at once: one producer

Sync workers serve one request at a time each: a slow download holds its worker, so
prefer gthread (or more workers) for big blobs. ``--preload`` works too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from blobs import blob_request, open_cache

from streamcache.wsgi import serve

cache = open_cache()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    req = blob_request(environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
    if req is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"try /blob/<key>?size=<bytes>\n"]
    key, make = req
    return serve(cache, key, make, environ, start_response)
