"""Real HTTP servers for the serving tests, and a raw-socket HTTP client to drive them.

A server runs the apps of ``tests/serving/apps`` on 127.0.0.1. The test binds the listening
socket to port 0 itself and hands the descriptor to the server (gunicorn
``--bind fd://N``, uvicorn ``--fd N``, uWSGI finds an inherited socket by its address),
so no other test can take the port between choosing and binding it. Each server runs
in its own session: :meth:`Server.stop` sends SIGTERM to its pid, SIGKILL after a
bound, reaps it, and kills what is left of its process group by the group's id.
Its output goes to a log file that failures quote.

The client (:func:`get`) speaks HTTP/1.0 or 1.1 over a plain socket, decodes chunked
bodies, and tells a complete body from a truncated one: fewer bytes than
Content-Length, a chunked body without its terminator, or a body delimited by the
connection's close (never provably complete). It hashes bodies as they arrive.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from helpers import settle

import streamcache

HERE = Path(__file__).resolve().parent  # holds the apps package
BIN = Path(sys.executable).parent
FLEET = HERE.parents[1] / "tools" / "fleet" / "fleet.py"
START_TIMEOUT = 90.0  # a bound for a server that never starts; a busy machine needs time


def listener() -> socket.socket:
    """A listening TCP socket on a free port of 127.0.0.1, inheritable by a child."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def app_env(cache_dir: Path, events: Path, **extra: str) -> dict[str, str]:
    """The environment of a server running the test apps: this interpreter's streamcache
    (a checkout's code wins over an installed copy) and the apps package on the path."""
    root = str(Path(streamcache.__file__).resolve().parent.parent)
    path = [root, str(HERE)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        PYTHONUNBUFFERED="1",
        STREAMCACHE_APP_DIR=str(cache_dir),
        STREAMCACHE_APP_EVENTS=str(events),
        **extra,
    )
    return env


@dataclass
class Event:
    time: float
    kind: str
    pid: int
    key: str


def read_events(path: Path, key: str | None = None) -> list[Event]:
    """The apps' create/end lines (see apps/blob.py), of ``key`` if given."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        t, kind, pid, k = line.split(" ", 3)
        if key is None or k == key:
            events.append(Event(float(t), kind, int(pid), k))
    return events


@dataclass
class Server:
    """A server process started by :func:`start`; ``port`` is where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    events: Path  # the apps' events file (apps/blob.py)
    cache_dir: Path
    other_logs: Sequence[Path] = ()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        text = self.log_text()
        for path in self.other_logs:
            if path.exists():
                text += f"\n--- {path.name}\n" + path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def children(self) -> set[int]:
        """Pids of the processes in the server's process group, the server's own too."""
        pids = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getpgid(int(entry)) == self.proc.pid:
                        pids.add(int(entry))
                except ProcessLookupError:
                    pass
        return pids

    @functools.cached_property
    def _cache(self) -> streamcache.StreamCache:
        return streamcache.StreamCache(self.cache_dir, cleanup_interval=0)

    def peek(self, key: str) -> streamcache.EntryInfo | None:
        """The state of ``key``'s entry in the server's cache (never creates it)."""
        return self._cache.peek(key)

    def kill_worker(self, pid: int) -> float:
        """SIGKILL one of the server's processes (never anything outside its group);
        returns when it is dead (a zombie or gone), with the seconds that took: under a
        heavy load the kernel takes a while to end a process with many threads."""
        assert pid != self.proc.pid, "that is the server itself"
        assert os.getpgid(pid) == self.proc.pid, f"{pid} is not a process of {self.name}"
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while _running(pid):
            assert time.monotonic() - t0 < START_TIMEOUT, f"{pid} survived SIGKILL"
            time.sleep(0.0005)
        return time.monotonic() - t0

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        # Workers that outlive their master (it was killed) go with their group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _running(pid: int) -> bool:
    """``pid`` exists and is neither a zombie nor dead (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2] not in "ZXx"


def start(
    name: str,
    argv: Sequence[str],
    *,
    sock: socket.socket,
    env: dict[str, str],
    log: Path,
    ready: Callable[[str], bool] = lambda log: True,
    timeout: float = START_TIMEOUT,
    other_logs: Sequence[Path] = (),
) -> Server:
    """Run ``argv`` with ``sock`` inherited, and wait (at most ``timeout``) until it
    answers ``GET /ping`` and ``ready`` holds for its log (say, every worker booted).
    The caller's copy of ``sock`` is closed once the server has it."""
    port = sock.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
            start_new_session=True,
            cwd=log.parent,
        )
    sock.close()
    events = Path(env.get("STREAMCACHE_APP_EVENTS", os.devnull))
    cache_dir = Path(env.get("STREAMCACHE_APP_DIR", os.devnull))
    server = Server(name, proc, port, log, events, cache_dir, other_logs)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{server.tail()}")
            if ready(server.log_text()):
                try:
                    if get(port, "/ping", timeout=2.0).status == 200:
                        return server
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not answer in {timeout} s:\n{server.tail()}")
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise


