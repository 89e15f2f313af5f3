"""streamcache run: concurrent identical invocations of a command share one run of it.

Every invocation fetches one cache entry whose ``create`` runs the command with its
stdout piped into the entry: the invocation that gets to create it runs the
command (the "runner"), the others stream the entry as it is written, exactly
as any reader of the cache does, and later ones within max-age read the finished
entry.

The exit status travels with the entry's outcome. A run that exits 0 finishes the
entry (later invocations read it and exit 0); any other run fails the entry, so it
is never cached, and the failure's text, which every reader of the entry gets,
ends with ``(exit status N)``: each invocation that streamed it exits with N.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..admission import MinOccurrences
from ..base import CacheBase
from ..cache import StreamCache
from ..errors import CreateError, ProducerDied
from ..log import when_used
from ..null import NullCache
from .options import EXIT_BROKEN_PIPE, default_dir, os_error_text, quiet_stdout

if TYPE_CHECKING:
    import subprocess

DEFAULT_MAX_AGE = 60.0

# Exit statuses of run's own failures, as env(1), timeout(1) and docker use them.
EXIT_RUN_FAILED = 125  # the shared run failed for another reason than the command's status
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

# How long the command may take to end after the signal this invocation forwarded
# to it, before its process group is killed.
STOP_GRACE = 5.0
_CHUNK = 64 * 1024

DESCRIPTION = """\
Run CMD once for every concurrent identical invocation: the first one runs it, the
others stream its stdout as it is produced, and later ones within --max-age get the
stored output without running anything.

- The key is a hash of CMD's arguments and the working directory (not the
  environment), unless --key gives one.
- Every invocation exits with CMD's exit status. Only a run that exits 0 is stored:
  a failed run is not cached.
- CMD's stderr goes to the invocation that ran it; its stdin is /dev/null.
- SIGINT or SIGTERM to the invocation running CMD is passed on to CMD's process
  group (SIGKILL after 5 s, or at a second signal); the other invocations then
  end with a message and the same non-zero status. If that invocation is killed
  outright, CMD gets SIGTERM (Linux) and the others end with status 125.
