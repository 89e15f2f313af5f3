"""streamcache.wsgi.serve through a plain WSGI harness: every status and header rule of
docs/design.md's "Serving over HTTP", on a real StreamCache, with producers held on events
mid-write."""

from __future__ import annotations

import errno
import io
import logging
import os
import tempfile
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import writing
from http_harness import (
    WAIT,
    Producer,
    WsgiCall,
    check_one_warning,
    environ,
    recording_file_wrapper,
    wsgi,
)

import streamcache
from streamcache.wsgi import ResponseAborted, serve

KEY = "blob"
DATA = os.urandom(700_000)  # several body chunks


@pytest.fixture
def cache(cache_dir: Path) -> Iterator[streamcache.StreamCache]:
    c = streamcache.StreamCache(cache_dir, cleanup_interval=0, window=64 * 1024)
    yield c
    Producer.release_all()
    assert c.wait_producers(WAIT)
    c.stop()


def app_for(cache: Any, create: Any, key: str = KEY, **kw: Any) -> Any:
    def app(env: dict[str, Any], start_response: Any) -> Any:
        return serve(cache, key, create, env, start_response, **kw)

    return app


def finished(cache: Any, data: bytes = DATA, key: str = KEY) -> None:
    cache.fetch(key, io.BytesIO(), writing(data))
    info = cache.peek(key)
    assert info is not None and info.finished and info.size == len(data)


def unused() -> Producer:
    """A create that must not run."""
    return Producer([b"never"])


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


# -- 200 and Content-Length --------------------------------------------------------------


def test_a_finished_entry_goes_out_zero_copy_with_its_length(cache: Any) -> None:
    finished(cache)
    fw = recording_file_wrapper()
    create = unused()
    call = wsgi(app_for(cache, create), environ(**{"wsgi.file_wrapper": fw}))
    assert call.status == "200 OK"
    assert call.header("Content-Length") == str(len(DATA))
    assert call.header("Accept-Ranges") == "bytes"
    assert call.header("Content-Type") == "application/octet-stream"
    assert call.header("Transfer-Encoding") is None
    assert isinstance(call.result, fw), "the finished entry did not go to wsgi.file_wrapper"
    [(filelike, blksize)] = fw.given
    assert isinstance(filelike.fileno(), int) and blksize > 0
    assert call.body == DATA and call.error is None
    assert create.calls == 0


def test_without_a_file_wrapper_a_finished_entry_goes_in_chunks(cache: Any) -> None:
    finished(cache)
    call = wsgi(app_for(cache, unused()), environ())
    assert call.header("Content-Length") == str(len(DATA))
    assert not isinstance(call.result, list) and call.body == DATA


def test_uwsgi_gets_no_descriptor(cache: Any) -> None:
    """uWSGI's file_wrapper sends a descriptor's whole file from offset 0."""
    finished(cache)
    fw = recording_file_wrapper()
    env = environ(**{"wsgi.file_wrapper": fw, "uwsgi.version": b"2.0.31"})
    call = wsgi(app_for(cache, unused()), env)
    assert fw.given == [] and call.body == DATA
    assert call.header("Content-Length") == str(len(DATA))


def test_a_size_announced_mid_write_gives_a_length(cache: Any) -> None:
    half = len(DATA) // 2
    create = Producer([DATA[:half], DATA[half:]], size=len(DATA))
    create.release(1)
    call = WsgiCall(app_for(cache, create), environ())
    assert not create.wrote[1].is_set(), "the response should start mid-write"
    assert call.status == "200 OK"
    assert call.header("Content-Length") == str(len(DATA))
    assert call.header("Accept-Ranges") == "bytes"
    create.release()
    assert call.rest() == DATA and call.error is None


def test_an_unknown_size_mid_write_is_left_to_the_server_to_chunk(cache: Any) -> None:
    create = Producer([DATA[:1000], DATA[1000:]])
    create.release(1)
    call = WsgiCall(app_for(cache, create), environ())
    assert not create.wrote[1].is_set()
    assert call.status == "200 OK"
    assert call.header("Content-Length") is None
    assert call.header("Transfer-Encoding") is None  # hop-by-hop: the server's to set
    assert call.header("Accept-Ranges") is None
    create.release()
    assert call.rest() == DATA and call.error is None


