"""HTTP serving of a cache: the I/O-free HTTP rules (http) and the WSGI and ASGI
handlers (wsgi, asgi; importable as streamcache.wsgi and streamcache.asgi). Above
the cache: the core never imports it."""
