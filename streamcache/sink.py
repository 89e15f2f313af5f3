"""Writing to a caller's ``dst``: any object with ``write(bytes)``, blocking or not."""

from __future__ import annotations

import errno
import select
from typing import Any

from .deadline import remaining

NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP, errno.ESPIPE}


def usable_fd(dst: Any) -> int | None:
    fileno = getattr(dst, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError, AttributeError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def write_all(dst: Any, data: bytes, deadline: float | None = None) -> None:
    """``dst.write`` until every byte is taken.

    A raw writer may take fewer bytes; a non-blocking one may take none (returning
    None, or raising BlockingIOError): then wait until its descriptor is writable.
    """
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            n = dst.write(view[done:] if done else data)
        except BlockingIOError as exc:
            n = exc.characters_written
            if not n:
                wait_writable(dst, deadline)
                continue
        if n is None:
            wait_writable(dst, deadline)
            continue
        done += n


def wait_writable(dst: Any, deadline: float | None) -> None:
    """Block until ``dst``'s descriptor accepts bytes (TimeoutError past ``deadline``)."""
    fd = usable_fd(dst)
    if fd is None:
        raise BlockingIOError(f"{type(dst).__name__} would block and has no descriptor to wait on")
    left = remaining(deadline)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not poller.poll(None if left is None else left * 1000):
        raise TimeoutError("streamcache: timed out writing to dst")
