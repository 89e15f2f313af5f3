"""The WSGI test app (gunicorn, uWSGI): ``/blob/<key>`` through ``streamcache.wsgi.serve``.

The cache is made at import, as most apps do: under ``gunicorn --preload`` (and uWSGI
without ``--lazy-apps``) that happens in the master, before the workers fork.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import streamcache
from apps import blob
from streamcache.wsgi import serve

cache = streamcache.StreamCache(**blob.cache_options())


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/ping":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"pong"]
    req = blob.parse(path, environ.get("QUERY_STRING", ""))
    if req is None:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"not found"]
    return serve(cache, req.key, blob.creator(req), environ, start_response, resume=req.resume)
