"""How every path runs ``create``: :func:`call_create` (the public types, ``Writer``
and ``Create``, are in :mod:`streamcache.entry.create_types`).

``create(w)`` writes the entry to ``w`` and returns None. It may instead return an
iterable of bytes-like chunks (a generator function ``def create(w): yield chunk``):
its items are written in order, as by ``w.write``. Any other value it returns fails
the entry (a TypeError naming the value's type, which the caller turns into the
entry's CreateError), so a generator is never taken for an empty entry. bytes, str
and the other bytes-like objects are iterable, but as a return value they are
refused too: ``return data`` is a mistake, not a list of chunks.
"""

from __future__ import annotations

import types

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .create_types import Create, Writer

__all__ = ["BytesLike", "call_create"]

BytesLike = bytes | bytearray | memoryview

# Iterable, yet refused as what create returns.
_NOT_CHUNKS = (bytes, bytearray, memoryview, str)


def call_create(create: Create, w: Writer) -> None:
    """Run ``create(w)`` and write the chunks it returns, if any. A return value that
    is neither None nor an iterable of chunks raises TypeError (after ``create``
    ran: what it wrote stays written, the entry fails)."""
    result: object = create(w)
    if result is None:
        return
    chunks = _chunks(result)
    try:
        for chunk in chunks:
            w.write(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # a generator left half-way runs its finally blocks now
            close()


def _chunks(result: object) -> Iterable[BytesLike]:
    if not isinstance(result, _NOT_CHUNKS):
        try:
            return iter(result)  # type: ignore[call-overload, no-any-return]
        except TypeError:
            pass
    hint = ""
    if isinstance(result, int):
        hint = " (the count w.write returned?)"
    elif isinstance(result, types.CoroutineType):  # inspect.iscoroutine, without inspect
        result.close()  # never run: no "coroutine was never awaited" warning
        hint = " (create runs in a thread: make it a plain def)"
    raise TypeError(
        "create must return None or an iterable of bytes-like chunks, not "
        f"{type(result).__name__}{hint}"
    )
