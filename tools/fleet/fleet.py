"""Run an example streamcache fleet on one machine: nginx in front of gunicorn hosts.

    python tools/fleet/fleet.py [--port 8080] [--hosts 2] [--dir /var/tmp/streamcache-fleet]

Each host is a gunicorn running ``tools/examples/gunicorn_app.py`` with a cache
directory of its own (as separate machines would have); nginx (``nginx.conf`` beside
this file) sends each request URI to one host by consistent hashing. Then try::

    curl -s localhost:8080/blob/a?size=100000000 | wc -c   # several at once: one create

Ctrl-C (or SIGTERM) stops everything. :func:`render` fills the template; the tests use it too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
TEMPLATE = HERE / "nginx.conf"


def render(prefix: Path, listen: str, upstreams: Sequence[str], template: Path = TEMPLATE) -> str:
    """nginx.conf for a fleet: ``prefix`` holds nginx's pid file, logs and temp dirs
    (created here); ``listen`` is nginx's address; ``upstreams`` the hosts' host:port."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / sub).mkdir(parents=True, exist_ok=True)
    servers = "\n".join(f"        server {u};" for u in upstreams)
    text = template.read_text()
    return (
        text.replace("@PREFIX@", str(prefix))
        .replace("@LISTEN@", listen)
        .replace("@UPSTREAMS@", servers)
    )


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def control_socket(host_dir: Path) -> list[str]:
    """Recent gunicorn opens a control socket, by default one path in $HOME for all
    instances: give each host its own."""
    from gunicorn.config import KNOWN_SETTINGS

    if any(s.name == "control_socket" for s in KNOWN_SETTINGS):
        return ["--control-socket", str(host_dir / "gunicorn.ctl")]
    return []


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1")
    ap.add_argument("--hosts", type=int, default=2, help="gunicorn hosts behind nginx")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/streamcache-fleet"))
    ap.add_argument("--workers", type=int, default=4, help="gunicorn workers per host")
    args = ap.parse_args(argv)
    nginx = nginx_binary()
    if nginx is None:
        ap.error("nginx is not installed (Debian: apt-get install nginx)")
    procs: list[subprocess.Popen[bytes]] = []
    upstreams = []
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT may come in ignored
        signal.signal(sig, _interrupt)
    try:
        for i in range(args.hosts):
            port = args.port + 1 + i
            host_dir = args.dir / f"host{i}"
            host_dir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, STREAMCACHE_DIR=str(host_dir / "cache"))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "--chdir", str(EXAMPLES),
                     "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers),
                     "--worker-class", "gthread", "--threads", "8",
                     *control_socket(host_dir), "gunicorn_app:app"],
                    env=env,
                )
            )  # fmt: skip
            upstreams.append(f"127.0.0.1:{port}")
        prefix = args.dir / "nginx"
        conf = prefix / "nginx.conf"
        prefix.mkdir(parents=True, exist_ok=True)
        conf.write_text(render(prefix, f"127.0.0.1:{args.port}", upstreams))
        procs.append(subprocess.Popen([nginx, "-p", str(prefix), "-e", "stderr", "-c", str(conf)]))
        print(f"fleet: http://127.0.0.1:{args.port}/blob/<key> -> {', '.join(upstreams)}")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    sys.exit(main())