def test_an_empty_entry(cache: Any) -> None:
    finished(cache, b"")
    call = wsgi(app_for(cache, unused()), environ(headers={"Range": "bytes=0-0"}))
    assert call.status == "200 OK" and call.header("Content-Length") == "0"
    assert call.body == b""


# -- HTTP/1.0 -----------------------------------------------------------------------------


def test_http10_and_an_unknown_size_waits_for_the_end_and_gets_a_length(cache: Any) -> None:
    """The window is 64 KiB: had the waiting reader held the producer back, the
    entry (1 MiB) would never finish and the request would hang."""
    parts = [os.urandom(64 * 1024) for _ in range(16)]
    create = Producer(parts)
    create.release(1)
    t, out = in_thread(lambda: WsgiCall(app_for(cache, create), environ(protocol="HTTP/1.0")))
    assert create.wrote[0].wait(WAIT)
    assert t.is_alive(), "answered HTTP/1.0 before the size was known"
    create.release()
    t.join(WAIT)
    assert not t.is_alive()
    call: WsgiCall = out[0]
    assert call.status == "200 OK"
    assert call.header("Content-Length") == str(len(create.data))
    assert call.rest() == create.data and call.error is None
    assert create.calls == 1


def test_http10_waits_without_a_copy_of_a_stored_entry(
    cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry is stored: the waiting reader keeps its place while another reader
    drains the entry; nothing is spooled."""

    def no_spool(*a: Any, **kw: Any) -> Any:
        raise AssertionError("spooled an entry the cache keeps")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_spool)
    create = Producer([DATA[:1000], DATA[1000:]])
    create.release(1)
    t, out = in_thread(lambda: wsgi(app_for(cache, create), environ(protocol="HTTP/1.0")))
    assert create.wrote[0].wait(WAIT)
    create.release()
    t.join(WAIT)
    call: WsgiCall = out[0]
    assert call.header("Content-Length") == str(len(DATA)) and call.body == DATA


def test_under_uwsgi_an_unknown_size_waits_for_the_end(cache: Any) -> None:
    """uWSGI's http-socket never chunks: without a length a cut body looks complete."""
    create = Producer([DATA[:1000], DATA[1000:]])
    create.release(1)
    env = environ(**{"uwsgi.version": b"2.0.31"})
    t, out = in_thread(lambda: WsgiCall(app_for(cache, create), env))
    assert create.wrote[0].wait(WAIT)
    assert t.is_alive(), "answered before the size was known"
    create.release()
    t.join(WAIT)
    call: WsgiCall = out[0]
    assert call.header("Content-Length") == str(len(DATA)) and call.rest() == DATA


def test_http10_on_a_cache_that_keeps_nothing_gets_a_length(cache_dir: Path) -> None:
    create = Producer([DATA[:1000], DATA[1000:]], free=True)
    call = wsgi(app_for(streamcache.NullCache(), create), environ(protocol="HTTP/1.0"))
    assert call.header("Content-Length") == str(len(DATA))
    assert call.body == DATA and create.calls == 1


def test_http10_and_a_producer_failing_late_gets_502(cache: Any) -> None:
    create = Producer([DATA[:1000], DATA[1000:]], fail=ValueError("late"), free=True)
    call = wsgi(app_for(cache, create), environ(protocol="HTTP/1.0"))
    assert call.status == "502 Bad Gateway"


def test_http10_with_a_range_once_the_size_is_known(cache: Any) -> None:
    create = Producer([DATA[:1000], DATA[1000:]], free=True)
    env = environ(protocol="HTTP/1.0", headers={"Range": "bytes=-10"})
    call = wsgi(app_for(cache, create), env)
    assert call.status == "206 Partial Content"
    assert call.header("Content-Range") == f"bytes {len(DATA) - 10}-{len(DATA) - 1}/{len(DATA)}"
    assert call.body == DATA[-10:]


# -- Range --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "start", "stop"),
    [
        ("bytes=1000-1999", 1000, 2000),
        ("bytes=0-0", 0, 1),
        ("bytes=690000-", 690000, len(DATA)),
        ("bytes=-5", len(DATA) - 5, len(DATA)),
        ("bytes=500000-99999999", 500000, len(DATA)),
    ],
)
def test_a_range_of_a_finished_entry(cache: Any, value: str, start: int, stop: int) -> None:
    finished(cache)
    fw = recording_file_wrapper()
    env = environ(headers={"Range": value}, **{"wsgi.file_wrapper": fw})
    call = wsgi(app_for(cache, unused()), env)
    assert call.status == "206 Partial Content"
    assert call.header("Content-Range") == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert call.header("Content-Length") == str(stop - start)
    assert call.header("Accept-Ranges") == "bytes"
    assert isinstance(call.result, fw), "a range of a finished entry goes out zero-copy"
    assert call.body == DATA[start:stop]


