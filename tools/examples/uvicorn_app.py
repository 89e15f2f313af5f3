"""streamcache behind uvicorn (any ASGI server): ``/blob/<key>`` through the ASGI helper.

    uvicorn --app-dir tools/examples --workers 2 uvicorn_app:app
    curl -s localhost:8000/blob/a | wc -c          # run several at once: one producer

Waits for the producer never block the event loop nor fill its default executor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from blobs import blob_request, open_cache

from streamcache.asgi import serve

cache = open_cache()


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    req = blob_request(scope["path"], scope.get("query_string", b"").decode("latin-1"))
    if req is None:
        body = b"try /blob/<key>?size=<bytes>\n"
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
        return
    key, make = req
    await serve(cache, key, make, scope, receive, send)