@contextlib.contextmanager
def serving(
    tmp: Path, run: Callable[[Path, dict[str, str]], Server], liveness: float
) -> Iterator[Server]:
    """The test app served by ``run(tmp, env)``, its cache in ``tmp/cache`` with
    ``liveness``; stopped at the end, which must leave no IPC object behind."""
    env = app_env(tmp / "cache", tmp / "events", STREAMCACHE_APP_LIVENESS=str(liveness))
    srv = run(tmp, env)
    try:
        yield srv
    finally:
        srv.stop()
    left = settle(tmp / "cache")
    assert not left, f"IPC objects leaked: {left}"


@dataclass
class Response:
    """What :func:`get` saw. Times are ``time.monotonic()``; body bytes are decoded
    (chunked framing removed) and hashed as they arrive."""

    status: int = 0
    version: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    framing: str = ""  # "length", "chunked", "close" or "none" (HEAD, 304, ...)
    length: int = 0  # body bytes received
    complete: bool = False  # the framing says the body ended where it should
    error: str = ""  # how the connection ended early: "eof", "reset", "timeout", ...
    extra: int = 0  # bytes the server sent after the end of the body
    sha256: str = ""
    body: bytes = b""  # only with keep_body
    t_sent: float = 0.0
    t_head: float = 0.0
    t_first_byte: float = 0.0
    t_end: float = 0.0

    @property
    def content_length(self) -> int | None:
        v = self.headers.get("content-length")
        return None if v is None else int(v)


class _Abort(Exception):
    pass