def test_a_range_past_the_end_is_416_and_creates_nothing(cache: Any) -> None:
    finished(cache)
    create = unused()
    call = wsgi(app_for(cache, create), environ(headers={"Range": f"bytes={len(DATA)}-"}))
    assert call.status == "416 Range Not Satisfiable"
    assert call.header("Content-Range") == f"bytes */{len(DATA)}"
    assert call.body == b"" and create.calls == 0


def test_a_range_past_an_announced_size_of_a_new_entry_is_416(cache: Any) -> None:
    create = Producer([b"x" * 10], size=10, free=True)
    call = wsgi(app_for(cache, create), environ(headers={"Range": "bytes=50-"}))
    assert call.status == "416 Range Not Satisfiable"
    assert call.header("Content-Range") == "bytes */10"


@pytest.mark.parametrize("value", ["bytes=0-1,5-6", "bytes=5-1", "pages=1-2", "bytes=x"])
def test_several_or_malformed_ranges_get_the_whole_body(cache: Any, value: str) -> None:
    finished(cache)
    call = wsgi(app_for(cache, unused()), environ(headers={"Range": value}))
    assert call.status == "200 OK" and call.body == DATA
    assert call.header("Content-Range") is None


def test_a_range_while_the_size_is_unknown_gets_the_whole_body(cache: Any) -> None:
    create = Producer([DATA[:1000], DATA[1000:]])
    create.release(1)
    call = WsgiCall(app_for(cache, create), environ(headers={"Range": "bytes=10-19"}))
    assert call.status == "200 OK" and call.header("Content-Range") is None
    create.release()
    assert call.rest() == DATA


def test_a_range_mid_write_of_an_entry_being_read(cache: Any) -> None:
    """The entry is in flight (another client reads it) with its size announced: the
    range is answered at once, starting the stream at the range (start=)."""
    half = len(DATA) // 2
    create = Producer([DATA[:half], DATA[half:]], size=len(DATA))
    create.release(1)
    first = WsgiCall(app_for(cache, create), environ())
    assert first.status == "200 OK"
    call = WsgiCall(app_for(cache, create), environ(headers={"Range": "bytes=1000-1999"}))
    assert not create.wrote[1].is_set()
    assert call.status == "206 Partial Content"
    assert call.header("Content-Range") == f"bytes 1000-1999/{len(DATA)}"
    assert call.header("Content-Length") == "1000"
    assert call.rest() == DATA[1000:2000]
    create.release()
    assert first.rest() == DATA and create.calls == 1


def test_a_range_into_bytes_not_written_yet(cache: Any) -> None:
    half = len(DATA) // 2
    create = Producer([DATA[:half], DATA[half:]], size=len(DATA))
    create.release(1)
    first = WsgiCall(app_for(cache, create), environ())
    t, out = in_thread(
        lambda: wsgi(app_for(cache, create), environ(headers={"Range": f"bytes={half + 10}-"}))
    )
    create.release()
    t.join(WAIT)
    call: WsgiCall = out[0]
    assert call.status == "206 Partial Content" and call.body == DATA[half + 10 :]
    assert first.rest() == DATA


