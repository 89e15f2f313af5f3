"""The headline job side by side with what users would pick instead (``bench.py --peers``).

P processes (16), released together by a barrier, all need one blob (1 GiB) that a
generator emits in 1 MiB chunks at a fixed rate (200 MiB/s; then unlimited). Contenders:

    fetch      streamcache: every process fetch(key, sink, create)
    stream     streamcache: every process ``with cache.stream(key, create) as s: for c in s``
    nocache    every process runs the generator itself
    filelock   huggingface_hub's pattern: FileLock; if the file is missing, generate into a
               temp file and rename it; unlock; read the file
    diskcache  diskcache 5.6.3: its Lock recipe; if the key is missing, Cache.set(key, file,
               read=True) (a file-backed value); unlock; Cache.get(key, read=True)
    nginx      nginx proxy_cache with proxy_cache_lock in front of an HTTP origin (a Python
               process running the generator); every process GETs the blob (skipped with a
               reason where nginx is not installed)

Every process copies what it gets into a Python sink that counts the bytes and checks a
few of them at each position (the blob is one 1 MiB pattern, repeated). Figures, each the
median over reps with min..max: time from the release to the last process having every
byte, against the floor (size / rate; at an unlimited rate the generator's own time into
a null sink, measured in the same run); time to first byte (each rep's median and max over
the processes); for streamcache the followers' first byte after the generator's first
chunk; generator runs; bytes written to disk (write_bytes of /proc/PID/io: page-cache bytes
dirtied, by every process of the contender, servers included); CPU seconds (user + system,
all processes); peak RSS (the largest process, VmHWM after a reset). Contenders run
interleaved, their order rotated each rep, each after a warm-up that writes and deletes a
file bigger than the blob.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import harness
from harness import BenchError, Children, MiB, Msg, log, scratch

from ipc import futex
from streamcache import StreamCache

KEY = "peers-blob"
CHUNK = MiB
CONTENDERS = ("fetch", "stream", "nocache", "filelock", "diskcache", "nginx")
_CHECK = 16  # bytes checked at the start of every piece a sink receives


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def pattern() -> bytes:
    """The blob's 1 MiB pattern (the same in every process)."""
    return random.Random(20261203).randbytes(CHUNK)


# -- the generator -------------------------------------------------------------------------


class Generator:
    """Emits ``size`` bytes in 1 MiB chunks at ``rate`` bytes/s (0: unlimited), on an
    absolute schedule (a chunk delayed by back pressure does not slow the ones after it
    below the rate). Every run appends a line to ``runs_path``: its first chunk's time."""

    def __init__(self, size: int, rate: float, runs_path: str) -> None:
        self.size = size
        self.rate = rate
        self.runs_path = runs_path
        self.template = bytearray(pattern())
        self.write_s = 0.0
        self.write_max = 0.0
        self.writes = 0

    def chunks(self) -> Iterator[bytes]:
        t0 = now()
        first = True
        left = self.size
        i = 0
        while left > 0:
            if self.rate:
                due = t0 + i * CHUNK / self.rate
                wait = due - now()
                if wait > 0:
                    time.sleep(wait)
            n = min(CHUNK, left)
            chunk = bytes(self.template[:n])  # a generator makes new bytes each time
            if first:
                first = False
                fd = os.open(self.runs_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, f"{now():.6f}\n".encode())
                finally:
                    os.close(fd)
            yield chunk
            left -= n
            i += 1

    def run(self, write: Callable[[bytes], object]) -> None:
        """Hand every chunk to ``write``, timing each call (``write_s``, ``write_max``): the
        consumer's write path, back pressure included."""
        for chunk in self.chunks():
            t0 = now()
            write(chunk)
            t = now() - t0
            self.write_s += t
            self.write_max = max(self.write_max, t)
            self.writes += 1


class GenFile:
    """The generator as a file-like object (``read``), for diskcache's ``read=True``."""

    def __init__(self, gen: Generator) -> None:
        self._it = gen.chunks()

    def read(self, n: int = -1) -> bytes:
        return next(self._it, b"")


