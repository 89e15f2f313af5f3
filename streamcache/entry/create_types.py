"""The public types of ``create`` and of the writer it is given: :class:`Writer` and
:data:`Create`. Writer is a ``typing.Protocol``, so this module imports typing: the
library imports it only to type-check, and ``streamcache.Writer`` and
``streamcache.Create`` load it at their first use (typing costs a short-lived process,
the git hook at every fetch, several milliseconds of its start-up)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from .creator import BytesLike

__all__ = ["Create", "Writer"]


class Writer(Protocol):
    """The binary writer handed to ``create``, whichever way the call goes."""

    def write(self, data: BytesLike, /) -> int:
        """Append ``data`` to the entry; returns ``len(data)``. ``write(b"")`` does
        nothing. BrokenPipeError once no reader is left."""
        ...

    def set_size(self, size: int, /) -> int:
        """Announce the entry's final size (readers see it at once); ending with any
        other size fails the entry."""
        ...


Create = Callable[[Writer], Iterable[BytesLike] | None]