def test_a_range_reads_exactly_its_bytes_then_lets_go(cache: Any) -> None:
    """The range request created the entry and is its only reader: after its last
    byte (without close()) it leaves, so the producer's next write finds no reader."""
    create = Producer([DATA[:5000], DATA[5000:]], size=len(DATA))
    create.release(1)
    call = WsgiCall(app_for(cache, create), environ(headers={"Range": "bytes=100-199"}))
    assert call.status == "206 Partial Content"
    while len(call.body) < 100:  # a server that stops at Content-Length
        assert call.next() is not None
    assert call.body == DATA[100:200]
    create.release()
    assert create.done.wait(WAIT)
    assert isinstance(create.write_error, BrokenPipeError)
    assert call.next() is None and call.error is None  # and read nothing past its end
    call.close()


def test_a_body_read_to_the_end_lets_the_producer_publish_the_entry(cache: Any) -> None:
    """The only reader got every byte before create returned: it waits for the end
    itself before letting go, or the entry would be dropped as abandoned."""
    create = Producer([DATA], size=len(DATA), hold_end=True, free=True)
    call = WsgiCall(app_for(cache, create), environ())
    while len(call.body) < len(DATA):
        assert call.next() is not None
    t, out = in_thread(call.next)  # a server iterates to the end: waits for create
    assert create.wrote[0].wait(WAIT)
    create.end.set()
    t.join(WAIT)
    assert out == [None] and call.error is None and call.body == DATA
    call.close()
    assert cache.wait_producers(WAIT)
    info = cache.peek(KEY)
    assert info is not None and info.finished, "the entry was dropped"


def test_if_range_with_the_same_strong_etag(cache: Any) -> None:
    finished(cache)
    extra = [("ETag", '"v1"')]
    same = environ(headers={"Range": "bytes=0-9", "If-Range": '"v1"'})
    other = environ(headers={"Range": "bytes=0-9", "If-Range": '"v0"'})
    assert wsgi(app_for(cache, unused(), headers=extra), same).status == "206 Partial Content"
    call = wsgi(app_for(cache, unused(), headers=extra), other)
    assert call.status == "200 OK" and call.body == DATA


def test_post_is_served_like_get_without_ranges(cache: Any) -> None:
    finished(cache)
    call = wsgi(app_for(cache, unused()), environ("POST", headers={"Range": "bytes=0-1"}))
    assert call.status == "200 OK" and call.body == DATA


# -- HEAD ---------------------------------------------------------------------------------


def test_head_of_an_absent_entry_creates_nothing(cache: Any) -> None:
    create = unused()
    call = wsgi(app_for(cache, create), environ("HEAD"))
    assert call.status == "200 OK" and call.body == b""
    assert call.header("Content-Length") is None
    assert create.calls == 0 and cache.peek(KEY) is None


def test_head_of_a_finished_entry(cache: Any) -> None:
    finished(cache)
    call = wsgi(app_for(cache, unused(), content_type="text/x"), environ("HEAD"))
    assert call.status == "200 OK" and call.body == b""
    assert call.header("Content-Length") == str(len(DATA))
    assert call.header("Accept-Ranges") == "bytes"
    assert call.header("Content-Type") == "text/x"


@pytest.mark.parametrize("announced", [True, False])
def test_head_of_an_entry_in_flight(cache: Any, announced: bool) -> None:
    create = Producer([DATA[:10], DATA[10:]], size=len(DATA) if announced else None)
    create.release(1)
    first = WsgiCall(app_for(cache, create), environ())
    call = wsgi(app_for(cache, create), environ("HEAD"))
    assert call.status == "200 OK" and call.body == b""
    assert call.header("Content-Length") == (str(len(DATA)) if announced else None)
    create.release()
    assert first.rest() == DATA and create.calls == 1


# -- failures -----------------------------------------------------------------------------


