"""A command shared by concurrent invocations that no single invocation can take down
(``streamcache run`` and ``streamcache git-pack-objects-hook``).

The producer of an entry is the process that called ``create``: if an invocation ran
the command itself, killing that invocation would fail the entry for every other one.
So an invocation that finds no entry starts a *detached producer*: ``python -m
streamcache.cli.detached`` in a session of its own (no signal sent to the
invocation's process group reaches it), which fetches the entry through the public
API, becoming its producer (or, if another one got there first, one more reader),
and relays what it reads to the invocation through a pipe. The command runs under
the detached producer, in a process group of its own, its stdout and stderr going
into the entry only, as frames (:mod:`streamcache.cli.frames`). An invocation that
finds the entry (finished or in flight) reads it itself.

One detached producer per key at a time: an invocation that finds no entry takes the
key's *spawn lock* (:class:`SpawnLock`, a flock on one of a few files in the cache
directory) before it looks again and starts one, and hands the lock to it; the
detached producer lets go once its create starts (the entry is then in the index, or
this is an admission's uncached run), once it relays its first bytes, or when it
ends (the kernel releases the lock of a process that dies). Invocations that arrive
meanwhile wait for the lock, then find the entry and read it themselves, instead of
each starting a process that would relay the whole entry once more.

Every invocation replays both bands to its own stdout and stderr and exits with the
command's status. A signal (SIGTERM, SIGINT, SIGHUP, SIGPIPE) or a broken stdout ends
only that invocation's delivery: its reader leaves, or its pipe breaks and the
producer stops relaying to it (its create goes on for the entry's other readers). The
command is stopped (SIGTERM to its process group, SIGKILL after :data:`STOP_GRACE`)
only when its next output finds no reader left, the cache's "all readers left" rule.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from ipc.digest import sha256

from ..admission import MinOccurrences
from ..base import CacheBase
from ..cache import StreamCache
from ..errors import CreateError, ProducerDied
from ..log import when_used
from . import counters
from .frames import HANDOFF, MAX_PAYLOAD, STDERR, STDOUT, Demux, Replay, end_frame, frame
from .options import EXIT_BROKEN_PIPE, os_error_text, quiet_stdout

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import subprocess
    from typing import Any

# Exit statuses of the invocations' own failures, as env(1), timeout(1) and docker use them.
EXIT_RUN_FAILED = 125  # the shared run failed for another reason than the command's status
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

# How long the command may take to end after SIGTERM before its process group is killed.
STOP_GRACE = 5.0

_MODULE = "streamcache.cli.detached"  # this module, also when run as __main__
_STATUS = r"\(exit status (\d+)\)\s*$"  # compiled by re at its first use: on a failure
_PR_SET_PDEATHSIG = 1
_SPAWN_LOCK_FD = 3  # the detached producer's descriptor of its key's spawn lock


class Options:
    """What opens the cache and runs the command, the same in an invocation and in the
    detached producer it starts (which gets it on its command line)."""

    def __init__(
        self,
        prog: str,
        cache_dir: str,
        max_age: float,
        *,
        min_occurrences: int = 0,
        max_bytes: int | None = None,
        key_preview: int = 0,
        stderr_all: bool = True,
        verbose: bool = False,
    ) -> None:
        self.prog = prog
        self.cache_dir = cache_dir
        self.max_age = max_age
        self.min_occurrences = min_occurrences
        self.max_bytes = max_bytes
        self.key_preview = key_preview
        self.stderr_all = stderr_all
        self.verbose = verbose

    def to_argv(self) -> list[str]:
        return [
            self.prog,
            self.cache_dir,
            repr(self.max_age),
            str(self.min_occurrences),
            "-" if self.max_bytes is None else str(self.max_bytes),
            str(self.key_preview),
            "all" if self.stderr_all else "first",
            "v" if self.verbose else "-",
        ]

    @classmethod
    def from_argv(cls, argv: list[str]) -> Options:
        prog, cache_dir, max_age, min_occ, max_bytes, preview, stderr, verbose = argv
        return cls(
            prog,
            cache_dir,
            float(max_age),
            min_occurrences=int(min_occ),
            max_bytes=None if max_bytes == "-" else int(max_bytes),
            key_preview=int(preview),
            stderr_all=stderr == "all",
            verbose=verbose == "v",
        )

    def open(self) -> tuple[StreamCache, CacheBase]:
        """The cache (no metrics registry: nothing scrapes a command-line process, and
        prometheus_client's import would cost more than a hit) and what to fetch from."""
        cache = StreamCache(
            self.cache_dir,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            cleanup_interval=0,
            key_preview=self.key_preview,
            registry=None,
        )
        target: CacheBase = cache
        if self.min_occurrences:
            target = MinOccurrences(cache, self.min_occurrences, self.max_age)
        return cache, target


class SpawnLock:
    """The key's spawn lock (see the module docstring), held by this process on ``fd``
    until :meth:`release` (idempotent)."""

    STRIPES = 16  # keys share these files: a collision only delays a start a little
    WAIT = 10.0  # after this long an invocation starts a detached producer anyway

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    @classmethod
    def take(cls, cache_dir: str, key: str) -> SpawnLock | None:
        """Wait (at most :attr:`WAIT`, polling) for ``key``'s spawn lock; None if it did
        not come, or the lock file cannot be used (then nothing is serialised)."""
        import fcntl
        import time

        stripe = sha256(key.encode()).digest()[0] % cls.STRIPES
        path = os.path.join(cache_dir, "command-spawn", f"{stripe:02x}")
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None
        deadline = time.monotonic() + cls.WAIT
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(fd)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
            except OSError:
                break
        os.close(fd)
        return None

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # the last descriptor of the lock's open file: released


class CommandFailed(Exception):
    """The command's run failed; its message ends with ``(exit status N)``, which every
    invocation streaming the entry reads back."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(f"{message} (exit status {status})")
        self.status = status


class Interrupted(KeyboardInterrupt):
    """A signal that ends this invocation's delivery (and nothing else)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def status_of(returncode: int) -> int:
    """A shell's status for a child's return code (killed by signal N: 128+N)."""
    return 128 - returncode if returncode < 0 else returncode


def _child_setup(parent: int) -> Callable[[], None]:
    """What the command's process does before exec: a process group of its own (so a
    signal reaches all of it), and on Linux SIGTERM when the process running it dies, so
    that no orphan goes on working for nobody. Runs between fork and exec."""
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes  # here: only the process that runs the command needs it

        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # it died before the line above
                os.kill(os.getpid(), signal.SIGTERM)

    return setup


class Runner:
    """The ``create`` of a shared command: runs ``argv`` (stdin: ``stdin_fd`` from its
    start, or /dev/null) and writes its stdout and stderr into the entry as frames, then
    the end frame. Fails the entry unless the command exits 0."""

    def __init__(
        self, argv: list[str], stdin_fd: int | None, spawn_lock: SpawnLock | None = None
    ) -> None:
        self.argv = argv
        self.stdin_fd = stdin_fd
        self.spawn_lock = spawn_lock  # let go as the command starts
        self.started = False  # this process ran the command
        self.status: int | None = None
        self.message: str | None = None  # why the command could not run
        self.generated = 0

    def __call__(self, w: Any) -> None:
        self.started = True
        if self.spawn_lock is not None:
            self.spawn_lock.release()
        import subprocess  # only the process that runs the command needs it

        stdin: int = subprocess.DEVNULL
        if self.stdin_fd is not None:
            os.lseek(self.stdin_fd, 0, os.SEEK_SET)
            stdin = self.stdin_fd
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=_child_setup(os.getpid()),
            )
        except OSError as exc:
            self.status = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else 126
            self.message = f"cannot run {self.argv[0]}: {exc.strerror}"
            raise CommandFailed(self.message, self.status) from exc
        try:
            self._pump(proc, w)
        except BaseException:
            # No reader is left (BrokenPipeError), or the cache failed, or this process
            # was told to stop: the command ends, and its entry fails.
            _stop(proc)
            raise
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self.status = status_of(proc.wait())
        if self.status != 0:
            raise CommandFailed(f"the command exited with status {self.status}", self.status)
        w.write(end_frame(0))

    def _pump(self, proc: subprocess.Popen[bytes], w: Any) -> None:
        """Copy the command's stdout and stderr into the entry, in the order they come,
        until both end."""
        import select

        assert proc.stdout is not None and proc.stderr is not None
        bands = {proc.stdout.fileno(): STDOUT, proc.stderr.fileno(): STDERR}
        _grow_pipe(proc.stdout.fileno())
        poller = select.poll()
        for fd in bands:
            poller.register(fd, select.POLLIN)
        while bands:
            for fd, _ in poller.poll():
                chunk = os.read(fd, MAX_PAYLOAD)
                if not chunk:
                    poller.unregister(fd)
                    del bands[fd]
                    continue
                data = frame(bands[fd], chunk)
                w.write(data)
                self.generated += len(data)