def get(
    port: int,
    path: str,
    *,
    version: str = "1.1",
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 30.0,
    stop_after: int | None = None,
    on_body: Callable[[int], None] | None = None,
    keep_body: bool = False,
    hash_body: bool = True,
) -> Response:
    """One request on a new connection (``Connection: close``). ``stop_after``: close
    the connection once that many body bytes arrived. ``on_body(n)`` is called with the
    count of body bytes so far after each read. ``timeout`` bounds the whole exchange.
    ``hash_body`` False leaves ``sha256`` that of nothing, and the client quicker."""
    r = Response()
    h = hashlib.sha256()
    kept = bytearray()
    deadline = time.monotonic() + timeout
    conn = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers]
        r.t_sent = time.monotonic()
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        buf = bytearray()

        def more() -> bool:
            """Read into ``buf``; False at EOF."""
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn.settimeout(left)
            data = conn.recv(1 << 18)
            if not data:
                return False
            buf.extend(data)
            return True

        def take(data: bytes | bytearray) -> None:
            if not data:
                return
            if not r.length:
                r.t_first_byte = time.monotonic()
            r.length += len(data)
            if hash_body:
                h.update(data)
            if keep_body:
                kept.extend(data)
            if on_body is not None:
                on_body(r.length)
            if stop_after is not None and r.length >= stop_after:
                raise _Abort

        try:
            while b"\r\n\r\n" not in buf:
                if not more():
                    r.error = "eof before head"
                    return r
            end = buf.index(b"\r\n\r\n")
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            r.t_head = time.monotonic()
            proto, status = head[0].split(" ", 2)[:2]
            r.version, r.status = proto, int(status)
            for line in head[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                r.headers[k] = f"{r.headers[k]}, {v.strip()}" if k in r.headers else v.strip()
            te = r.headers.get("transfer-encoding", "").lower()
            if method == "HEAD" or r.status in (204, 304) or 100 <= r.status < 200:
                r.framing, r.complete = "none", True
            elif "chunked" in te:
                r.framing = "chunked"
                _read_chunked(buf, more, take, r)
            elif r.content_length is not None:
                r.framing = "length"
                want = r.content_length
                while True:
                    n = min(len(buf), want - r.length)
                    take(buf[:n])
                    del buf[:n]
                    if r.length == want:
                        r.complete = True
                        break
                    if not more():
                        r.error = "eof"
                        break
            else:
                r.framing = "close"
                while True:
                    take(buf)
                    buf.clear()
                    if not more():
                        break
            if r.complete:
                # Anything after the end of the body (Connection: close) is a bug.
                r.extra = len(buf)
                try:
                    while more():
                        r.extra = len(buf)
                except (OSError, TimeoutError):
                    pass
        except _Abort:
            r.error = "aborted by client"
        except TimeoutError:
            r.error = "timeout"
        except ConnectionResetError:
            r.error = "reset"
        except OSError as e:
            r.error = f"{type(e).__name__}: {e}"
        return r
    finally:
        r.t_end = time.monotonic()
        r.sha256 = h.hexdigest()
        r.body = bytes(kept)
        conn.close()


def _read_chunked(
    buf: bytearray, more: Callable[[], bool], take: Callable[[bytearray], None], r: Response
) -> None:
    while True:
        while b"\r\n" not in buf:
            if not more():
                r.error = "eof in chunk size"
                return
        end = buf.index(b"\r\n")
        size = int(bytes(buf[:end]).split(b";")[0], 16)
        del buf[: end + 2]
        if size == 0:
            # The last chunk; then trailer lines up to an empty line.
            while True:
                while b"\r\n" not in buf:
                    if not more():
                        r.error = "eof in trailer"
                        return
                end = buf.index(b"\r\n")
                del buf[: end + 2]
                if end == 0:
                    r.complete = True
                    return
        while size:
            if not buf and not more():
                r.error = "eof in chunk"
                return
            n = min(size, len(buf))
            take(buf[:n])
            del buf[:n]
            size -= n
        while len(buf) < 2:
            if not more():
                r.error = "eof after chunk"
                return
        if buf[:2] != b"\r\n":
            raise AssertionError("chunk not followed by CRLF")
        del buf[:2]


def together(n: int, fn: Callable[[int], Response]) -> list[Response]:
    """``fn(0) .. fn(n-1)`` in ``n`` threads released at once; their responses in order."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Response:
        barrier.wait(timeout=10)
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _count(text: str, needle: str) -> int:
    return text.count(needle)


def _gunicorn_has(setting: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == setting for s in KNOWN_SETTINGS)


def gunicorn(
    tmp: Path,
    env: dict[str, str],
    *,
    workers: int,
    worker_class: str = "sync",
    threads: int = 1,
    preload: bool = False,
    app: str = "apps.wsgi_app:app",
) -> Server:
    """gunicorn with ``workers`` x ``threads`` on the test app; returns once every worker
    has booted and /ping answers."""
    sock = listener()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{sock.fileno()}"]
    argv += ["--workers", str(workers), "--worker-class", worker_class, "--threads", str(threads)]
    argv += ["--graceful-timeout", "5", "--log-level", "info"]
    if _gunicorn_has("control_socket_disable"):
        argv += ["--no-control-socket"]  # else every instance shares one in $HOME
    argv += ["--preload"] if preload else []
    argv += [app]
    return start(
        f"gunicorn {worker_class} {workers}x{threads}{' --preload' if preload else ''}",
        argv,
        sock=sock,
        env=env,
        log=tmp / "gunicorn.log",
        ready=lambda log: _count(log, "Booting worker with pid") >= workers,
    )


def uvicorn(
    tmp: Path, env: dict[str, str], *, workers: int, app: str = "apps.asgi_app:app"
) -> Server:
    """uvicorn with ``workers`` processes on the test app."""
    sock = listener()
    argv = [sys.executable, "-m", "uvicorn", "--fd", str(sock.fileno())]
    argv += ["--workers", str(workers), "--timeout-graceful-shutdown", "5", app]
    return start(
        f"uvicorn {workers} workers",
        argv,
        sock=sock,
        env=env,
        log=tmp / "uvicorn.log",
        ready=lambda log: _count(log, "Application startup complete") >= workers,
    )


def uwsgi_binary() -> Path | None:
    exe = BIN / "uwsgi"
    return exe if exe.exists() else None


def uwsgi(
    tmp: Path,
    env: dict[str, str],
    *,
    processes: int,
    threads: int = 1,
    lazy_apps: bool = False,
    app: str = "apps.wsgi_app:app",
) -> Server:
    """uWSGI speaking HTTP itself (``--http-socket``) with ``processes`` x ``threads``."""
    exe = uwsgi_binary()
    assert exe is not None, "uwsgi is not installed"
    sock = listener()
    argv = [str(exe), "--http-socket", f"fd://{sock.fileno()}", "--master", "--die-on-term"]
    argv += ["--processes", str(processes), "--threads", str(threads), "--enable-threads"]
    # A client that hangs up is no error worth a traceback per request.
    argv += ["--ignore-sigpipe", "--ignore-write-errors", "--disable-write-exception"]
    argv += ["--need-app", "--module", app]
    if sys.prefix != sys.base_prefix:
        argv += ["--virtualenv", sys.prefix]
    argv += ["--lazy-apps"] if lazy_apps else []
    return start(
        f"uwsgi {processes}x{threads}{' --lazy-apps' if lazy_apps else ''}",
        argv,
        sock=sock,
        env=env,
        log=tmp / "uwsgi.log",
        ready=lambda log: _count(log, "spawned uWSGI worker") >= processes,
    )


def _fleet_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet", FLEET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nginx_binary() -> str | None:
    found: str | None = _fleet_module().nginx_binary()
    return found


def nginx(tmp: Path, upstreams: Sequence[int]) -> Server:
    """nginx with ``tools/fleet/nginx.conf`` in front of the servers on ``upstreams``,
    in the foreground with a private prefix in ``tmp``. It inherits its listening
    socket the way nginx's binary upgrade hands it over (``NGINX="fd;"``)."""
    exe = nginx_binary()
    assert exe is not None, "nginx is not installed"
    prefix = tmp / "nginx"
    prefix.mkdir()
    sock = listener()
    # nginx takes an inherited listening socket as it is: with a blocking one, a worker
    # that loses the race for a connection (both workers are woken) sleeps in accept()
    # while its other connections wait, and their clients hang.
    sock.setblocking(False)
    conf = prefix / "nginx.conf"
    listen = f"127.0.0.1:{sock.getsockname()[1]}"
    conf.write_text(_fleet_module().render(prefix, listen, [f"127.0.0.1:{p}" for p in upstreams]))
    env = dict(os.environ, NGINX=f"{sock.fileno()};")
    argv = [exe, "-p", str(prefix), "-e", "stderr", "-c", str(conf)]
    return start(
        "nginx", argv, sock=sock, env=env, log=prefix / "stderr.log",
        other_logs=[prefix / "error.log"],
    )  # fmt: skip
