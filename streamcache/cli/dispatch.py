"""The command line's entry point, :func:`streamcache.cli.main`: parses a command line
and runs its command, reporting a failure in one line.

The git hook runs at every fetch, so its plain command lines (what upload-pack gives
it) skip the parser: building it and parsing with argparse costs more than a cache hit
(compiled patterns, translation look-ups). Any other command line goes through
:mod:`streamcache.cli.parser`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from ..log import when_used
from .options import EXIT_BROKEN_PIPE, EXIT_USAGE, CliError, os_error_text, quiet_stdout

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import logging

HOOK = "git-pack-objects-hook"


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == [HOOK]:
        from .hook import quick, serve

        request = quick(words[1:])
        if request is not None:
            return _run(HOOK, lambda: serve(request))
    from .parser import build_parser

    args = build_parser(HOOK if words[:1] == [HOOK] else None).parse_args(words)
    return _run(args.command, lambda: args.func(args))


def _run(command: str, call: Callable[[], int]) -> int:
    """``call``'s exit status, or the status of the failure it reported."""
    when_used(_log_to_stderr)
    try:
        return call()
    except BrokenPipeError:
        # Our stdout's reader went away (``| head``): end quietly, as a command killed
        # by SIGPIPE does, with nothing left to fail when Python flushes it at exit.
        quiet_stdout()
        return EXIT_BROKEN_PIPE
    except CliError as exc:
        print(f"streamcache {command}: {exc}", file=sys.stderr)
        return exc.status
    except OSError as exc:  # a cache this process cannot use (read-only, say)
        print(f"streamcache {command}: error: {os_error_text(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError) as exc:
        print(f"streamcache {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _log_to_stderr(logger: logging.Logger) -> None:
    """The library logs through ``logging.getLogger("streamcache")``; the command line
    shows its warnings as they are, one line each (set up when the library first logs,
    so that a command that logs nothing does not import logging)."""
    import logging

    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING)
