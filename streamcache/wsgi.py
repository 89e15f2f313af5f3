"""``streamcache.wsgi``: the WSGI handler, :func:`serve` (the code is in
:mod:`streamcache.serving.wsgi`)."""

from .serving.wsgi import ResponseAborted, serve

__all__ = ["ResponseAborted", "serve"]
