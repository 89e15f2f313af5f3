"""streamcache run: concurrent identical invocations of a command share one run of it.

Every invocation fetches one cache entry, which holds the command's stdout and stderr
as frames (:mod:`streamcache.cli.frames`): the first one to find no entry starts a
detached producer that runs the command (:mod:`streamcache.cli.detached`), the others
stream the entry as it is written, exactly as any reader of the cache does, and later
ones within max-age read the finished entry. No invocation's end, however it ends,
takes the command down for the others.

The exit status travels with the entry's outcome. A run that exits 0 finishes the
entry (later invocations read it and exit 0); any other run fails the entry, so it
is never cached, and the failure's text, which every reader of the entry gets,
ends with ``(exit status N)``: each invocation that streamed it exits with N.
"""

from __future__ import annotations

import argparse
import os
import shlex

from .detached import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    EXIT_RUN_FAILED,
    STOP_GRACE,
    Options,
    buffer_stdin,
    deliver,
)
from .options import default_dir

__all__ = ["EXIT_CANNOT_EXECUTE", "EXIT_NOT_FOUND", "EXIT_RUN_FAILED", "STOP_GRACE", "main"]

# The version of the entries' format (frames), part of every default key.
FORMAT = "run/2"

DEFAULT_MAX_AGE = 60.0

DESCRIPTION = """\
Run CMD once for every concurrent identical invocation: the first one starts it, the
others stream its output as it is produced, and later ones within --max-age get the
stored output without running anything.

- The key is a hash of CMD's arguments and the working directory (not the
  environment), unless --key gives one; with --stdin, of stdin too.
- Every invocation replays CMD's stdout and stderr (--stderr=first: stderr only to
  the invocation that started it) and exits with CMD's exit status. Only a run that
  exits 0 is stored: a failed run is not cached.
- CMD's stdin is /dev/null, or with --stdin this invocation's stdin (read to its end
  first).
- CMD runs detached from every invocation, in a session of its own: a signal
  (SIGINT, SIGTERM, SIGHUP, SIGPIPE) or SIGKILL to an invocation, the first one
  included, ends only that invocation; CMD is stopped (SIGTERM to its process group,
  SIGKILL after 5 s) when its next output finds no invocation left reading it.
- If the cache cannot be used, CMD runs uncached, for this invocation alone.
"""

EPILOG = f"""\
exit status:
  the command's own status; when the command was killed by signal N, 128+N
  {EXIT_RUN_FAILED}  the run failed for another reason (its producer died, the cache's
       disk is full, ...)
  {EXIT_CANNOT_EXECUTE}  the command cannot be executed
  {EXIT_NOT_FOUND}  the command was not found
  2    bad options

examples:
  streamcache run -- make report
  streamcache run --max-age 5m --key nightly-report -- ./report.sh --full
  streamcache run --stdin -- sort < words
"""


def default_key(argv: list[str], cwd: str) -> str:
    """The key of a command: its arguments, shell-quoted, and its working directory,
    after a NUL (which neither can contain, so no two commands share a key). The cache
    hashes it; a stored preview shows the command line first."""
    return f"{shlex.join(argv)}\0{cwd}\0{FORMAT}"


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
    cache_dir = _cache_dir(args)
    key = args.key if args.key is not None else default_key(argv, os.getcwd())
    stdin_fd: int | None = None
    digest = b""
    if args.stdin:
        stdin_fd, digest = buffer_stdin(cache_dir)
    opts = Options(
        "streamcache run",
        cache_dir,
        args.max_age,
        min_occurrences=args.min_occurrences,
        key_preview=args.key_preview,
        stderr_all=args.stderr == "all",
        verbose=args.verbose,
    )
    try:
        if args.stdin:
            key = f"{key}\0stdin:{digest.hex()}"
        return deliver(opts, key, argv, stdin_fd)
    finally:
        if stdin_fd is not None:
            os.close(stdin_fd)
