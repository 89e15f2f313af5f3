"""The parser of the command line (:func:`streamcache.cli.main` runs what it parsed).

What the commands share (exit statuses, the option types, the cache directory,
CliError) is in options, and each command is in its own module (run, stats, demo),
all of which import options and none of which import this one."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import config
from .options import (
    DIR_HELP,
    config_max_preview,
    duration,
    nonnegative_int,
    positive_duration,
    positive_int,
    preview_chars,
    size,
)


def version() -> str:
    """The installed distribution's version (the package's, when run from a source tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("streamcache")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


class _ShowVersion(argparse.Action):
    """``--version``: looks the version up only when asked (importlib.metadata costs
    more than a cache hit, and every command line builds the parser)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter (descriptions kept as written) at the width argparse would
    choose, found as shutil.get_terminal_size finds it: argparse imports shutil for
    that (with bz2 and lzma) at every argument added, which every command line paid."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    stdout = sys.__stdout__
    if columns <= 0 and stdout is not None:
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return argparse.RawDescriptionHelpFormatter(prog, width=(columns or 80) - 2)


def _add_dir(p: argparse.ArgumentParser) -> None:
    # Expanded here: the shell leaves the ``~`` of ``--dir=~/c`` as it is.
    p.add_argument("--dir", metavar="D", default=None, type=os.path.expanduser, help=DIR_HELP)


def add_cache_options(
    p: argparse.ArgumentParser,
    max_age: float,
    max_age_help: str,
    min_occurrences: int,
    min_occurrences_help: str,
) -> None:
    """``--max-age`` and ``--min-occurrences``, the cache options of the commands that
    fetch (run, git-pack-objects-hook), with each command's defaults and words."""
    p.add_argument(
        "--max-age", metavar="DUR", type=positive_duration, default=max_age, help=max_age_help
    )
    p.add_argument(
        "--min-occurrences",
        metavar="N",
        type=nonnegative_int,
        default=min_occurrences,
        help=min_occurrences_help,
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, one with that command alone, which imports no
    other command's module (the git hook runs at every fetch: a hit must start fast)."""
    parser = argparse.ArgumentParser(
        prog="streamcache",
        description=(
            "A cache for large byte streams shared by the processes of one host: one "
            "process produces an entry, every other one streams it while it is written."
        ),
        epilog=(
            "environment:\n"
            "  STREAMCACHE_DIR   the cache directory of run, stats, gc and invalidate when\n"
            "                    --dir is not given (before $XDG_CACHE_HOME/streamcache\n"
            "                    and ~/.cache/streamcache)\n\n"
            "Run 'streamcache COMMAND --help' for a command's options."
        ),
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action=_ShowVersion, help="show the version")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, help="one of the commands below"
    )

    if only in (None, "run"):
        from . import run as cli_run

        run = sub.add_parser(
            "run",
            help="run a command once for all concurrent identical invocations",
            description=cli_run.DESCRIPTION,
            epilog=cli_run.EPILOG,
            formatter_class=_formatter,
        )
        _add_dir(run)
        run.add_argument(
            "--key",
            metavar="K",
            help="the cache key (default: a hash of the command's arguments and the "
            "working directory)",
        )
        add_cache_options(
            run,
            cli_run.DEFAULT_MAX_AGE,
            "how long a successful run's output is served to later invocations: "
            "90, 90s, 5m, 1h (default: %(default)gs)",
            0,
            "cache a command only after it was asked N times within max-age; the "
            "earlier invocations run it on their own (default: 0, share from the first)",
        )
        run.add_argument(
            "--key-preview",
            metavar="CHARS",
            type=preview_chars,
            default=0,
            help="store the first CHARS characters of the key (the command line, by "
            f"default) for 'streamcache stats' (0 to {config_max_preview()}; default 0: "
            "none, as a command line may hold secrets)",
        )
        run.add_argument(
            "--stdin",
            action="store_true",
            help="read stdin to its end and give it to the command; it is part of the key",
        )
        run.add_argument(
            "--stderr",
            choices=("all", "first"),
            default="all",
            help="replay the command's stderr to every invocation (all, the default) or "
            "only to the one that started it (first)",
        )
        run.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="also show the cache's own warnings (an entry failed, a producer died); "
            "without it run reports failures in its own words",
        )
        run.add_argument(
            "argv",
            nargs=argparse.REMAINDER,
            metavar="-- CMD ARGS",
            help="the command and its arguments, after '--'",
        )
        run.set_defaults(func=cli_run.main, parser=run)

    if only in (None, "git-pack-objects-hook"):
        from . import hook as cli_hook

        hook = sub.add_parser(
            "git-pack-objects-hook",
            help="a pack-objects cache for git servers (uploadpack.packObjectsHook)",
            description=cli_hook.DESCRIPTION,
            formatter_class=_formatter,
        )
        _add_dir(hook)
        add_cache_options(
            hook,
            cli_hook.DEFAULT_MAX_AGE,
            "how long a pack is served to identical fetches (default: %(default)gs)",
            cli_hook.DEFAULT_MIN_OCCURRENCES,
            "share a request only after it was seen N times within max-age; the earlier "
            "ones run pack-objects on their own (default: %(default)s, as Gitaly)",
        )
        hook.add_argument(
            "--max-bytes",
            metavar="SIZE",
            type=size,
            default=None,
            help="the cache's disk budget: 500M, 2G, ... (default: none)",
        )
        hook.add_argument(
            "argv",
            nargs=argparse.REMAINDER,
            metavar="git pack-objects ARGS",
            help="the command git gives the hook",
        )
        hook.set_defaults(func=cli_hook.main, parser=hook)

    if only in (None, "stats"):
        from . import stats as cli_stats

        stats = sub.add_parser(
            "stats",
            help="show the entries of a cache: states, sizes, producers and readers",
            description=cli_stats.STATS_DESCRIPTION,
            epilog=cli_stats.STATS_EPILOG,
            formatter_class=_formatter,
        )
        _add_dir(stats)
        stats.add_argument(
            "--json", action="store_true", help="print JSON (schema below) instead of a table"
        )
        stats.add_argument(
            "--watch",
            metavar="SECONDS",
            nargs="?",
            type=positive_duration,
            const=1.0,
            default=None,
            help="refresh every SECONDS (default 1) until Ctrl-C; with --json, one JSON "
            "document per line",
        )
        stats.add_argument(
            "--stalled-after",
            metavar="SECONDS",
            type=positive_duration,
            default=cli_stats.STALLED_AFTER,
            help="show an entry in flight as stalled once its producer has written "
            f"nothing for SECONDS while a reader waits (default {cli_stats.STALLED_AFTER:g})",
        )
        stats.set_defaults(func=cli_stats.stats_main)

    if only in (None, "gc"):
        from . import stats as cli_stats

        gc = sub.add_parser(
            "gc",
            help="run one cleanup pass and say what it removed",
            description=cli_stats.GC_DESCRIPTION,
            formatter_class=_formatter,
        )
        _add_dir(gc)
        gc.add_argument(
            "--max-age",
            metavar="DUR",
            type=duration,
            default=config.DEFAULT_MAX_AGE,
            help="data files that no entry owns are removed once older than this "
            "(default: %(default)gs)",
        )
        gc.set_defaults(func=cli_stats.gc_main)

    if only in (None, "invalidate"):
        from . import stats as cli_stats

        invalidate = sub.add_parser(
            "invalidate",
            help="drop one key's entry: the next request creates it afresh",
            description=cli_stats.INVALIDATE_DESCRIPTION,
            formatter_class=_formatter,
        )
        _add_dir(invalidate)
        invalidate.add_argument(
            "key", metavar="KEY", help="the cache key, as the caches were given it"
        )
        invalidate.set_defaults(func=cli_stats.invalidate_main)

    if only in (None, "demo"):
        from . import demo as cli_demo

        demo = sub.add_parser(
            "demo",
            help="worker processes hammering shared keys in a throwaway cache",
            description=cli_demo.DESCRIPTION,
            formatter_class=_formatter,
        )
        demo.add_argument(
            "--workers",
            metavar="N",
            type=positive_int,
            default=4,
            help="worker processes (default: %(default)s)",
        )
        demo.add_argument(
            "--keys",
            metavar="N",
            type=positive_int,
            default=3,
            help="distinct keys (default: %(default)s)",
        )
        demo.add_argument(
            "--size",
            metavar="MIB",
            type=positive_int,
            default=64,
            help="MiB per key (default: %(default)s)",
        )
        demo.add_argument(
            "--rounds",
            metavar="N",
            type=positive_int,
            default=2,
            help="times each worker fetches every key (default: %(default)s)",
        )
        demo.set_defaults(func=cli_demo.main)

    return parser