def _grow_pipe(fd: int) -> None:
    """Let the pipe ``fd`` hold up to MAX_PAYLOAD bytes where the system allows it (Linux:
    F_SETPIPE_SZ, up to /proc/sys/fs/pipe-max-size; elsewhere it stays as it is), so one
    read takes what a fast command wrote meanwhile, not 64 KiB at most."""
    import fcntl

    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, MAX_PAYLOAD)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's process group, SIGKILL if it is still there after
    :data:`STOP_GRACE`; reaped."""
    import subprocess

    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)
        try:
            proc.wait(STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def failure(prog: str, exc: CreateError, runner: Runner) -> tuple[int, str | None]:
    """The exit status of an invocation whose entry failed, and what it says (None: the
    command's own stderr said it)."""
    if runner.started and runner.status not in (None, 0):
        return runner.status, None if runner.message is None else f"{prog}: {runner.message}"
    text = str(exc)
    import re

    match = re.search(_STATUS, text)
    if match is not None and not isinstance(exc, ProducerDied):
        return int(match.group(1)), f"{prog}: {text.removeprefix('CommandFailed: ')}"
    if isinstance(exc, ProducerDied):
        text = f"{exc}; its output is incomplete"
    return EXIT_RUN_FAILED, f"{prog}: the shared run failed: {text}"


# -- an invocation -----------------------------------------------------------------


def deliver(opts: Options, key: str, argv: list[str], stdin_fd: int | None) -> int:
    """One invocation: the command's output, shared under ``key``, replayed to this
    process's stdout and stderr; its exit status."""
    if not opts.verbose:  # a failing command fails its entry: the invocations say so
        when_used(lambda logger: logger.setLevel("ERROR"))
    try:
        cache, target = opts.open()
    except (OSError, ValueError) as exc:
        print(
            f"{opts.prog}: cannot use the cache, running uncached: {os_error_text(exc)}",
            file=sys.stderr,
        )
        counters.add(opts.cache_dir, **{counters.UNCACHED: 1})
        return run_uncached(argv, stdin_fd)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, on_signal)
    sys.stdout.flush()
    # Relayed, stderr comes only as the detached producer passes it on (--stderr=first:
    # if it ran the command); read here, it is dropped with --stderr=first.
    out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    relayed_out = Demux(out_fd, err_fd)
    out = Replay(out_fd, err_fd if opts.stderr_all else None)
    counts: dict[str, int] = {}
    try:
        try:
            found = target.peek(key) is not None
            if not found:
                spawn_lock = SpawnLock.take(cache.dir, key)
                try:
                    found = target.peek(key) is not None
                    relayed = None if found else _spawn(opts, key, argv, stdin_fd, spawn_lock)
                finally:
                    if spawn_lock is not None:
                        spawn_lock.release()  # (the detached producer holds it now)
            else:
                relayed = None
        except OSError as exc:  # before the first byte: a cache problem fails nothing
            print(f"{opts.prog}: running uncached: {os_error_text(exc)}", file=sys.stderr)
            cache.stop()
            counters.add(cache.dir, **{counters.UNCACHED: 1})
            return run_uncached(argv, stdin_fd)
        status = None if relayed is None else _relay(relayed, relayed_out, opts.prog)
        if status is None:  # found, or handed back by the detached producer
            status = _read(opts.prog, target, key, out, Runner(argv, stdin_fd), counts)
    except Interrupted as exc:
        with contextlib.suppress(OSError):
            print(f"{opts.prog}: interrupted by {exc}", file=sys.stderr)
        status = 128 + exc.signum
    except BrokenPipeError:
        # Our stdout's reader went away: quiet, as a command killed by SIGPIPE is.
        quiet_stdout()
        status = EXIT_BROKEN_PIPE
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_IGN)
        cache.stop()
    counts[counters.SERVED] = relayed_out.delivered + out.delivered
    if status != 0:
        counts[counters.FAILED] = 1
    counters.add(cache.dir, **counts)
    return status


