"""streamcache.asgi.serve through a plain ASGI harness (scope, receive and send on
queues): the status and header rules of docs/design.md's "Serving over HTTP", disconnects seen on
receive(), zero copy where the scope offers it; on a real StreamCache."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import writing
from http_harness import WAIT, AsgiCall, Producer, asgi, check_one_warning, scope

import streamcache
from streamcache.asgi import serve

KEY = "blob"
DATA = os.urandom(700_000)


@pytest.fixture
def cache(cache_dir: Path) -> Iterator[streamcache.StreamCache]:
    c = streamcache.StreamCache(cache_dir, cleanup_interval=0, window=64 * 1024)
    yield c
    Producer.release_all()
    assert c.wait_producers(WAIT)
    c.stop()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, WAIT))


def app_for(cache: Any, create: Any, key: str = KEY, **kw: Any) -> Any:
    async def app(sc: dict[str, Any], receive: Any, send: Any) -> None:
        await serve(cache, key, create, sc, receive, send, **kw)

    return app


def finished(cache: Any, data: bytes = DATA) -> None:
    cache.fetch(KEY, io.BytesIO(), writing(data))
    info = cache.peek(KEY)
    assert info is not None and info.finished


def unused() -> Producer:
    return Producer([b"never"])


async def until(event: Any) -> None:
    assert await asyncio.to_thread(event.wait, WAIT)


def test_a_finished_entry_in_chunks_with_its_length(cache: Any) -> None:
    finished(cache)
    create = unused()
    call: AsgiCall = run(asgi(app_for(cache, create), scope()))
    assert call.code == 200
    assert call.header("content-length") == str(len(DATA))
    assert call.header("accept-ranges") == "bytes"
    assert call.header("content-type") == "application/octet-stream"
    assert call.body == DATA and call.complete
    assert all(m["type"] != "http.response.zerocopysend" for m in call.messages)
    assert create.calls == 0


@pytest.mark.parametrize("ext", ["http.response.zerocopysend", "http.response.zerocopy"])
def test_a_finished_entry_goes_zero_copy_where_offered(cache: Any, ext: str) -> None:
    finished(cache)
    call: AsgiCall = run(asgi(app_for(cache, unused()), scope(extensions={ext: {}})))
    [_start, message] = call.messages
    assert message["type"] == ext
    assert message["offset"] == 0 and message["count"] == len(DATA)
    assert not message.get("more_body", False)
    assert call.body == DATA and call.header("content-length") == str(len(DATA))


def test_a_range_of_a_finished_entry_zero_copy(cache: Any) -> None:
    finished(cache)
    sc = scope(headers={"Range": "bytes=1000-1999"}, extensions={"http.response.zerocopysend": {}})
    call: AsgiCall = run(asgi(app_for(cache, unused()), sc))
    assert call.code == 206
    assert call.header("content-range") == f"bytes 1000-1999/{len(DATA)}"
    assert call.messages[1]["offset"] == 1000 and call.messages[1]["count"] == 1000
    assert call.body == DATA[1000:2000]


def test_a_size_announced_mid_write_gives_a_length(cache: Any) -> None:
    half = len(DATA) // 2
    create = Producer([DATA[:half], DATA[half:]], size=len(DATA))
    create.release(1)

    async def go() -> AsgiCall:
        call = AsgiCall(app_for(cache, create), scope())
        await call.wait_for(lambda: len(call.messages) >= 1)
        assert not create.wrote[1].is_set()
        assert call.code == 200 and call.header("content-length") == str(len(DATA))
        create.release()
        return await call.finish()

    call = run(go())
    assert call.body == DATA and call.complete


def test_an_unknown_size_has_no_length_and_a_final_message(cache: Any) -> None:
    create = Producer([DATA[:1000], DATA[1000:]])
    create.release(1)

    async def go() -> AsgiCall:
        call = AsgiCall(app_for(cache, create), scope())
        await call.wait_for(lambda: len(call.messages) >= 1)
        assert call.header("content-length") is None
        assert call.header("transfer-encoding") is None
        create.release()
        return await call.finish()

    call = run(go())
    assert call.body == DATA and call.complete


def test_http10_and_an_unknown_size_waits_for_the_end(cache: Any) -> None:
    parts = [os.urandom(64 * 1024) for _ in range(16)]
    create = Producer(parts)
    create.release(1)

    async def go() -> AsgiCall:
        call = AsgiCall(app_for(cache, create), scope(http_version="1.0"))
        await until(create.wrote[0])
        assert not call.messages, "answered HTTP/1.0 before the size was known"
        create.release()
        return await call.finish()

    call = run(go())
    assert call.header("content-length") == str(len(create.data))
    assert call.body == create.data


def test_http10_on_a_cache_that_keeps_nothing(cache_dir: Path) -> None:
    create = Producer([DATA[:1000], DATA[1000:]], free=True)
    call: AsgiCall = run(asgi(app_for(streamcache.NullCache(), create), scope(http_version="1.0")))
    assert call.header("content-length") == str(len(DATA)) and call.body == DATA


def test_a_range_mid_write(cache: Any) -> None:
    half = len(DATA) // 2
    create = Producer([DATA[:half], DATA[half:]], size=len(DATA))
    create.release(1)

    async def go() -> tuple[AsgiCall, AsgiCall]:
        first = AsgiCall(app_for(cache, create), scope())
        await first.wait_for(lambda: len(first.messages) >= 1)
        call = await asgi(app_for(cache, create), scope(headers={"Range": "bytes=10-19"}))
        assert not create.wrote[1].is_set()
        create.release()
        return call, await first.finish()

    call, first = run(go())
    assert call.code == 206 and call.header("content-range") == f"bytes 10-19/{len(DATA)}"
    assert call.body == DATA[10:20] and call.complete
    assert first.body == DATA


def test_416(cache: Any) -> None:
    finished(cache)
    create = unused()
    sc = scope(headers={"Range": f"bytes={len(DATA)}-"})
    call: AsgiCall = run(asgi(app_for(cache, create), sc))
    assert call.code == 416 and call.header("content-range") == f"bytes */{len(DATA)}"
    assert call.body == b"" and call.complete and create.calls == 0


def test_head_creates_nothing(cache: Any) -> None:
    create = unused()
    call: AsgiCall = run(asgi(app_for(cache, create), scope("HEAD")))
    assert call.code == 200 and call.body == b"" and call.complete
    assert call.header("content-length") is None
    assert create.calls == 0 and cache.peek(KEY) is None
    finished(cache)
    call = run(asgi(app_for(cache, create), scope("HEAD")))
    assert call.header("content-length") == str(len(DATA)) and call.body == b""


def test_502_and_504_before_the_first_byte(cache: Any) -> None:
    call: AsgiCall = run(asgi(app_for(cache, Producer([], fail=ValueError("x"))), scope()))
    assert call.code == 502 and call.complete
    assert call.header("content-length") == str(len(call.body))
    call = run(asgi(app_for(cache, Producer([], fail=TimeoutError("x")), key="t"), scope()))
    assert call.code == 504
    call = run(asgi(app_for(cache, Producer([b"late"]), key="u", timeout=0.2), scope()))
    assert call.code == 504
    call = run(asgi(app_for(cache, Producer([b"late"]), key="i", idle_timeout=0.2), scope()))
    assert call.code == 504


def test_a_failure_after_the_first_byte_aborts_with_one_warning(
    cache: Any, caplog: pytest.LogCaptureFixture
) -> None:
    create = Producer([DATA[:1000], DATA[1000:]], fail=ValueError("boom"), free=True)
    with caplog.at_level(logging.DEBUG, logger="streamcache"):
        call: AsgiCall = run(asgi(app_for(cache, create), scope()))
        assert cache.wait_producers(WAIT)
    assert call.code == 200 and call.body == DATA
    assert not call.complete, "an aborted body must not end with more_body=False"
    assert call.task.exception() is None  # returned, not raised: no traceback
    check_one_warning(caplog.records, "asgi", "boom")


@pytest.mark.parametrize("when", ["before the first byte", "mid-body"])
def test_a_disconnect_releases_the_reader_at_once(cache: Any, when: str) -> None:
    create = Producer([DATA[:1000], DATA[1000:]])
    if when == "mid-body":
        create.release(1)

    async def go() -> AsgiCall:
        call = AsgiCall(app_for(cache, create), scope())
        if when == "mid-body":
            await call.wait_for(lambda: len(call.messages) >= 2)
        else:
            await until(create.started)
        call.disconnect()
        return await call.finish()

    call = run(go())
    assert not call.complete and call.task.exception() is None
    create.release()  # the producer's next write finds no reader
    assert create.done.wait(WAIT)
    assert isinstance(create.write_error, BrokenPipeError)


@pytest.mark.parametrize(
    ("sc", "exc"),
    [({"type": "websocket"}, ValueError), ([], TypeError)],
)
def test_bad_scopes(cache: Any, sc: Any, exc: type) -> None:
    with pytest.raises(exc):
        run(serve(cache, KEY, unused(), sc, _never, _never))


async def _never(*a: Any) -> Any:
    raise AssertionError("not to be called")


def test_extra_headers_and_content_type(cache: Any) -> None:
    finished(cache)
    app = app_for(cache, unused(), content_type="text/x", headers=[("Cache-Control", "no-cache")])
    call: AsgiCall = run(asgi(app, scope()))
    assert call.header("content-type") == "text/x"
    assert call.header("cache-control") == "no-cache"
    assert all(k == k.lower() for k, _ in call.start["headers"])


def test_a_range_lets_go_of_its_reader_before_the_last_message(cache: Any) -> None:
    """The range request created the entry and is its only reader. While its last
    message is still being sent (a slow client), the producer already finds no reader."""
    create = Producer([DATA[:5000], DATA[5000:]], size=len(DATA))
    create.release(1)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            create.release()
            await until(create.done)

    sc = scope(headers={"Range": "bytes=100-199"})
    run(serve(cache, KEY, create, sc, receive, send))
    assert sent[0]["status"] == 206
    assert b"".join(m.get("body", b"") for m in sent[1:]) == DATA[100:200]
    assert isinstance(create.write_error, BrokenPipeError)


def test_a_body_read_to_the_end_lets_the_producer_publish_the_entry(cache: Any) -> None:
    create = Producer([DATA], size=len(DATA), hold_end=True, free=True)

    async def go() -> AsgiCall:
        call = AsgiCall(app_for(cache, create), scope())
        await call.wait_for(lambda: call.complete)  # every byte sent, create not returned
        create.end.set()
        return await call.finish()

    call = run(go())
    assert call.body == DATA
    assert cache.wait_producers(WAIT)
    info = cache.peek(KEY)
    assert info is not None and info.finished, "the entry was dropped"
