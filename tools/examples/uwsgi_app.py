"""streamcache behind uWSGI: the WSGI helper, as in gunicorn_app.py.

    uwsgi --http-socket 127.0.0.1:8000 --master --processes 4 --threads 8 \\
          --enable-threads --die-on-term --chdir tools/examples --module uwsgi_app:app

``--enable-threads`` is required: streamcache runs each producer in a thread of the
worker. ``--die-on-term`` makes SIGTERM stop uWSGI (without it SIGTERM reloads).
"""

from __future__ import annotations

from gunicorn_app import app

__all__ = ["app"]
