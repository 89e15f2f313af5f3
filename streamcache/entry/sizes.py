"""``w.set_size(n)``: the final size a ``create`` announces, checked against its writes.

Every writer handed to ``create`` (the pipe's, NullCache's) keeps one. Announcing
lets readers answer with a Content-Length while the entry is still being written,
so a create that then writes more, or ends short, must fail the entry: a reader
that promised n bytes must never deliver another count as if it were complete.
"""

from __future__ import annotations


class AnnouncedSize:
    """The size announced so far (None: none), and the checks that keep it true."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size: int | None = None

    def announce(self, size: object, written: int) -> int:
        """Check ``size`` (``written`` bytes are already out) and keep it."""
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"set_size() needs an int, not {type(size).__name__}")
        if size < 0:
            raise ValueError(f"set_size({size}): a size cannot be negative")
        if self.size is not None and size != self.size:
            raise ValueError(f"set_size({size}): the size was already announced as {self.size}")
        if size < written:
            raise ValueError(f"set_size({size}): {written} bytes are written already")
        self.size = size
        return size

    def check_write(self, written: int, more: int) -> None:
        """Before writing ``more`` bytes after ``written``."""
        if self.size is not None and written + more > self.size:
            raise ValueError(
                f"write of {more} bytes at {written} goes past the announced size "
                f"of {self.size} bytes"
            )

    def check_end(self, written: int) -> None:
        """When the entry ends with ``written`` bytes."""
        if self.size is not None and written != self.size:
            raise ValueError(
                f"create announced {self.size} bytes with set_size but wrote {written}"
            )
