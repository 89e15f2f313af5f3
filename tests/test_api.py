"""The public API (docs/design.md, "Public API"): names, arguments, errors, streams, CLI."""

from __future__ import annotations

import asyncio
import datetime
import io
import itertools
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import data_files, finished_entries, index_records

import ipc
import streamcache
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.index import Index


def writer_of(data: bytes, chunk: int = 65536) -> Any:
    def create(w: Any) -> None:
        for i in range(0, len(data), chunk):
            w.write(data[i : i + chunk])

    return create


def test_public_names() -> None:
    for name in (
        "Config", "new", "StreamCache", "MinOccurrences", "NullCache", "LoggingCache",
        "LogEntry", "FetchResult", "Error", "CreateError", "ProducerDied",
    ):  # fmt: skip
        assert hasattr(streamcache, name), name
    assert issubclass(streamcache.CreateError, streamcache.Error)
    assert issubclass(streamcache.ProducerDied, streamcache.CreateError)


def test_new_builds_min_occurrences_over_stream_cache(cache_dir: Path) -> None:
    cfg = streamcache.Config(dir=cache_dir, max_age=datetime.timedelta(minutes=2))
    with streamcache.new(cfg) as cache:
        assert isinstance(cache, streamcache.MinOccurrences)
        assert isinstance(cache.cache, streamcache.StreamCache)
        assert cache.n == 0 and cache.min_age == 120.0
        assert cache.cache.max_age == 120.0
    assert isinstance(streamcache.new(streamcache.Config(dir=cache_dir, enabled=False)),
                      streamcache.NullCache)  # fmt: skip


def test_fetch_result_unpacks_and_counts(cache_dir: Path) -> None:
    data = os.urandom(300_000)
    with streamcache.StreamCache(cache_dir) as cache:
        dst = io.BytesIO()
        written, created = cache.fetch("k", dst, writer_of(data))
        assert (written, created) == (len(data), True)
        res = cache.fetch("k", io.BytesIO(), writer_of(b"other"))
        assert res == streamcache.FetchResult(len(data), False)
        assert res.written == len(data) and res.created is False
        assert dst.getvalue() == data


@pytest.mark.parametrize("key", ["", "a" * 100_000, "ключ/../\x00\udcff", "../../etc/passwd"])
def test_any_str_key_is_hashed_never_a_path(cache_dir: Path, key: str) -> None:
    with streamcache.StreamCache(cache_dir) as cache:
        dst = io.BytesIO()
        assert cache.fetch(key, dst, writer_of(b"v")) == (1, True)
        assert cache.fetch(key, io.BytesIO(), writer_of(b"w")) == (1, False)
    assert [p.name for p in finished_entries(cache_dir)] == [key_hash(key)]
    assert index_records(cache_dir) == []


@pytest.mark.parametrize("bad", [b"bytes", 1, None, ("t",)])
def test_non_str_key_is_type_error(cache_dir: Path, bad: Any) -> None:
    with streamcache.StreamCache(cache_dir) as cache:
        with pytest.raises(TypeError):
            cache.fetch(bad, io.BytesIO(), writer_of(b"x"))
        with pytest.raises(TypeError):
            cache.stream(bad, writer_of(b"x"))
    with pytest.raises(TypeError):
        streamcache.NullCache().fetch(bad, io.BytesIO(), writer_of(b"x"))