def _read(
    prog: str, target: CacheBase, key: str, out: Replay, runner: Runner, counts: dict[str, int]
) -> int:
    """Read an entry that was there at the lookup, its payloads sent from its data file
    (:class:`~.frames.Replay`); if it is gone by then (failed or evicted in between),
    this invocation runs the command itself (in a producer thread of the cache)."""
    try:
        with target.stream(key, runner) as s:
            out.replay(s)
    except CreateError as exc:
        status, text = failure(prog, exc, runner)
        if text is not None:
            print(text, file=sys.stderr)
        return status
    finally:
        counts[counters.MISS if runner.started else counters.HIT] = 1
        counts[counters.GENERATED] = runner.generated
    if out.status is None:
        print(f"{prog}: the entry ended without the command's exit status", file=sys.stderr)
        return EXIT_RUN_FAILED
    return out.status


def _spawn(
    opts: Options, key: str, argv: list[str], stdin_fd: int | None, spawn_lock: SpawnLock | None
) -> int:
    """Start the detached producer (in a session of its own), giving it ``spawn_lock``
    as its descriptor 3; the read end of its pipe."""
    r, w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull if stdin_fd is None else stdin_fd, 0),
            (os.POSIX_SPAWN_DUP2, w, 1),
            # Verbose, the cache's own warnings of its run go to our stderr.
            (os.POSIX_SPAWN_DUP2, 2 if opts.verbose else devnull, 2),
        ]
        if spawn_lock is not None and spawn_lock.fd is not None:
            actions.append((os.POSIX_SPAWN_DUP2, spawn_lock.fd, _SPAWN_LOCK_FD))
        if stdin_fd is not None:
            os.lseek(stdin_fd, 0, os.SEEK_SET)
        stdin = "-" if stdin_fd is None else "stdin"
        lock = "-" if spawn_lock is None else str(_SPAWN_LOCK_FD)
        args = [sys.executable, "-m", _MODULE, *opts.to_argv(), stdin, lock, key.encode().hex()]
        args.append("--")
        args += argv
        os.posix_spawn(sys.executable, args, os.environ, file_actions=actions, setsid=True)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
        os.close(devnull)
    return r


