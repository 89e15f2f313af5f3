"""A reader never returns a byte at or past the entry's final size.

A reader that waits long enough looks past the producer's published offset, at what
the data file holds (an inline producer publishes only once it has found the entry's
channel). The producer appends a 16-byte trailer to that same file when it seals the
entry, and a trailer torn by a crash or a full disk is shorter. None of its bytes may
reach a caller as data.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from xproc import WAIT, expect, forbidden_create, payload_bytes, read_head

import streamcache
from streamcache.cache import LAYOUT, key_hash
from streamcache.disk.filestore import SEALING_MODE, TRAILER, Filestore
from streamcache.disk.index import Index

pytestmark = pytest.mark.timeout(60)

SIZE = 100_000
LIVENESS = 0.2


def _data_path(cache_dir: Path, key: str) -> str:
    root = str(cache_dir / LAYOUT)
    rec = Index(root).read(key_hash(key))
    assert rec is not None, "the entry is in flight"
    return Filestore(root).path(rec.file)


def _tear_a_trailer(path: str) -> None:
    """What a producer that died (or hit a full disk) half-way through sealing leaves:
    the sealing mode, and half a trailer after the entry's bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.fchmod(fd, SEALING_MODE)
        os.write(fd, TRAILER.pack(b"SCdone\x00\x01", SIZE)[:8])
    finally:
        os.close(fd)


class _Reader:
    """Reads the rest of a stream in a thread; ``more`` is set when a byte past the
    first ``SIZE`` arrives."""

    def __init__(self, s: streamcache.Stream) -> None:
        self.s = s
        self.got = bytearray()
        self.error: BaseException | None = None
        self.more = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for chunk in self.s:
                self.got += chunk
                if len(self.got) > SIZE:
                    self.more.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.more.set()


def test_a_torn_trailer_is_not_served_while_the_producer_lives(cache_dir: Path, spawn: Any) -> None:
    from procs_entry_end import inline_creator

    wrote, go, out = spawn.Event(), spawn.Event(), spawn.Queue()
    p = spawn.Process(
        target=inline_creator, args=(str(cache_dir), "k", SIZE, wrote, go), kwargs={"out": out}
    )
    p.start()
    try:
        assert wrote.wait(WAIT)
        cache = streamcache.StreamCache(cache_dir, liveness=LIVENESS, cleanup_interval=0)
        with cache.stream("k", forbidden_create, timeout=WAIT) as s:
            head = read_head(s, SIZE)
            assert head == payload_bytes("k", SIZE, SIZE)
            _tear_a_trailer(_data_path(cache_dir, "k"))
            reader = _Reader(s)
            # Several liveness checks of the waiting reader: none may take the torn
            # trailer for data.
            assert not reader.more.wait(LIVENESS * 5), f"served {len(reader.got)} bytes more"
            go.set()  # the producer seals for real (its trailer overwrites the torn one)
            reader.thread.join(WAIT)
        assert reader.error is None, reader.error
        assert bytes(reader.got) == b"", "nothing past the entry's last byte"
        assert expect(out, "fetched") == (SIZE, True)
    finally:
        go.set()
        p.join(WAIT)


def test_a_torn_trailer_of_a_killed_producer_is_not_served(cache_dir: Path, spawn: Any) -> None:
    from procs_entry_end import inline_creator

    wrote, go, out = spawn.Event(), spawn.Event(), spawn.Queue()
    p = spawn.Process(
        target=inline_creator, args=(str(cache_dir), "k", SIZE, wrote, go), kwargs={"out": out}
    )
    p.start()
    assert wrote.wait(WAIT)
    cache = streamcache.StreamCache(cache_dir, liveness=LIVENESS, cleanup_interval=0)
    with cache.stream("k", forbidden_create, timeout=WAIT) as s:
        assert len(read_head(s, SIZE)) == SIZE
        _tear_a_trailer(_data_path(cache_dir, "k"))
        p.kill()
        p.join(WAIT)
        reader = _Reader(s)
        reader.thread.join(WAIT)
    assert isinstance(reader.error, streamcache.ProducerDied), reader.error
    assert bytes(reader.got) == b"", "nothing past the entry's last byte"