def test_bad_arguments_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        streamcache.StreamCache(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parent"):
        streamcache.StreamCache(tmp_path / "missing" / "cache")
    with pytest.raises(ValueError):
        streamcache.StreamCache(tmp_path / "c", max_age=-1)
    with pytest.raises(TypeError):
        streamcache.StreamCache(tmp_path / "c", max_age="5m")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        streamcache.StreamCache(tmp_path / "c", window=-1)
    with pytest.raises(TypeError):
        streamcache.StreamCache(tmp_path / "c", window=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        streamcache.StreamCache(tmp_path / "c", liveness=0)
    with pytest.raises(TypeError):
        streamcache.new({"dir": str(tmp_path)})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        streamcache.MinOccurrences(streamcache.NullCache(), -1, 10)
    with pytest.raises(TypeError):
        streamcache.StreamCache(tmp_path / "c").fetch("k", object(), writer_of(b""))
    with pytest.raises(TypeError):
        streamcache.StreamCache(tmp_path / "c").fetch("k", io.BytesIO(), "not callable")  # type: ignore[arg-type]


def test_everything_is_private(cache_dir: Path) -> None:
    with streamcache.StreamCache(cache_dir) as cache:
        gate = threading.Event()

        def create(w: Any) -> None:
            w.write(b"x")
            gate.wait(10)

        with cache.stream("k", create) as s:
            assert s.read(1) == b"x"
            objs = ipc.list_objects(ipc.prefix_for(cache_dir))
            assert len(objs) == 3  # one segment and two doorbells while in flight
            for o in objs:
                path = "/dev/shm/" + ("sem." if o.is_semaphore else "") + o.name[1:]
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
            gate.set()
            assert s.read() == b""
        cache.wait_producers(10)
    for root, _dirs, files in os.walk(cache_dir):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for f in files:
            # Lock files and records 0600; a finished entry 0400 (sealed: see filestore).
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) in (0o600, 0o400), f


def test_refuses_a_dir_writable_by_others(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(ValueError, match="writable by others"):
        streamcache.StreamCache(d)


def test_refuses_a_dir_owned_by_another_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    d = tmp_path / "foreign"
    d.mkdir(mode=0o700)
    os.chown(d, 12345, 12345)
    with pytest.raises(ValueError, match="owned by"):
        streamcache.StreamCache(d)


def test_stream_read_readinto_iter(cache_dir: Path) -> None:
    data = os.urandom(3 * 2**20 + 17)
    with streamcache.StreamCache(cache_dir) as cache:
        with cache.stream("k", writer_of(data, 2**20)) as s:
            assert s.created is True
            head = s.read(10)
            buf = bytearray(100)
            n = s.readinto(buf)
            rest = b"".join(s)
        assert head + bytes(buf[:n]) + rest == data
        with cache.stream("k", writer_of(b"")) as s:
            assert s.created is False
            assert s.read() == data
            assert s.read(5) == b""
        with pytest.raises(ValueError):
            s.read(1)


def test_stream_returns_before_the_first_byte(cache_dir: Path) -> None:
    gate = threading.Event()

    def create(w: Any) -> None:
        assert gate.wait(10)
        w.write(b"late")

    with streamcache.StreamCache(cache_dir) as cache:
        with cache.stream("k", create, timeout=10) as s:  # returns while create waits
            assert s.created
            gate.set()
            assert s.read() == b"late"


def test_reading_past_a_failed_entry_raises_create_error(cache_dir: Path) -> None:
    def create(w: Any) -> None:
        w.write(b"partial")
        raise KeyError("gone")

    with streamcache.StreamCache(cache_dir) as cache:
        with cache.stream("k", create) as s:
            with pytest.raises(streamcache.CreateError, match="KeyError") as info:
                while s.read(100):
                    pass
        assert isinstance(info.value.__cause__, KeyError)
        # The failed entry left the index: the next fetch creates afresh.
        assert cache.fetch("k", io.BytesIO(), writer_of(b"ok")) == (2, True)


def test_base_exception_in_create_fails_only_the_entry(cache_dir: Path) -> None:
    class Panic(BaseException):
        pass

    def create(w: Any) -> None:
        raise Panic("panic")

    with streamcache.StreamCache(cache_dir) as cache:
        with pytest.raises(streamcache.CreateError, match="Panic: panic"):
            cache.fetch("k", io.BytesIO(), create)
        assert cache.fetch("k", io.BytesIO(), writer_of(b"ok")).created


def test_astream(cache_dir: Path) -> None:
    data = os.urandom(2**20 + 5)

    async def main() -> tuple[bool, bytes, bool, bytes]:
        with streamcache.StreamCache(cache_dir) as cache:
            async with cache.astream("k", writer_of(data)) as s:
                first = b"".join([c async for c in s])
                c1 = s.created
            async with cache.astream("k", writer_of(b"")) as s2:
                second = await s2.read()
                c2 = s2.created
            return c1, first, c2, second

    assert asyncio.run(main()) == (True, data, False, data)


def test_fetch_timeout(cache_dir: Path) -> None:
    gate = threading.Event()

    def create(w: Any) -> None:
        gate.wait(10)

    with streamcache.StreamCache(cache_dir) as cache:
        try:
            with pytest.raises(TimeoutError):
                cache.fetch("k", io.BytesIO(), create, timeout=0.2)
        finally:
            gate.set()
            cache.wait_producers(10)


def test_logging_cache(cache_dir: Path) -> None:
    inner = streamcache.StreamCache(cache_dir)
    cache = streamcache.LoggingCache(inner)

    def bad(w: Any) -> None:
        raise ValueError("no")

    cache.fetch("a", io.BytesIO(), writer_of(b"1"))
    cache.fetch("a", io.BytesIO(), writer_of(b"1"))
    with pytest.raises(streamcache.CreateError):
        cache.fetch("b", io.BytesIO(), bad)
    entries = cache.entries
    # "b" ran its own create, which failed: created, with the error (as Gitaly's Fetch).
    assert [(e.key, e.created) for e in entries] == [("a", True), ("a", False), ("b", True)]
    assert entries[0].error is None and isinstance(entries[2].error, streamcache.CreateError)
    assert isinstance(entries[0], streamcache.LogEntry)
    cache.stop()


def test_null_cache_stream_and_fetch() -> None:
    cache = streamcache.NullCache()
    dst = io.BytesIO()
    assert cache.fetch("k", dst, writer_of(b"abc")) == (3, True)
    with cache.stream("k", writer_of(b"xyz" * 100_000)) as s:
        assert s.created and s.read() == b"xyz" * 100_000


def test_garbage_in_the_directory_is_never_served(cache_dir: Path) -> None:
    with streamcache.StreamCache(cache_dir) as cache:
        index = Index(str(cache_dir / LAYOUT))
        path = Path(index.record_path(key_hash("k")))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        texts = ("{not json", '{"v": 99}', "", json.dumps({"v": 2}))
        for garbage, as_symlink in itertools.product(texts, (False, True)):
            # A record of an entry in flight (records are symlinks to their JSON), but garbage.
            if as_symlink and garbage:
                os.symlink(garbage, path)
            else:
                path.write_text(garbage)
            dst = io.BytesIO()
            assert cache.fetch("k", dst, writer_of(b"fresh")) == (5, True)
            assert dst.getvalue() == b"fresh"
            (entry,) = finished_entries(cache_dir)
            entry.unlink()
        # A finished entry whose trailer does not match (foreign, or cut short) is a miss.
        entry = cache_dir / LAYOUT / "entries" / key_hash("k")[:2] / key_hash("k")
        for garbage in (b"", b"?", b"x" * 100):
            entry.write_bytes(garbage)
            assert cache.fetch("k", io.BytesIO(), writer_of(b"y")).created is True
        (cache_dir / LAYOUT / "data" / "zz").mkdir(parents=True, exist_ok=True)
        (cache_dir / LAYOUT / "data" / "zz" / "foreign").write_bytes(b"?")
        dst = io.BytesIO()
        assert cache.fetch("k", dst, writer_of(b"x")).created is False
        assert dst.getvalue() == b"y"


def test_truncated_data_file_is_not_served(cache_dir: Path) -> None:
    with streamcache.StreamCache(cache_dir) as cache:
        cache.fetch("k", io.BytesIO(), writer_of(b"0123456789"))
        (f,) = data_files(cache_dir)
        os.truncate(f, 4)
        dst = io.BytesIO()
        assert cache.fetch("k", dst, writer_of(b"again")) == (5, True)
        assert dst.getvalue() == b"again"


def test_recorded_expiry_wins_over_other_caches_max_age(cache_dir: Path) -> None:
    now = [1000.0]
    long_lived = streamcache.StreamCache(cache_dir, max_age=100, clock=lambda: now[0],
                                         cleanup_interval=0)  # fmt: skip
    short = streamcache.StreamCache(cache_dir, max_age=1, clock=lambda: now[0],
                                    cleanup_interval=0)  # fmt: skip
    long_lived.fetch("k", io.BytesIO(), writer_of(b"long"))
    now[0] += 50
    assert short.gc().expired == 0  # the record's own expiry (t+100) rules
    assert short.fetch("k", io.BytesIO(), writer_of(b"x")).created is False
    now[0] += 51
    assert short.gc().expired == 1
    assert not data_files(cache_dir)
    assert short.fetch("k", io.BytesIO(), writer_of(b"new")).created is True


def test_in_flight_entries_expire_too(cache_dir: Path) -> None:
    now = [1000.0]
    cache = streamcache.StreamCache(cache_dir, max_age=10, clock=lambda: now[0],
                                    cleanup_interval=0)  # fmt: skip
    gate = threading.Event()

    def create(w: Any) -> None:
        w.write(b"first")
        gate.wait(10)
        w.write(b"-rest")

    with cache.stream("k", create) as s:
        assert s.read(5) == b"first"
        now[0] += 11
        assert cache.gc().expired == 1
        # A new fetch creates afresh while the old producer and reader go on.
        assert cache.fetch("k", io.BytesIO(), writer_of(b"new")) == (3, True)
        gate.set()
        assert s.read() == b"-rest"
    cache.wait_producers(10)


def test_sendfile_to_a_real_file(cache_dir: Path, tmp_path: Path) -> None:
    data = os.urandom(5 * 2**20 + 3)
    with streamcache.StreamCache(cache_dir) as cache:
        for expect_created in (True, False):
            out = tmp_path / f"out-{expect_created}"
            with open(out, "wb") as f:
                f.write(b"head:")
                assert cache.fetch("k", f, writer_of(data, 2**20)) == (len(data), expect_created)
                f.write(b":tail")
            assert out.read_bytes() == b"head:" + data + b":tail"


def test_record_fits_in_a_fast_symlink() -> None:
    """A record is a symlink's target; under 60 bytes ext4 keeps it in the inode (no data
    block to allocate and free per miss), even for the largest pid and a long uptime."""
    from streamcache.disk.index import Record

    pid = 4_194_304  # Linux's largest pid_max
    rec = Record("a" * 64, f"{'f' * 16}-{pid:x}-{0xFFFFF:x}", pid, 31_536_000.99, 4_102_444_800.5)
    assert len(rec.to_text()) < 60
    assert Record.from_text(rec.key, rec.to_text()) == rec
    for garbage in ("", "3", "3 x 1 2", "3 a-zz-0 1 2", "2 a-1-0 1 2", "3 a/b-1-0 1 2"):
        assert Record.from_text(rec.key, garbage) is None, garbage