"""

EPILOG = f"""\
exit status:
  the command's own status; when the command was killed by signal N, 128+N
  {EXIT_RUN_FAILED}  the run failed for another reason (the invocation running the command
       died, the cache's disk is full, ...)
  {EXIT_CANNOT_EXECUTE}  the command cannot be executed
  {EXIT_NOT_FOUND}  the command was not found
  2    bad options

examples:
  streamcache run -- make report
  streamcache run --max-age 5m --key nightly-report -- ./report.sh --full
"""

_STATUS = re.compile(r"\(exit status (\d+)\)\s*$")


class CommandFailed(Exception):
    """The command's run failed; its message ends with ``(exit status N)``, which every
    invocation streaming the entry reads back."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(f"{message} (exit status {status})")
        self.status = status


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached an invocation that does not run the command."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def default_key(argv: list[str], cwd: str) -> str:
    """The key of a command: its arguments, shell-quoted, and its working directory,
    after a NUL (which neither can contain, so no two commands share a key). The cache
    hashes it; a stored preview shows the command line first."""
    return f"{shlex.join(argv)}\0{cwd}"


def status_of(returncode: int) -> int:
    """A shell's status for a child's return code (killed by signal N: 128+N)."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


_PR_SET_PDEATHSIG = 1


def _child_setup(runner_pid: int) -> Callable[[], None]:
    """What the command's process does before exec: a process group of its own (so a
    signal reaches all of it), and on Linux SIGTERM when the invocation running it dies
    (killed with SIGKILL, say), so that no orphan goes on working for nobody. Runs
    between fork and exec; the runner has no other thread then."""
    prctl = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != runner_pid:  # it died before the line above
                os.kill(os.getpid(), signal.SIGTERM)

    return setup


class Runner:
    """The ``create`` of a run: the command in its own process group, its stdout
    streamed into the entry. Fails the entry unless the command exits 0 and this
    invocation was not interrupted."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.started = False  # this invocation runs the command (it created the entry)
        self.status: int | None = None
        self.signum: int | None = None  # the signal that interrupted this invocation
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._escalation: threading.Timer | None = None

    def __call__(self, w: Any) -> None:
        self.started = True
        import subprocess  # only the invocation that runs the command needs it

        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                preexec_fn=_child_setup(os.getpid()),
            )
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError)
            self.status = EXIT_NOT_FOUND if missing else EXIT_CANNOT_EXECUTE
            print(f"streamcache run: cannot run {self.argv[0]}: {exc.strerror}", file=sys.stderr)
            raise CommandFailed(f"cannot run {self.argv[0]}: {exc.strerror}", self.status) from exc
        with self._lock:
            self._proc = proc
            if self.signum is not None:  # it came while the command was starting
                self._stop(self.signum)
        assert proc.stdout is not None
        try:
            self._copy(proc.stdout.fileno(), w)
        except BaseException:
            # No reader is left (BrokenPipeError), or the cache failed: like a
            # pipeline whose reader went away, the command ends.
            with self._lock:
                self._stop(signal.SIGTERM)
            raise
        finally:
            proc.stdout.close()
            returncode = proc.wait()
            with self._lock:
                if self._escalation is not None:
                    self._escalation.cancel()
                self._proc = None
            self.status = status_of(returncode)
        if self.signum is not None:
            self.status = 128 + self.signum
            raise CommandFailed(
                f"the invocation running the command (pid {os.getpid()}) got "
                f"{_signal_name(self.signum)} and stopped it; its output is incomplete",
                self.status,
            )
        if self.status != 0:
            raise CommandFailed(
                f"the command exited with status {self.status} in the invocation that ran "
                f"it (pid {os.getpid()}; its stderr went there)",
                self.status,
            )

    def _copy(self, fd: int, w: Any) -> None:
        while self.signum is None:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return
            w.write(chunk)

    def interrupt(self, signum: int) -> None:
        """SIGINT/SIGTERM to this invocation: pass it on to the command's process group,
        which is killed if it is still there after :data:`STOP_GRACE` or a second signal."""
        with self._lock:
            first = self.signum is None
            if first:
                self.signum = signum
            self._stop(signum if first else signal.SIGKILL)

    def _stop(self, signum: int) -> None:
        """Signal the command's process group (lock held)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)
        if signum != signal.SIGKILL and self._escalation is None:
            self._escalation = threading.Timer(STOP_GRACE, self._kill)
            self._escalation.daemon = True
            self._escalation.start()

    def _kill(self) -> None:
        with self._lock:
            self._stop(signal.SIGKILL)


def _cache_dir(args: argparse.Namespace) -> str:
    if args.dir is not None:
        return str(args.dir)
    path = default_dir()
    # The default location's parents (~/.cache) may not exist yet: made 0700, as XDG says.
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o700, exist_ok=True)
    return path


def main(args: argparse.Namespace) -> int:
    argv: list[str] = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        args.parser.error("run needs a command: streamcache run [OPTIONS] -- CMD [ARGS...]")
    if not args.verbose:  # a failing command fails its entry: run says so itself
        when_used(lambda logger: logger.setLevel("ERROR"))
    key = args.key if args.key is not None else default_key(argv, os.getcwd())
    cache = _open_cache(args)
    target: CacheBase = NullCache() if cache is None else cache
    if cache is not None and args.min_occurrences:
        target = MinOccurrences(cache, args.min_occurrences, args.max_age)
    runner = Runner(argv)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if runner.started:
            runner.interrupt(signum)
        else:
            raise Interrupted(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    sys.stdout.flush()
    out = open(sys.stdout.fileno(), "wb", buffering=0, closefd=False)  # noqa: SIM115
    try:
        return _fetch(target, key, out, runner)
    finally:
        if cache is not None:
            if runner.started:
                with contextlib.suppress(Exception):
                    cache.gc()  # the runner's chance to clear expired entries
            cache.stop()


def _open_cache(args: argparse.Namespace) -> StreamCache | None:
    """The cache of this run; None (with a one-line warning) when this process cannot
    use it (a read-only or foreign directory, a parent that is a file): the command
    then runs uncached, as it does when the cache's disk is full."""
    try:
        # No metrics: nothing scrapes a command-line process, and prometheus_client's
        # import would cost more than a hit.
        return StreamCache(
            _cache_dir(args),
            max_age=args.max_age,
            cleanup_interval=0,
            key_preview=args.key_preview,
            registry=None,
        )
    except (OSError, ValueError) as exc:
        print(
            f"streamcache run: cannot use the cache, running uncached: {os_error_text(exc)}",
            file=sys.stderr,
        )
        return None


def _fetch(cache: CacheBase, key: str, out: Any, runner: Runner) -> int:
    try:
        cache.fetch(key, out, runner)
    except Interrupted as exc:
        print(f"streamcache run: interrupted by {_signal_name(exc.signum)}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        # Our stdout's reader went away (``| head``): quiet, as a command killed by
        # SIGPIPE is; stdout is pointed at /dev/null so nothing fails at exit.
        quiet_stdout()
        return EXIT_BROKEN_PIPE
    except CreateError as exc:
        return _failed(exc, runner)
    return 0


def _failed(exc: CreateError, runner: Runner) -> int:
    """The exit status (and message) of an invocation whose entry failed."""
    if runner.started and runner.status is not None:
        if runner.signum is not None:
            print(
                f"streamcache run: interrupted by {_signal_name(runner.signum)}; the command "
                "was stopped",
                file=sys.stderr,
            )
        elif runner.status == 0:  # the command succeeded, the cache did not
            print(f"streamcache run: {exc}", file=sys.stderr)
            return EXIT_RUN_FAILED
        return runner.status
    text = str(exc)
    match = _STATUS.search(text)
    if match is not None and not isinstance(exc, ProducerDied):
        text = text.removeprefix(f"{CommandFailed.__name__}: ")
        print(f"streamcache run: {text}", file=sys.stderr)
        return int(match.group(1))
    if isinstance(exc, ProducerDied):
        text = f"{exc}; its output is incomplete"
    print(f"streamcache run: the shared run failed: {text}", file=sys.stderr)
    return EXIT_RUN_FAILED
