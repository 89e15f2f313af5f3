"""``streamcache.asgi``: the ASGI handler, :func:`serve` (the code is in
:mod:`streamcache.serving.asgi`)."""

from .serving.asgi import serve

__all__ = ["serve"]
