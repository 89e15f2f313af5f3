"""sha256 without loading OpenSSL: the interpreter's own implementation (``_sha2`` from
Python 3.12, ``_sha256`` before), which gives the same digests. ``hashlib`` loads
libcrypto at its import (5-10 ms of every process's start-up, more than a cache hit
costs), and the names, keys and requests hashed here are short, where OpenSSL's
speed does not show. ``hashlib``'s where neither module is built."""

from __future__ import annotations

import sys


def _builtin_sha256() -> object:
    try:
        return __import__("_sha2" if sys.version_info >= (3, 12) else "_sha256").sha256
    except (ImportError, AttributeError):
        pass
    import hashlib

    return hashlib.sha256


TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from hashlib import sha256
else:
    sha256 = _builtin_sha256()

__all__ = ["sha256"]
