"""The I/O-free HTTP rules of streamcache.serving.http: Range (RFC 9110), statuses, headers."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamcache
from streamcache.serving import http
from streamcache.serving.http import ByteRange, RangeSpec, Unsatisfiable


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("bytes=0-499", RangeSpec(0, 499)),
        ("bytes=500-", RangeSpec(500, None)),
        ("bytes=-500", RangeSpec(None, None, 500)),
        ("BYTES=1-2", RangeSpec(1, 2)),  # the unit is case-insensitive
        ("bytes=5-5", RangeSpec(5, 5)),
        ("bytes= 3-4 ", RangeSpec(3, 4)),
        ("bytes=3-4,", RangeSpec(3, 4)),  # empty list elements do not count
        ("bytes=007-0009", RangeSpec(7, 9)),
        ("bytes=-0", RangeSpec(None, None, 0)),
    ],
)
def test_one_range_parses(value: str, spec: RangeSpec) -> None:
    assert http.parse_range(value) == spec


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=5-4",  # last < first: invalid, the field is ignored
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=0-1,5-6",  # several ranges: whole body
        "bytes=0-1, -5",
        "items=0-1",  # another unit
        "bytes=\u0661-\u0662",  # non-ASCII digits are not digits here
        "bytes=+1-2",
        "0-1",
    ],
)
def test_anything_else_means_the_whole_body(value: str | None) -> None:
    assert http.parse_range(value) is None


def test_a_huge_position_saturates_instead_of_raising() -> None:
    spec = http.parse_range("bytes=" + "9" * 10000 + "-")
    assert spec is not None and http.resolve(spec, 100) == Unsatisfiable(100)
    spec = http.parse_range("bytes=10-" + "9" * 10000)
    assert spec is not None and http.resolve(spec, 100) == ByteRange(10, 100)


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-499", 1000, ByteRange(0, 500)),
        ("bytes=0-0", 1000, ByteRange(0, 1)),
        ("bytes=999-", 1000, ByteRange(999, 1000)),
        ("bytes=500-5000", 1000, ByteRange(500, 1000)),  # last clamped to the end
        ("bytes=-1", 1000, ByteRange(999, 1000)),
        ("bytes=-5000", 1000, ByteRange(0, 1000)),  # longer suffix: everything
        ("bytes=1000-", 1000, Unsatisfiable(1000)),  # starts at the end
        ("bytes=1000-2000", 1000, Unsatisfiable(1000)),
        ("bytes=-0", 1000, Unsatisfiable(1000)),  # a zero-length suffix
        ("bytes=0-0", 0, None),  # an empty entry: the range is ignored (200)
        ("bytes=-5", 0, None),
    ],
)
def test_resolve(value: str, size: int, expected: object) -> None:
    spec = http.parse_range(value)
    assert spec is not None
    assert http.resolve(spec, size) == expected


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10**6))
def test_parse_and_resolve_never_raise_and_stay_inside(value: str, size: int) -> None:
    spec = http.parse_range("bytes=" + value)
    if spec is None:
        return
    r = http.resolve(spec, size)
    if isinstance(r, ByteRange):
        assert 0 <= r.start < r.stop <= size


@given(
    st.integers(min_value=0, max_value=2000),
    st.integers(min_value=0, max_value=2000),
    st.integers(min_value=1, max_value=2000),
)
def test_int_ranges_against_a_model(first: int, last: int, size: int) -> None:
    spec = http.parse_range(f"bytes={first}-{last}")
    if last < first:
        assert spec is None
        return
    assert spec is not None
    want = bytes(range(256)) * 8
    body = want[:size]
    r = http.resolve(spec, size)
    if first >= size:
        assert r == Unsatisfiable(size)
    else:
        assert isinstance(r, ByteRange)
        assert body[r.start : r.stop] == body[first : last + 1]


def test_only_get_has_ranges() -> None:
    assert http.wanted_range("GET", "bytes=0-1", None, []) == RangeSpec(0, 1)
    assert http.wanted_range("HEAD", "bytes=0-1", None, []) is None
    assert http.wanted_range("POST", "bytes=0-1", None, []) is None
    assert http.wanted_range("get", "bytes=0-1", None, []) is None  # methods are case-sensitive


def test_if_range_is_honoured_only_for_the_same_strong_etag() -> None:
    strong = [("ETag", '"v1"')]
    assert http.wanted_range("GET", "bytes=0-1", '"v1"', strong) == RangeSpec(0, 1)
    assert http.wanted_range("GET", "bytes=0-1", '"v2"', strong) is None
    assert http.wanted_range("GET", "bytes=0-1", '"v1"', []) is None  # nothing to compare with
    assert http.wanted_range("GET", "bytes=0-1", 'W/"v1"', [("ETag", 'W/"v1"')]) is None
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert http.wanted_range("GET", "bytes=0-1", date, strong) is None


@pytest.mark.parametrize(
    ("protocol", "old"),
    [
        ("HTTP/1.0", True),
        ("HTTP/0.9", True),
        ("HTTP/1.1", False),
        ("HTTP/2", False),
        ("HTTP/2.0", False),
        ("1.0", True),
        ("1.1", False),
        ("2", False),
        ("3", False),
        ("", True),  # unknown: the safe side
        (None, True),
        ("garbage", True),
    ],
)
def test_http10_detection(protocol: str | None, old: bool) -> None:
    assert http.is_http10(protocol) is old


def test_success_headers() -> None:
    status, headers = http.success_headers("text/x", [("X-A", "1")], 10)
    assert status == "200 OK"
    assert headers == [
        ("Content-Type", "text/x"),
        ("Content-Length", "10"),
        ("Accept-Ranges", "bytes"),
        ("X-A", "1"),
    ]
    status, headers = http.success_headers("text/x", [], None)
    assert status == "200 OK"
    assert headers == [("Content-Type", "text/x")]  # no length, no ranges: unknown size
    status, headers = http.success_headers("text/x", [], 10, ByteRange(2, 5))
    assert status == "206 Partial Content"
    assert dict(headers) == {
        "Content-Type": "text/x",
        "Content-Length": "3",
        "Content-Range": "bytes 2-4/10",
        "Accept-Ranges": "bytes",
    }


def test_unsatisfiable_headers() -> None:
    status, headers = http.unsatisfiable_headers(10, [])
    assert status == "416 Range Not Satisfiable"
    assert dict(headers)["Content-Range"] == "bytes */10"
    assert dict(headers)["Content-Length"] == "0"


def test_error_statuses() -> None:
    status, headers, body = http.error_response(streamcache.CreateError("ValueError: boom"))
    assert status == "502 Bad Gateway"
    assert dict(headers)["Content-Length"] == str(len(body))
    assert dict(headers)["Content-Type"].startswith("text/plain")
    assert b"boom" not in body  # the cause goes to the log, not to the client
    assert http.error_response(streamcache.ProducerDied("gone"))[0] == "502 Bad Gateway"
    assert http.error_response(TimeoutError("t"))[0] == "504 Gateway Timeout"
    # a producer's own timeout, seen in another process (text only) and in its own
    remote = streamcache.CreateError("TimeoutError: upstream too slow")
    assert http.error_response(remote)[0] == "504 Gateway Timeout"
    local = streamcache.CreateError("x")
    local.__cause__ = TimeoutError("t")
    assert http.error_response(local)[0] == "504 Gateway Timeout"


def test_log_levels() -> None:
    # a producer's failure is the core's WARNING line; the helper adds an INFO line
    assert http.log_level(streamcache.CreateError("x")) == logging.INFO
    assert http.log_level(streamcache.ProducerDied("x")) == logging.INFO
    assert http.log_level(TimeoutError("mine")) == logging.WARNING
    assert http.log_level(None) == logging.WARNING


def test_one_line() -> None:
    assert http.one_line(streamcache.CreateError("ValueError: a\nb")) == "ValueError: a b"
    assert http.one_line(TimeoutError("slow")) == "TimeoutError: slow"


def _ok(key: object = "k", create: object = print, content_type: object = "a/b") -> None:
    http.check_arguments(key, create, content_type, (), None)


def test_argument_checks() -> None:
    _ok()
    with pytest.raises(TypeError, match="key"):
        _ok(key=b"k")
    with pytest.raises(TypeError, match="create"):
        _ok(create="nope")
    with pytest.raises(TypeError, match="content_type"):
        _ok(content_type=None)
    with pytest.raises(ValueError, match="content_type"):
        _ok(content_type="a/b\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="content_type"):
        _ok(content_type="")
    with pytest.raises(ValueError, match="timeout"):
        http.check_arguments("k", print, "a/b", (), -1)
    with pytest.raises(TypeError, match="headers"):
        http.check_arguments("k", print, "a/b", "X-A: 1", None)
    with pytest.raises(TypeError, match="headers"):
        http.check_arguments("k", print, "a/b", [("X-A",)], None)
    with pytest.raises(TypeError, match="headers"):
        http.check_arguments("k", print, "a/b", [(b"X-A", b"1")], None)
    with pytest.raises(ValueError, match="name"):
        http.check_arguments("k", print, "a/b", [("X A", "1")], None)
    with pytest.raises(ValueError, match="X-A"):
        http.check_arguments("k", print, "a/b", [("X-A", "1\r\nSet-Cookie: x")], None)
    for reserved in ("Content-Length", "transfer-encoding", "Connection", "Content-Range"):
        with pytest.raises(ValueError, match=reserved):
            http.check_arguments("k", print, "a/b", [(reserved, "1")], None)
    extra = http.check_arguments("k", print, "a/b", iter([("ETag", '"1"'), ["X-B", "2"]]), None)
    assert extra == [("ETag", '"1"'), ("X-B", "2")]


def test_asgi_header_value() -> None:
    headers = [(b"range", b"bytes=0-1"), (b"x", b"y"), (b"Range", b"bytes=4-5")]
    assert http.header_value(headers, b"range") == "bytes=0-1, bytes=4-5"
    assert http.header_value(headers, b"if-range") is None
