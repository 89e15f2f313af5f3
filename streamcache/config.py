"""Argument validation and defaults (:class:`streamcache.Config` is in settings.py)."""

from __future__ import annotations

import errno
import math
import os
import stat

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import datetime

    Duration = float | int | datetime.timedelta

DEFAULT_MAX_AGE = 300.0
DEFAULT_WINDOW = 4 * 2**20
DEFAULT_LIVENESS = 1.0


def seconds(value: object, name: str, *, allow_zero: bool = True) -> float:
    """A duration in seconds from a number or a timedelta; TypeError/ValueError otherwise
    (negative, NaN or infinite)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        import datetime  # here: only a timedelta needs it, and it costs start-up

        if not isinstance(value, datetime.timedelta):
            raise TypeError(
                f"{name} must be seconds (float) or a timedelta, not {type(value).__name__}"
            )
        result = value.total_seconds()
    if not math.isfinite(result) or result < 0 or (result == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite seconds {bound}, got {value!r}")
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


def directory_name(value: object) -> str:
    """The cache dir as given, checked: a non-empty text path (never a silent ".")."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"dir must be a str or os.PathLike, not {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError("dir must be a text path")
    if not path:
        raise ValueError("dir must name the cache directory; it has no default")
    return path


def absolute(value: object) -> str:
    """The cache dir as an absolute path, ``~`` expanded."""
    return os.path.abspath(os.path.expanduser(directory_name(value)))


def directory(value: object) -> str:
    """The absolute cache dir (``~`` expanded), whose parent must be a directory this
    process can reach: ValueError if it does not exist, NotADirectoryError if it or an
    ancestor is a file, PermissionError if an ancestor is not searchable. Only looks."""
    path = absolute(value)
    parent = os.path.dirname(path)
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise ValueError(f"the parent of the cache dir does not exist: {parent}") from None
    except NotADirectoryError:
        raise NotADirectoryError(
            errno.ENOTDIR, f"{_first_non_directory(parent)} is a file, not a directory", path
        ) from None
    except PermissionError:
        raise PermissionError(
            errno.EACCES,
            f"{_first_unsearchable(parent)} is not searchable by this process (uid {os.geteuid()})",
            path,
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a directory", path)
    return path


def _ancestors(path: str) -> list[str]:
    """``path``'s ancestors from the root down, ``path`` last."""
    chain = [path]
    while os.path.dirname(chain[-1]) != chain[-1]:
        chain.append(os.path.dirname(chain[-1]))
    return chain[::-1]


def _first_non_directory(path: str) -> str:
    for ancestor in _ancestors(path):
        try:
            if not stat.S_ISDIR(os.stat(ancestor).st_mode):
                return ancestor
        except OSError:
            break
    return path


def _first_unsearchable(path: str) -> str:
    for ancestor in _ancestors(path)[:-1]:
        if not os.access(ancestor, os.X_OK):
            return ancestor
    return os.path.dirname(path)