def _relay(r: int, out: Demux, prog: str) -> int | None:
    """Copy the detached producer's frames to this invocation's stdout and stderr; None
    if it handed the entry back (:data:`HANDOFF`: another process produces it, and
    this invocation reads it itself). The handoff is written alone, in one write of
    fewer than PIPE_BUF bytes, before anything else: it comes as the first read."""
    try:
        chunk = os.read(r, MAX_PAYLOAD + 5)
        if chunk == HANDOFF:
            return None
        while chunk:
            out.write(chunk)
            chunk = os.read(r, MAX_PAYLOAD + 5)
    finally:
        os.close(r)
    if out.status is None:
        print(f"{prog}: the shared run ended early (its producer died)", file=sys.stderr)
        return EXIT_RUN_FAILED
    return out.status


def run_uncached(argv: list[str], stdin_fd: int | None) -> int:
    """The command run here, on its own, its output straight to ours: what an
    invocation does when the cache cannot be used."""
    import subprocess

    if stdin_fd is not None:
        os.lseek(stdin_fd, 0, os.SEEK_SET)
    try:
        return status_of(
            subprocess.call(argv, stdin=subprocess.DEVNULL if stdin_fd is None else stdin_fd)
        )
    except OSError as exc:
        print(f"cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE


def buffer_stdin(near: str) -> tuple[int, bytes]:
    """This process's stdin read to its end into an unlinked temporary file (in
    ``near``'s file system when it can be, else the system's temporary directory),
    hashed as it is read: the file's descriptor and the sha256 digest."""
    fd = _unlinked_file(near)
    digest = sha256()
    try:
        while chunk := os.read(0, 1 << 16):
            digest.update(chunk)
            view = memoryview(chunk)
            while len(view):
                view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd, digest.digest()


def _unlinked_file(near: str) -> int:
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        with contextlib.suppress(OSError):
            return os.open(near, flag | os.O_RDWR, 0o600)
    import tempfile

    f = tempfile.TemporaryFile()  # noqa: SIM115 - the descriptor outlives the object
    fd = os.dup(f.fileno())
    f.close()
    return fd


# -- the detached producer -----------------------------------------------------------


class _Stop(KeyboardInterrupt):
    """SIGTERM to the detached producer: the command is stopped, the entry fails."""


class _Relay(Demux):
    """The detached producer's ``dst``: frames passed on to its invocation, band 2 only
    with --stderr=all or when this producer ran the command."""

    def __init__(self, stderr_all: bool, runner: Runner) -> None:
        super().__init__(None, None, relay_fd=1)
        self._stderr_all = stderr_all
        self._runner = runner

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._runner.spawn_lock is not None:
            self._runner.spawn_lock.release()  # another process produces the entry
        return super().write(data)

    def _passed(self, band: int) -> bool:
        return band != STDERR or self._stderr_all or self._runner.started


def producer_main(argv: list[str]) -> int:
    """``python -m streamcache.cli.detached OPTIONS KEY_HEX -- CMD...``: fetch the entry
    (creating it by running CMD), relaying its frames to stdout, then the status."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    split = argv.index("--")
    opts = Options.from_argv(argv[: split - 3])
    stdin_fd = None if argv[split - 3] == "-" else 0
    spawn_lock = None if argv[split - 2] == "-" else SpawnLock(int(argv[split - 2]))
    key = bytes.fromhex(argv[split - 1]).decode()
    command = argv[split + 1 :]
    if not opts.verbose:
        when_used(lambda logger: logger.setLevel("ERROR"))
    runner = Runner(command, stdin_fd, spawn_lock)
    dst = _Relay(opts.stderr_all, runner)
    status, text = 0, None
    try:
        cache, target = opts.open()
    except (OSError, ValueError) as exc:
        _tell(frame(STDERR, f"{opts.prog}: {os_error_text(exc)}\n".encode()) + end_frame(125))
        return EXIT_RUN_FAILED
    if target.peek(key) is not None:
        # Another process produces it (or it is stored): relaying it would copy every
        # byte through this process too; the invocation reads it itself.
        _tell(HANDOFF)
        cache.stop()
        return 0  # (the spawn lock is let go as this process ends)
    try:
        target.fetch(key, dst, runner)
    except CreateError as exc:
        status, text = failure(opts.prog, exc, runner)
    except _Stop:
        status, text = 128 + signal.SIGTERM, f"{opts.prog}: the shared run was stopped"
    except OSError:
        status = EXIT_BROKEN_PIPE  # our invocation went away: nobody to tell
    if status != 0:
        message = b"" if text is None else frame(STDERR, f"{text}\n".encode())
        _tell(message + end_frame(status))
    # Counted before the invocation gets its end of file (it may exit at once, and who
    # started it may read the counters then).
    counters.add(
        cache.dir,
        **{
            counters.MISS if runner.started else counters.HIT: 1,
            counters.GENERATED: runner.generated,
        },
    )
    if runner.started:
        with contextlib.suppress(Exception):
            cache.gc()  # the producer's chance to clear expired entries (as before it ends)
    _quiet_fd(1)  # the invocation reads to its end: it is told all there is
    cache.stop()
    return status


def _tell(data: bytes) -> None:
    with contextlib.suppress(OSError):
        view = memoryview(data)
        while len(view):
            view = view[os.write(1, view) :]


def _quiet_fd(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(producer_main(sys.argv[1:]))