def read_runs(runs_path: str) -> list[float]:
    try:
        with open(runs_path) as f:
            return [float(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


# -- the sink and the per-process figures --------------------------------------------------


class CheckingSink:
    """Counts bytes, stamps the first and the last, checks each piece's first bytes."""

    def __init__(self, size: int) -> None:
        p = pattern()
        self._expect = p + p[:_CHECK]
        self.size = size
        self.n = 0
        self.first: float | None = None
        self.last: float | None = None
        self.attached: float | None = None  # stream(): its lookup returned (a reader)

    def write(self, b: bytes | bytearray | memoryview) -> int:
        k = len(b)
        if not k:
            return 0
        if self.first is None:
            self.first = now()
        off = self.n % CHUNK
        m = min(k, _CHECK)
        if bytes(b[:m]) != self._expect[off : off + m]:
            raise BenchError(f"wrong bytes at offset {self.n}")
        self.n += k
        if self.n >= self.size:
            self.last = now()
        return k


def proc_io_write_bytes(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_peak_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_peak_rss(pid: int) -> None:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- the contenders, in the worker processes -----------------------------------------------


def _fetch(cache: StreamCache, gen: Generator, sink: CheckingSink) -> None:
    def create(w: Any) -> None:
        gen.run(w.write)

    cache.fetch(KEY, sink, create)


def _stream(cache: StreamCache, gen: Generator, sink: CheckingSink) -> None:
    def create(w: Any) -> None:
        gen.run(w.write)

    with cache.stream(KEY, create) as s:
        sink.attached = now()
        for chunk in s:
            sink.write(chunk)


def _filelock(work: str, gen: Generator, sink: CheckingSink) -> None:
    from filelock import FileLock

    path = os.path.join(work, "blob")
    with FileLock(path + ".lock"):
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.incomplete"
            with open(tmp, "wb", buffering=0) as f:
                gen.run(f.write)
            os.replace(tmp, path)
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            sink.write(chunk)


def _diskcache(work: str, gen: Generator, sink: CheckingSink) -> None:
    import diskcache  # type: ignore[import-untyped,unused-ignore]

    # size_limit: the default (1 GiB) would cull a 1 GiB value as soon as it is stored.
    with diskcache.Cache(os.path.join(work, "diskcache"), size_limit=1 << 40) as dc:
        with diskcache.Lock(dc, "lock-" + KEY):
            if KEY not in dc:
                dc.set(KEY, GenFile(gen), read=True)
        f = dc.get(KEY, read=True)
        if f is None:
            raise BenchError("diskcache lost the value")
        with f:
            while chunk := f.read(CHUNK):
                sink.write(chunk)


def _http(port: int, sink: CheckingSink) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=harness.WAIT)
    try:
        conn.request("GET", "/blob")
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"HTTP {resp.status}: {resp.read(200)!r}")
        while chunk := resp.read(CHUNK):
            sink.write(chunk)
    finally:
        conn.close()


def _worker(
    kind: str,
    work: str,
    size: int,
    rate: float,
    port: int,
    barrier: Barrier,
    out: Queue[Msg],
    role: str,
) -> None:
    with harness.reporting(out, role):
        runs = os.path.join(work, "runs")
        gen = Generator(size, rate, runs)
        sink = CheckingSink(size)
        cache = None
        if kind in ("fetch", "stream"):
            cache = StreamCache(os.path.join(work, "cache"), cleanup_interval=0)
        if kind == "diskcache":
            import diskcache  # noqa: F401  (imported before the release, as an app would)
        if kind == "filelock":
            import filelock  # noqa: F401
        try:
            reset_peak_rss(os.getpid())
            cpu0, wb0 = self_cpu_seconds(), proc_io_write_bytes()
            sleeps0, rings0 = futex.counts.waits, futex.counts.wakes
            out.put(("ready", role, {}))
            barrier.wait(harness.READY_WAIT)
            released = now()
            if kind == "fetch":
                assert cache is not None
                _fetch(cache, gen, sink)
            elif kind == "stream":
                assert cache is not None
                _stream(cache, gen, sink)
            elif kind == "nocache":
                gen.run(sink.write)
            elif kind == "filelock":
                _filelock(work, gen, sink)
            elif kind == "diskcache":
                _diskcache(work, gen, sink)
            elif kind == "nginx":
                _http(port, sink)
            else:
                raise BenchError(f"unknown contender {kind}")
            if cache is not None and not cache.wait_producers(harness.WAIT):
                raise BenchError("the producer thread did not finish")
            done = now()
        finally:
            if cache is not None:
                cache.stop()
        if sink.n != size:
            raise BenchError(f"{role} got {sink.n} of {size} bytes")
        payload = {
            "released": released,
            "first": sink.first,
            "last": sink.last,
            "attached": sink.attached,
            "done": done,
            "cpu": self_cpu_seconds() - cpu0,
            "sleeps": futex.counts.waits - sleeps0,
            "rings": futex.counts.wakes - rings0,
            "write_bytes": proc_io_write_bytes() - wb0,
            "peak_rss": proc_peak_rss(os.getpid()),
            "write_s": gen.write_s if gen.writes else None,
            "write_max": gen.write_max if gen.writes else None,
        }
        out.put(("done", role, payload))


# -- the HTTP origin and nginx ---------------------------------------------------------------


def _origin(size: int, rate: float, runs: str, port: int, ready: Event, stop: Event) -> None:
    """An HTTP/1.1 origin: every GET runs the generator (Content-Length known)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "max-age=600")
            self.end_headers()
            Generator(size, rate, runs).run(self.wfile.write)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    ready.set()
    stop.wait(4 * harness.WAIT)
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NGINX_CONF = """\
worker_processes 2;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=blob:10m max_size=64g
                     inactive=60m use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{origin};
            proxy_http_version 1.1;
            proxy_cache blob;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 600s;
            proxy_cache_lock_age 600s;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


class Nginx:
    """nginx with a private prefix under ``work``; stopped by its master's pid."""

    def __init__(self, binary: str, work: str, origin_port: int) -> None:
        self.prefix = os.path.join(work, "nginx")
        os.mkdir(self.prefix, 0o700)
        self.port = free_port()
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                NGINX_CONF.format(prefix=self.prefix, port=self.port, origin=origin_port, user=user)
            )
        self.proc = subprocess.Popen(
            [binary, "-p", self.prefix, "-c", conf, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BenchError(f"nginx exited with {self.proc.returncode}: {err.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError("nginx did not start listening within 30 s")
            time.sleep(0.05)

    def pids(self, workers: int = 2) -> list[int]:
        """The master and its ``workers`` workers (waits up to 10 s for them: the master
        listens before it forks them)."""
        deadline = time.monotonic() + 10
        while True:
            children: list[int] = []
            with contextlib.suppress(OSError):
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    children = [int(x) for x in f.read().split()]
            if len(children) >= workers or time.monotonic() > deadline:
                return [self.proc.pid, *children]
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# -- one run of one contender ----------------------------------------------------------------


@dataclass
class Run:
    """One contender, one rep."""

    last: float  # release -> the last process has every byte
    ttfb: list[float]  # per process, release -> first byte
    follower_lag: list[float]  # per process, the generator's first chunk -> first byte
    attach_lag: list[float]  # stream(): per process, that chunk -> its lookup returned
    runs: int
    write_bytes: int
    cpu: float
    peak_rss: int
    disk_left: int  # bytes in files under the work dir after the run
    write_s: float | None  # the (first) generator's time inside its consumer's write calls
    write_max: float | None  # its longest single write call
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and end
    sleeps: int = 0  # futex waits begun, every process (streamcache's readers sleeping)
    rings: int = 0  # futex wake calls made, every process (its producer ringing them)


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                total += st.st_size
    return total


def load_average() -> float:
    return os.getloadavg()[0]


def run_once(kind: str, procs: int, size: int, rate: float, data: bytes) -> Run:
    load0 = load_average()
    with scratch(f"peers-{kind}") as work:
        runs = os.path.join(work, "runs")
        nginx: Nginx | None = None
        servers: list[int] = []
        with Children() as ch:
            port = 0
            stop: Event | None = None
            try:
                if kind == "nginx":
                    binary = nginx_binary()
                    if binary is None:
                        raise BenchError("nginx is not installed")
                    ready, stop = ch.ctx.Event(), ch.ctx.Event()
                    oport = free_port()
                    origin = ch.start(_origin, size, rate, runs, oport, ready, stop)
                    if not ready.wait(harness.READY_WAIT):
                        raise BenchError("the origin did not start")
                    nginx = Nginx(binary, work, oport)
                    port = nginx.port
                    assert origin.pid is not None
                    servers = [origin.pid, *nginx.pids()]
                barrier = ch.ctx.Barrier(procs + 1)
                for i in range(procs):
                    ch.start(_worker, kind, work, size, rate, port, barrier, ch.out, f"p{i}")
                ch.collect("ready", procs, harness.READY_WAIT, f"{kind} workers to start")
                harness.precondition(work, size, data)  # the warm-up: a bigger file, deleted
                for pid in servers:
                    reset_peak_rss(pid)
                server0 = {p: (proc_cpu_seconds(p), proc_io_write_bytes(p)) for p in servers}
                barrier.wait(harness.READY_WAIT)
                done = ch.collect("done", procs, harness.WAIT, f"the {kind} run")
                disk_left = dir_bytes(work)
                server1 = {p: (proc_cpu_seconds(p), proc_io_write_bytes(p)) for p in servers}
                server_rss = [proc_peak_rss(p) for p in servers]
            finally:
                if nginx is not None:
                    nginx.stop()
                if stop is not None:
                    stop.set()  # the origin returns (exit status 0)
        first_chunks = read_runs(runs)
        gen_first = min(first_chunks) if first_chunks else float("nan")
        released = min(d["released"] for d in done)
        writers = [d for d in done if d["write_s"] is not None]  # nocache: every process
        cpu = sum(d["cpu"] for d in done)
        cpu += sum(server1[p][0] - server0[p][0] for p in servers)
        wb = sum(d["write_bytes"] for d in done)
        wb += sum(server1[p][1] - server0[p][1] for p in servers)
        return Run(
            last=max(d["last"] for d in done) - released,
            ttfb=[d["first"] - released for d in done],
            follower_lag=[d["first"] - gen_first for d in done],
            attach_lag=[d["attached"] - gen_first for d in done if d["attached"] is not None],
            runs=len(first_chunks),
            write_bytes=wb,
            cpu=cpu,
            peak_rss=max([d["peak_rss"] for d in done] + server_rss),
            disk_left=disk_left,
            write_s=writers[0]["write_s"] if writers else None,
            write_max=writers[0]["write_max"] if writers else None,
            load=(load0, load_average()),
            sleeps=sum(d["sleeps"] for d in done),
            rings=sum(d["rings"] for d in done),
        )


def generator_alone(size: int, rate: float) -> float:
    """Seconds for the generator to emit ``size`` bytes into a null sink, here."""
    with scratch("peers-gen") as work:
        gen = Generator(size, rate, os.path.join(work, "runs"))
        t0 = now()
        gen.run(lambda b: None)
        return now() - t0


# -- the table -------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    rate: float
    runs: list[Run] = field(default_factory=list)
    skipped: str | None = None


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def span(xs: list[float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(med(xs))} [{fmt(min(xs))}..{fmt(max(xs))}]"


def secs(x: float) -> str:
    return f"{x:.2f}" if x >= 0.1 else f"{x * 1e3:.0f}ms"


def mib(x: float) -> str:
    return f"{x / MiB:.0f}"


LEGEND = """\
Cells: median over reps [min..max]. last byte: release -> the last process has every byte.
TTFB: release -> a process's first byte (each rep's median and max over the processes).
load start..end: the 1-minute load average at the start and the end of a run (medians).
gen runs: per rep. disk: bytes written (page-cache bytes dirtied: /proc/PID/io write_bytes,
every process of the contender, servers included). CPU: user + system seconds, all
processes. peak RSS: the largest process (VmHWM). left: bytes in files afterwards."""


def load_span(runs: list[Run]) -> str:
    """The median load average at the runs' starts and at their ends."""
    return f"{med([x.load[0] for x in runs]):.2f}..{med([x.load[1] for x in runs]):.2f}"


def md_line(c: tuple[str, ...], widths: list[int]) -> str:
    return "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |"


def table(results: list[Result], floors: dict[float, list[float]], size: int, procs: int) -> str:
    lines = []
    for rate, fl in floors.items():
        rate_s = f"{rate / MiB:.0f} MiB/s" if rate else "unlimited"
        floor = med(fl)
        lines.append(
            f"\n{procs} processes, one {harness.fmt_size(size)} blob, generator at {rate_s}: "
            f"floor {floor:.2f} s ({'size / rate' if rate else 'the generator alone, median'})"
        )
        head = (
            "contender",
            "last byte s [min..max]",
            "x floor",
            "CPU s",
            "load start..end",
            "TTFB median s",
            "TTFB max s",
            "gen runs",
            "disk MiB",
            "peak RSS MiB",
            "left MiB",
        )
        rows = []
        filelock_last = filelock_cpu = None
        for r in results:
            if r.rate != rate:
                continue
            if r.skipped:
                rows.append((r.kind, f"skipped: {r.skipped}", *[""] * 9))
                continue
            lasts = [x.last for x in r.runs]
            if r.kind == "filelock":
                filelock_last = med(lasts)
                filelock_cpu = med([x.cpu for x in r.runs])
            rows.append(
                (
                    r.kind,
                    span(lasts, secs),
                    f"{med(lasts) / floor:.2f}",
                    span([x.cpu for x in r.runs], lambda v: f"{v:.1f}"),
                    load_span(r.runs),
                    span([med(x.ttfb) for x in r.runs], secs),
                    span([max(x.ttfb) for x in r.runs], secs),
                    "/".join(str(x.runs) for x in r.runs),
                    span([float(x.write_bytes) for x in r.runs], mib),
                    span([float(x.peak_rss) for x in r.runs], mib),
                    span([float(x.disk_left) for x in r.runs], mib),
                )
            )
        widths = [max(len(c[i]) for c in [head, *rows]) for i in range(len(head))]
        lines += [md_line(head, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += [md_line(c, widths) for c in rows if not c[1].startswith("skipped")]
        lines += [f"- {c[0]} {c[1]}" for c in rows if c[1].startswith("skipped")]
        for r in results:
            ws = [x.write_s for x in r.runs if x.write_s is not None]
            wm = [x.write_max for x in r.runs if x.write_max is not None]
            if r.rate != rate or r.skipped or not ws or r.kind == "nocache":
                continue
            lines.append(
                f"- {r.kind}: the generator spent {span(ws, secs)} s inside its consumer's "
                f"write calls, longest single call {span(wm, secs)}"
            )
        for r in results:
            if r.rate != rate or r.skipped or r.kind not in ("fetch", "stream"):
                continue
            lag = [max(x.follower_lag) for x in r.runs]
            lasts = [x.last for x in r.runs]
            verdict = [
                f"last byte {med(lasts) / floor:.2f}x floor" + (" (target <= 1.1)" if rate else ""),
                f"slowest first byte {secs(med(lag))} after the generator's first chunk "
                f"[{secs(min(lag))}..{secs(max(lag))}] (target <= 50ms)",
                f"generator runs {'/'.join(str(x.runs) for x in r.runs)} (target 1)",
            ]
            attach = [max(x.attach_lag) for x in r.runs if x.attach_lag]
            if attach:
                # The first byte follows the lookup (under the key's lock, one process
                # at a time) by a wake-up: this says which of the two the wait was.
                verdict.insert(
                    2,
                    f"slowest lookup returned {secs(med(attach))} after that chunk "
                    f"[{secs(min(attach))}..{secs(max(attach))}]",
                )
            # Each sleep is a wake-up to pay for (Python, futex, a context switch): the
            # filelock pattern's readers sleep once, on the lock.
            per_gib = harness.GiB / size
            verdict.append(
                f"{med([x.sleeps * per_gib / procs for x in r.runs]):.0f} sleeps per GiB "
                f"per process, {med([x.rings * per_gib for x in r.runs]):.0f} rings per GiB"
            )
            if not rate and filelock_last is not None:
                verdict.append(
                    f"vs filelock {filelock_last / med(lasts):.2f}x (target >= 1: never slower)"
                )
            if filelock_cpu is not None:
                verdict.append(
                    f"CPU {med([x.cpu for x in r.runs]) / filelock_cpu:.2f}x filelock's "
                    "for the same bytes delivered"
                )
            lines.append(f"- streamcache {r.kind}: " + "; ".join(verdict))
    return "\n".join(lines)


def main(
    procs: int, size: int, rates: list[float], reps: int, kinds: list[str]
) -> tuple[str, dict[str, Any]]:
    data = os.urandom(MiB)
    results: list[Result] = []
    floors: dict[float, list[float]] = {}
    for rate in rates:
        rate_s = f"{rate / MiB:.0f} MiB/s" if rate else "unlimited"
        by_kind = {k: Result(k, rate) for k in kinds}
        results += by_kind.values()
        floors[rate] = []
        for rep in range(reps):
            if rate:
                floors[rate].append(size / rate)
            else:
                floors[rate].append(generator_alone(size, rate))
            order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
            for kind in order:
                res = by_kind[kind]
                if res.skipped:
                    continue
                log(f"peers {rate_s} rep {rep + 1}/{reps}: {kind}")
                try:
                    run = run_once(kind, procs, size, rate, data)
                except BenchError as exc:
                    if kind == "nginx" and "not installed" in str(exc):
                        res.skipped = str(exc)
                        continue
                    raise
                log(
                    f"peers {kind}: last byte {run.last:.2f} s, runs {run.runs}, "
                    f"cpu {run.cpu:.1f} s, disk {run.write_bytes / MiB:.0f} MiB, "
                    f"left {run.disk_left / MiB:.0f} MiB"
                )
                res.runs.append(run)
    text = table(results, floors, size, procs)
    raw = {
        "procs": procs,
        "size": size,
        "floors": {str(k): v for k, v in floors.items()},
        "results": [
            {
                "kind": r.kind,
                "rate": r.rate,
                "skipped": r.skipped,
                "runs": [vars(x) for x in r.runs],
            }
            for r in results
        ],
    }
    return text, raw


if __name__ == "__main__":
    sys.exit("run it as: python tools/bench.py --peers")
