"""Config, the settings of :func:`streamcache.new`.

A dataclass in a module of its own, imported at first use of ``streamcache.Config``:
dataclasses imports inspect, which costs a process that never makes a Config (the
command line, a cache made directly) more start-up than the rest of its import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import (
    DEFAULT_MAX_AGE,
    DEFAULT_WINDOW,
    directory_name,
    nonnegative_int,
    optional_budget,
    seconds,
)

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from .config import Duration


@dataclass
class Config:
    """Settings for :func:`streamcache.new`.

    Example::

        cfg = streamcache.Config(dir="/var/cache/app/streamcache", max_age=300)
        with streamcache.new(cfg) as cache:
            cache.fetch("report-2026", sys.stdout.buffer, make_report)
    """

    dir: str | os.PathLike[str]  # required: a cache never lands silently in the cwd
    enabled: bool = True
    max_age: Duration = DEFAULT_MAX_AGE
    min_occurrences: int = 0  # 0: concurrent first requests share one producer
    window: int = DEFAULT_WINDOW
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """TypeError/ValueError naming the first bad field. Run at construction, so a
        bad value fails where it was written, not in a later fetch; and by
        :func:`streamcache.new`, as fields may be assigned after construction."""
        directory_name(self.dir)
        if not isinstance(self.enabled, bool):
            raise TypeError(f"enabled must be a bool, not {type(self.enabled).__name__}")
        seconds(self.max_age, "max_age")
        nonnegative_int(self.min_occurrences, "min_occurrences")
        nonnegative_int(self.window, "window")
        optional_budget(self.max_bytes, "max_bytes")
