"""HTTP rules shared by :mod:`streamcache.wsgi` and :mod:`streamcache.asgi`; no I/O.

Range requests follow RFC 9110 section 14: one range (``bytes=a-b``, ``a-``, ``-n``)
is answered 206 once the entry's size is known, a range that starts at or past the
end 416 with ``Content-Range: bytes */size``; several ranges, an unknown size, an
empty entry, a malformed header or an ``If-Range`` that does not match the strong
ETag given in ``headers`` get the whole body (200), as the RFC allows. A response
carries Content-Length whenever the size is known when it starts; the servers frame
everything else (chunked on HTTP/1.1). The helpers never set hop-by-hop fields.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ipc.tuples import NamedTuple

from ..deadline import check_idle, check_timeout
from ..errors import CreateError

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

BLOCK = 1 << 18  # bytes per body chunk, and the block size handed to wsgi.file_wrapper

OK = "200 OK"
PARTIAL = "206 Partial Content"
UNSATISFIABLE = "416 Range Not Satisfiable"
BAD_GATEWAY = "502 Bad Gateway"
GATEWAY_TIMEOUT = "504 Gateway Timeout"

Headers = list[tuple[str, str]]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")
_RANGE = re.compile(r"\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*(.*?)\s*\Z", re.DOTALL)
_SPEC = re.compile(r"([0-9]*)-([0-9]*)\Z")

# Fields the helpers decide themselves, and hop-by-hop fields (PEP 3333 forbids them
# to applications; RFC 9110 section 7.6.1).
_RESERVED = frozenset(
    {
        "content-length",
        "content-range",
        "content-type",
        "accept-ranges",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)


@dataclass(frozen=True)
class RangeSpec:
    """One syntactically valid byte range: ``first-last``, ``first-`` or ``-suffix``."""

    first: int | None  # None for a suffix range
    last: int | None  # inclusive; None for "to the end" (or for a suffix range)
    suffix: int | None = None  # the n of ``-n``


class ByteRange(NamedTuple):
    """A satisfiable range resolved against a size: bytes ``start`` to ``stop - 1``."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


class Unsatisfiable(NamedTuple):
    """A range that starts at or past the end of an entry of ``size`` bytes (416)."""

    size: int


def parse_range(value: str | None) -> RangeSpec | None:
    """The single byte range asked for by a ``Range`` field value, or None: absent,
    malformed, another unit, or several ranges (all of which get the whole body)."""
    if value is None:
        return None
    m = _RANGE.match(value)
    if m is None or m.group(1).lower() != "bytes":
        return None
    specs = [part.strip() for part in m.group(2).split(",")]
    specs = [part for part in specs if part]  # RFC 9110 5.6.1: empty list elements
    if len(specs) != 1:
        return None
    sm = _SPEC.match(specs[0])
    if sm is None:
        return None
    first, last = sm.group(1), sm.group(2)
    if first:
        lo = _number(first)
        hi = _number(last) if last else None
        if hi is not None and hi < lo:
            return None  # invalid: the whole field is ignored
        return RangeSpec(lo, hi)
    if last:
        return RangeSpec(None, None, _number(last))
    return None  # "bytes=-"


