"""The ASGI test app (uvicorn): ``/blob/<key>`` through ``streamcache.asgi.serve``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import streamcache
from apps import blob
from streamcache.asgi import serve

cache = streamcache.StreamCache(**blob.cache_options())

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    req = blob.parse(scope["path"], scope.get("query_string", b"").decode("latin-1"))
    if req is None:
        status, body = (200, b"pong") if scope["path"] == "/ping" else (404, b"not found")
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await serve(cache, req.key, blob.creator(req), scope, receive, send)
