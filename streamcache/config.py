"""Config and argument validation."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

Duration = float | int | datetime.timedelta

DEFAULT_MAX_AGE = 300.0
DEFAULT_WINDOW = 4 * 2**20
DEFAULT_LIVENESS = 1.0


def seconds(value: object, name: str, *, allow_zero: bool = True) -> float:
    """A duration in seconds from a number or a timedelta; TypeError/ValueError otherwise."""
    if isinstance(value, datetime.timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        raise TypeError(
            f"{name} must be seconds (float) or a timedelta, not {type(value).__name__}"
        )
    if result != result or result < 0 or (result == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return result


def nonnegative_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def optional_budget(value: object, name: str) -> int | None:
    if value is None:
        return None
    budget = nonnegative_int(value, name)
    if budget == 0:
        raise ValueError(f"{name} must be > 0 or None")
    return budget


def directory(value: object) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"dir must be a str or os.PathLike, not {type(value).__name__}")
    path = os.path.abspath(os.fspath(value))
    if not isinstance(path, str):
        raise TypeError("dir must be a text path")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ValueError(f"the parent of the cache dir does not exist: {parent}")
    return path


@dataclass
class Config:
    """Settings for :func:`streamcache.new`.

    Example::

        cfg = streamcache.Config(dir="/var/cache/app/streamcache", max_age=300)
        with streamcache.new(cfg) as cache:
            cache.fetch("report-2026", sys.stdout.buffer, make_report)
    """

    dir: str | os.PathLike[str] = ""
    enabled: bool = True
    max_age: Duration = DEFAULT_MAX_AGE
    min_occurrences: int = 1
    window: int = DEFAULT_WINDOW
    max_bytes: int | None = None
