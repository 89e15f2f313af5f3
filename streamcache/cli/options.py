"""What the commands share: exit statuses, the option types (durations, counts, the
cache directory) and the one-line error. The parser (cli) and every command import
it; it imports none of them."""

from __future__ import annotations

import math
import os
import signal
import sys

# Exit status of a command-line error (argparse's), and of a path that is not a cache.
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

DIR_HELP = (
    "the cache directory (default: $STREAMCACHE_DIR if set, else "
    "$XDG_CACHE_HOME/streamcache, else ~/.cache/streamcache)"
)


def _invalid(message: str) -> Exception:
    """argparse's error for a bad value (imported here: the git hook's plain command
    lines are parsed without argparse, see :func:`streamcache.cli.hook.quick`)."""
    import argparse

    return argparse.ArgumentTypeError(message)


# Patterns compiled at their first use (re caches them): the git hook's command line
# seldom has a duration or a size, and importing re and compiling cost its start-up.
_DURATION = r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?"
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``1.5m``, ``5m``, ``1h``, ``1d`` or ``250ms``."""
    import re

    match = re.fullmatch(_DURATION, text.strip())
    if match is None:
        raise _invalid(
            f"invalid duration {text!r}: use seconds (90), or a number with a unit: "
            "90s, 5m, 1h, 1d, 250ms"
        )
    value = float(match.group(1)) * _UNIT[match.group(2)]
    if not math.isfinite(value):
        raise _invalid(f"invalid duration {text!r}: too large")
    return value


def positive_duration(text: str) -> float:
    value = duration(text)
    if value <= 0:
        raise _invalid(f"invalid duration {text!r}: must be more than 0")
    return value


def _whole_number(text: str, least: int, says: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _invalid(f"invalid number {text!r}: a whole number") from None
    if value < least:
        raise _invalid(f"must be {says}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def nonnegative_int(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


def preview_chars(text: str) -> int:
    value = nonnegative_int(text)
    if value > config_max_preview():
        raise _invalid(f"must be at most {config_max_preview()}, got {value}")
    return value


_SIZE = r"(?i)(\d+)\s*([kmgt]?)i?b?"


def size(text: str) -> int:
    """Bytes from ``1000``, ``500K``, ``500M``, ``2G``, ``1T`` (powers of 1024)."""
    import re

    match = re.fullmatch(_SIZE, text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise _invalid(f"invalid size {text!r}: a number of bytes, or with a unit: 500K, 500M, 2G")
    unit: str = match.group(2).lower() or " "
    scale: int = 1024 ** " kmgt".index(unit)
    return int(match.group(1)) * scale


def default_dir() -> str:
    """$STREAMCACHE_DIR, else $XDG_CACHE_HOME/streamcache, else ~/.cache/streamcache.

    An empty or relative $XDG_CACHE_HOME is ignored, as the XDG spec says."""
    env = os.environ.get("STREAMCACHE_DIR")
    if env:
        return os.path.expanduser(env)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "streamcache")


class CliError(Exception):
    """A failure the command reports in one line and ends with ``status``."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def os_error_text(exc: BaseException) -> str:
    """An error in one line, without OSError's ``[Errno N]``."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def quiet_stdout() -> None:
    """Point stdout at /dev/null (its reader went away)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def config_max_preview() -> int:
    from ..disk.filestore import MAX_KEY_PREVIEW

    return MAX_KEY_PREVIEW