def _number(digits: str) -> int:
    """A decimal position; absurdly long ones saturate (int() of thousands of digits
    is refused by Python, and no entry is that large anyway)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 20 else 10**20


def resolve(spec: RangeSpec, size: int) -> ByteRange | Unsatisfiable | None:
    """``spec`` against an entry of ``size`` bytes: the bytes to send (206), Unsatisfiable
    (416), or None for the whole body (an empty entry: a range of nothing cannot be
    written as Content-Range, so it is ignored, as Go's ServeContent does)."""
    if size == 0:
        return None
    if spec.suffix is not None:
        if spec.suffix == 0:
            return Unsatisfiable(size)
        return ByteRange(max(size - spec.suffix, 0), size)
    assert spec.first is not None
    if spec.first >= size:
        return Unsatisfiable(size)
    stop = size if spec.last is None else min(spec.last + 1, size)
    return ByteRange(spec.first, stop)


def wanted_range(
    method: str, range_value: str | None, if_range: str | None, extra: Headers
) -> RangeSpec | None:
    """The range to honour for a request: only GET has range semantics (RFC 9110 14.2);
    an If-Range is honoured only when it equals the strong ETag among ``extra``."""
    if method != "GET":
        return None
    spec = parse_range(range_value)
    if spec is not None and if_range is not None:
        etag = next((v for k, v in extra if k.lower() == "etag"), None)
        if etag is None or etag.startswith("W/") or etag.strip() != if_range.strip():
            return None
    return spec


def is_http10(protocol: object) -> bool:
    """True for HTTP/1.0 and older, and for anything unrecognised (the safe side: such a
    client cannot be given a chunked body). ``protocol``: WSGI's SERVER_PROTOCOL
    (``"HTTP/1.1"``) or ASGI's http_version (``"1.1"``)."""
    if not isinstance(protocol, str):
        return True
    m = re.fullmatch(r"(?:HTTP/)?([0-9]+)(?:\.([0-9]+))?", protocol.strip(), re.IGNORECASE)
    if m is None:
        return True
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    return (major, minor) < (1, 1)


class Waits(NamedTuple):
    """A serve() call's ``timeout``, ``idle_timeout`` and ``resume``, for each stream
    it opens."""

    timeout: float | None
    idle_timeout: float | None = None
    resume: bool = False

    def kw(self, start: int) -> dict[str, Any]:
        """The stream's keyword arguments (``idle_timeout`` and ``resume`` only when
        set)."""
        kw: dict[str, Any] = {"start": start}
        if self.idle_timeout is not None:
            kw["idle_timeout"] = self.idle_timeout
        if self.resume:
            kw["resume"] = True
        return kw


def check_arguments(
    key: object,
    create: object,
    content_type: object,
    headers: object,
    timeout: object,
    idle_timeout: object = None,
) -> Headers:
    """Validate what serve() got (TypeError/ValueError naming the argument); returns
    the extra headers as a list of (name, value) pairs."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}")
    if not callable(create):
        raise TypeError(f"create must be callable, not {type(create).__name__}")
    if not isinstance(content_type, str):
        raise TypeError(f"content_type must be a str, not {type(content_type).__name__}")
    if not content_type or not _FIELD_VALUE.match(content_type):
        raise ValueError(f"content_type is not a valid header value: {content_type!r}")
    check_timeout(timeout)
    check_idle(idle_timeout)
    if isinstance(headers, (str, bytes)) or not isinstance(headers, Iterable):
        raise TypeError(f"headers must be an iterable of (name, value) pairs, not {headers!r}")
    extra: Headers = []
    for item in headers:
        if (
            not isinstance(item, (tuple, list))
            or len(item) != 2
            or not all(isinstance(x, str) for x in item)
        ):
            raise TypeError(f"headers: each item must be a (str, str) pair, not {item!r}")
        name, value = item
        if not _TOKEN.match(name):
            raise ValueError(f"headers: invalid header name {name!r}")
        if not _FIELD_VALUE.match(value):
            raise ValueError(f"headers: invalid value for {name}: {value!r}")
        if name.lower() in _RESERVED:
            raise ValueError(
                f"headers: {name} is set by the helper (or hop-by-hop) and cannot be given"
            )
        extra.append((name, value))
    return extra


def success_headers(
    content_type: str, extra: Headers, size: int | None, part: ByteRange | None = None
) -> tuple[str, Headers]:
    """Status and headers of a 200 (``part`` None) or 206 response. ``size`` None: the
    length is unknown (no Content-Length; the server frames the body)."""
    headers: Headers = [("Content-Type", content_type)]
    if part is not None:
        assert size is not None
        headers.append(("Content-Length", str(part.length)))
        headers.append(("Content-Range", f"bytes {part.start}-{part.stop - 1}/{size}"))
    elif size is not None:
        headers.append(("Content-Length", str(size)))
    if size is not None:
        headers.append(("Accept-Ranges", "bytes"))
    headers.extend(extra)
    return (PARTIAL if part is not None else OK), headers


def unsatisfiable_headers(size: int, extra: Headers) -> tuple[str, Headers]:
    """416 with ``Content-Range: bytes */size`` and an empty body."""
    headers: Headers = [
        ("Content-Range", f"bytes */{size}"),
        ("Content-Length", "0"),
        ("Accept-Ranges", "bytes"),
    ]
    headers.extend(extra)
    return UNSATISFIABLE, headers


def is_timeout(exc: BaseException) -> bool:
    """A timeout of this call or of the producer (a CreateError carries the producer's
    exception as its cause in-process, and as ``TimeoutError: ...`` in its text)."""
    if isinstance(exc, TimeoutError) or isinstance(exc.__cause__, TimeoutError):
        return True
    return isinstance(exc, CreateError) and str(exc).startswith("TimeoutError")


def error_response(exc: BaseException) -> tuple[str, Headers, bytes]:
    """502 (504 for a timeout) with a short text body, for a failure before the first
    byte. The body names no internals: the cause goes to the log."""
    if is_timeout(exc):
        status, body = GATEWAY_TIMEOUT, b"streamcache: timed out waiting for the producer\n"
    else:
        status, body = BAD_GATEWAY, b"streamcache: the producer failed\n"
    headers: Headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    return status, headers, body


def log_level(exc: BaseException | None) -> int:
    """The level of the helper's one line about a response cut or refused because of
    ``exc``. A producer's failure (CreateError) is already logged once per entry, at
    WARNING, by the core (the producer's process, or the reader that clears a dead
    producer's entry), so each response it cuts adds an INFO line only. Anything else
    (this request's timeout, a read error) is logged nowhere else: WARNING."""
    return logging.INFO if isinstance(exc, CreateError) else logging.WARNING


def one_line(exc: BaseException) -> str:
    """An exception as one log line (no traceback, no newlines)."""
    text = str(exc) if isinstance(exc, CreateError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """ASGI: the field value of ``name`` (lower case), repeated fields joined by commas
    (RFC 9110 5.3); None when absent."""
    values = [v.decode("latin-1") for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None
