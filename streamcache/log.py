"""The library's logger, ``logging.getLogger("streamcache")``, looked up at its first use.

logging (with the traceback, linecache and tokenize it imports) costs a short-lived
process a noticeable share of its start-up, and most processes never log a line. The
command line sets up its handler with :func:`when_used`, which runs at that first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import logging
    from typing import Any

__all__ = ["log", "when_used"]

_setups: list[Callable[[logging.Logger], None]] = []
_lock = threading.Lock()


def when_used(setup: Callable[[logging.Logger], None]) -> None:
    """Call ``setup(logger)`` before the library first logs (after earlier ones)."""
    with _lock:
        _setups.append(setup)


class _Logger:
    """Hands out the real logger's methods (bound, so records name their caller)."""

    def __getattr__(self, name: str) -> Any:
        import logging

        logger = logging.getLogger("streamcache")
        if _setups:
            with _lock:
                for setup in _setups:
                    setup(logger)
                _setups.clear()
        return getattr(logger, name)


if TYPE_CHECKING:
    log = logging.getLogger("streamcache")  # what type checkers see: the real logger
else:
    log = _Logger()