def test_a_producer_failing_before_the_first_byte_is_502(cache: Any) -> None:
    create = Producer([], fail=ValueError("secret detail"))
    call = wsgi(app_for(cache, create), environ())
    assert call.status == "502 Bad Gateway"
    assert call.header(
        "Content-Type",
    ).startswith("text/plain")  # type: ignore[union-attr]
    assert call.header("Content-Length") == str(len(call.body)) and call.body
    assert b"secret" not in call.body


def test_a_producer_timing_out_is_504(cache: Any) -> None:
    create = Producer([], fail=TimeoutError("upstream"))
    assert wsgi(app_for(cache, create), environ()).status == "504 Gateway Timeout"


def test_the_timeout_argument_is_504(cache: Any) -> None:
    create = Producer([b"late"])  # held until teardown
    call = wsgi(app_for(cache, create, timeout=0.2), environ())
    assert call.status == "504 Gateway Timeout"


def test_the_idle_timeout_argument_is_504_before_the_first_byte_and_a_cut_after(
    cache: Any,
) -> None:
    """idle_timeout reaches cache.stream: silence before the first byte is a 504, after
    it the body is cut (docs/design.md, "Serving over HTTP")."""
    call = wsgi(app_for(cache, Producer([b"late"]), key="a", idle_timeout=0.2), environ())
    assert call.status == "504 Gateway Timeout"
    create = Producer([DATA[:1000], DATA[1000:]])  # the second part held to teardown
    create.release(1)
    call = wsgi(app_for(cache, create, key="b", idle_timeout=0.2), environ())
    assert call.status == "200 OK" and call.body == DATA[:1000]
    assert isinstance(call.error, ResponseAborted)


def test_a_failure_after_the_first_byte_aborts_with_one_warning(
    cache: Any, caplog: pytest.LogCaptureFixture
) -> None:
    create = Producer([DATA[:1000], DATA[1000:]], fail=ValueError("boom"))
    create.release(1)
    call = WsgiCall(app_for(cache, create), environ())
    assert call.status == "200 OK"
    assert call.next() == DATA[:1000]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="streamcache"):
        create.release()
        call.rest()
        assert cache.wait_producers(WAIT)
    assert isinstance(call.error, ResponseAborted)
    # what servers treat as a client gone: gunicorn looks at the errno
    assert isinstance(call.error, BrokenPipeError) and call.error.errno == errno.EPIPE
    assert call.body == DATA  # then the cut: no more bytes, the server closes
    check_one_warning(caplog.records, "wsgi", "boom")


def test_a_failure_after_the_first_byte_leaves_the_body_short_of_its_length(
    cache: Any, caplog: pytest.LogCaptureFixture
) -> None:
    create = Producer([DATA[:1000]], size=len(DATA), free=True)  # ends short: fails
    with caplog.at_level(logging.DEBUG, logger="streamcache"):
        call = wsgi(app_for(cache, create), environ())
        assert cache.wait_producers(WAIT)
    assert call.header("Content-Length") == str(len(DATA))
    assert len(call.body) < len(DATA) and isinstance(call.error, ResponseAborted)
    check_one_warning(caplog.records, "wsgi", "size")


