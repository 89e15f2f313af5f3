"""The library's logger, ``logging.getLogger("streamcache")``, looked up at its first use.

logging (with the traceback, linecache and tokenize it imports) costs a short-lived
process a noticeable share of its start-up, and most processes never log a line. The
command line sets up its handler with :func:`when_used`, which runs at that first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import logging

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


log = cast("logging.Logger", _Logger())
