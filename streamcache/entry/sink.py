"""Writing to a caller's ``dst``: any object with ``write(bytes)``, or a ``socket.socket``.

``dst.write`` may return the number of bytes it took, or None. None from an
``io.RawIOBase`` (in non-blocking mode) means "took nothing, would block"; from
anything else (Django's ``HttpResponse.write``, hand-written sinks) it means "took
everything". A ``dst`` that takes nothing never makes a call spin: it waits on the
descriptor where there is one, else sleeps with a growing back-off, and every wait
ends at the deadline (read on its clock; the back-off's pauses are real sleeps).
"""

from __future__ import annotations

import errno
import io
import math
import sys
import time

from ..deadline import Deadline, remaining, wait_limit

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import socket
    from typing import Any, TypeGuard

NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP, errno.ESPIPE}

# Back-off of a dst that takes nothing and has no descriptor to wait on: from
# _FIRST_PAUSE doubling to _LAST_PAUSE seconds between attempts.
_FIRST_PAUSE = 0.0001
_LAST_PAUSE = 0.05


def is_socket(dst: object) -> TypeGuard[socket.socket]:
    """Whether ``dst`` is a ``socket.socket``. An instance implies its module was
    imported, so a process that never made one does not pay for importing it."""
    socket = sys.modules.get("socket")
    return socket is not None and isinstance(dst, socket.socket)


def usable_fd(dst: Any) -> int | None:
    fileno = getattr(dst, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError, AttributeError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def dst_problem(dst: object) -> str | None:
    """Why ``fetch`` cannot write bytes to ``dst``, or None: it takes an object with
    ``write``, or a socket, that is not a text stream and whose ``writable()``, where it
    has one, is true. Checked at the call, so that a wrong dst fails the same way
    whichever way the call goes (a sendfile under a text layer would "succeed")."""
    if is_socket(dst):
        return None
    name = type(dst).__name__
    if not callable(getattr(dst, "write", None)):
        return f"dst must have a write(bytes) method or be a socket, not {name}"
    if isinstance(dst, io.TextIOBase):
        return f"dst is a text stream ({name}): it needs bytes; open it in binary mode ('wb')"
    writable = getattr(dst, "writable", None)
    if callable(writable):
        try:
            ok = writable()
        except (OSError, ValueError):  # closed, say: its write will say so
            return None
        if not ok:
            return f"dst is not open for writing ({name}.writable() is False)"
    return None


def _offer(dst: Any, data: bytes | memoryview) -> int:
    """Hand ``data`` to ``dst`` once; the number of bytes it took (0: none, would block)."""
    try:
        if is_socket(dst):
            return dst.send(data)
        n = dst.write(data)
    except BlockingIOError as exc:
        # A buffered writer says how much it took; a socket's or raw EAGAIN does not.
        return getattr(exc, "characters_written", 0)
    if n is None:
        return 0 if isinstance(dst, io.RawIOBase) else len(data)
    if isinstance(n, bool) or not isinstance(n, int):
        return len(data)  # not a count: it says nothing about a short write
    if n < 0:
        raise OSError(errno.EIO, f"{type(dst).__name__}.write returned {n}")
    return min(n, len(data))


def write_all(dst: Any, data: bytes, deadline: Deadline | None = None) -> None:
    """Give ``data`` to ``dst`` until every byte is taken (TimeoutError past ``deadline``).

    A raw writer may take fewer bytes; a non-blocking one may take none: then wait
    until its descriptor is writable, or, without one, back off (see the module
    docstring), never past ``deadline``.
    """
    size = len(data) if type(data) is bytes else memoryview(data).nbytes
    view = None  # made only for a dst that takes part of it (rare)
    done = 0
    stalls = 0  # attempts in a row that took nothing
    while done < size:
        if done:
            if view is None:
                view = memoryview(data).cast("B")
            n = _offer(dst, view[done:])
        else:
            n = _offer(dst, data)
        if n:
            done += n
            stalls = 0
            continue
        _wait_to_retry(dst, deadline, stalls)
        stalls += 1


def _wait_to_retry(dst: Any, deadline: Deadline | None, stalls: int) -> None:
    """Wait before offering bytes again to a ``dst`` that took none ``stalls`` + 1 times
    in a row: on its descriptor, if it has one; without one, or when the descriptor
    said writable last time and the dst still took nothing, also a back-off pause."""
    fd = usable_fd(dst)
    if fd is not None:
        wait_writable(dst, deadline)
        if stalls == 0:
            return
    pause = min(_FIRST_PAUSE * 2 ** min(stalls, 30), _LAST_PAUSE)
    left = remaining(deadline)  # TimeoutError once it passed
    # A pause, not a reading: the deadline's clock is read again after it.
    time.sleep(pause if left is None else min(left, pause))
    if deadline is not None and deadline.passed():
        raise TimeoutError("streamcache: timed out writing to dst")


def wait_writable(dst: Any, deadline: Deadline | None) -> None:
    """Block until ``dst``'s descriptor accepts bytes (TimeoutError past ``deadline``)."""
    fd = usable_fd(dst)
    if fd is None:
        raise BlockingIOError(f"{type(dst).__name__} would block and has no descriptor to wait on")
    wait_fd_writable(fd, deadline)


def wait_fd_writable(fd: int, deadline: Deadline | None) -> None:
    """Block until the descriptor ``fd`` accepts bytes (TimeoutError past ``deadline``)."""
    import select  # here: a C module to load, and most writes never wait

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while True:
        limit = wait_limit(deadline)
        if limit is not None and limit <= 0:
            raise TimeoutError("streamcache: timed out writing to dst")
        if poller.poll(None if limit is None else max(1, math.ceil(limit * 1000))):
            return