def test_this_requests_own_timeout_mid_body_is_its_one_warning(
    cache: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing else logs a reader's own timeout: the helper's line is the WARNING."""
    create = Producer([DATA[:1000], DATA[1000:]])  # the second part held to teardown
    create.release(1)
    with caplog.at_level(logging.DEBUG, logger="streamcache"):
        call = wsgi(app_for(cache, create, timeout=0.5), environ())
    assert call.status == "200 OK" and call.body == DATA[:1000]
    assert isinstance(call.error, ResponseAborted)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].module == "wsgi"
    assert "TimeoutError" in warnings[0].getMessage() and warnings[0].exc_info is None


def test_under_uwsgi_an_abort_is_a_disconnect_and_a_quiet_end(
    cache: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uWSGI prints a traceback for any exception from the body iterable."""
    disconnects: list[int] = []
    fake = types.SimpleNamespace(disconnect=lambda: disconnects.append(1))
    monkeypatch.setitem(__import__("sys").modules, "uwsgi", fake)
    create = Producer([DATA[:1000]], size=len(DATA), fail=ValueError("boom"), free=True)
    with caplog.at_level(logging.DEBUG, logger="streamcache"):
        call = wsgi(app_for(cache, create), environ(**{"uwsgi.version": b"2.0.31"}))
        assert cache.wait_producers(WAIT)
    assert call.status == "200 OK" and call.body == DATA[:1000]
    assert call.header("Content-Length") == str(len(DATA))
    assert call.error is None and disconnects == [1]
    check_one_warning(caplog.records, "wsgi", "boom")


def test_a_client_that_goes_away_releases_its_reader_at_once(cache: Any) -> None:
    create = Producer([DATA[:1000], DATA[1000:]])
    create.release(1)
    call = WsgiCall(app_for(cache, create), environ())
    assert call.next() == DATA[:1000]
    call.close()  # the server's close() when the client left
    create.release()
    assert create.done.wait(WAIT)
    assert isinstance(create.write_error, BrokenPipeError)


def test_close_before_iterating_releases_the_reader(cache: Any) -> None:
    create = Producer([DATA[:1000], DATA[1000:]])
    create.release(1)
    call = WsgiCall(app_for(cache, create), environ())
    call.close()
    create.release()
    assert create.done.wait(WAIT)
    assert isinstance(create.write_error, BrokenPipeError)


# -- arguments and headers ----------------------------------------------------------------


def test_content_type_and_extra_headers(cache: Any) -> None:
    finished(cache)
    app = app_for(
        cache, unused(), content_type="application/x-git", headers=[("Cache-Control", "no-cache")]
    )
    call = wsgi(app, environ())
    assert call.header("Content-Type") == "application/x-git"
    assert call.header("Cache-Control") == "no-cache"
    call = wsgi(app, environ(headers={"Range": f"bytes={len(DATA)}-"}))
    assert call.status.startswith("416") and call.header("Cache-Control") == "no-cache"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({"key": 1}, TypeError),
        ({"create": None}, TypeError),
        ({"env": []}, TypeError),
        ({"start_response": None}, TypeError),
        ({"content_type": b"x"}, TypeError),
        ({"content_type": "a\nb"}, ValueError),
        ({"headers": [("Content-Length", "1")]}, ValueError),
        ({"headers": [("X", 1)]}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"timeout": float("nan")}, ValueError),
    ],
)
def test_bad_arguments_fail_at_the_call(cache: Any, kw: dict[str, Any], exc: type) -> None:
    args: dict[str, Any] = {
        "key": KEY,
        "create": unused(),
        "env": environ(),
        "start_response": lambda *a: None,
    }
    args.update(kw)
    with pytest.raises(exc):
        serve(
            cache,
            args.pop("key"),
            args.pop("create"),
            args.pop("env"),
            args.pop("start_response"),
            **args,
        )
    assert cache.peek(KEY) is None


def test_behind_admission_and_logging_wrappers(cache: Any) -> None:
    """MinOccurrences (n=1): the first request bypasses the cache (HTTP/1.0: spooled,
    with a length), the second is cached, the third a zero-copy hit. A LoggingCache
    around it all sees the streams and nothing else (peek counts no occurrence): the
    second request's include the reader that drained the entry while it waited."""
    logged = streamcache.LoggingCache(streamcache.MinOccurrences(cache, 1, 60))
    create = Producer([DATA[:1000], DATA[1000:]], free=True)
    fw = recording_file_wrapper()
    for _ in range(3):
        head = wsgi(app_for(logged, create), environ("HEAD"))
        assert head.status == "200 OK" and head.body == b""
        call = wsgi(
            app_for(logged, create), environ(protocol="HTTP/1.0", **{"wsgi.file_wrapper": fw})
        )
        assert call.header("Content-Length") == str(len(DATA)) and call.body == DATA
    assert create.calls == 2  # the bypass, then the admitted entry
    assert [e.created for e in logged.entries] == [True, True, False, False]
    assert len(fw.given) == 1  # the hit
