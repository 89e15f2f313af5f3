"""A process's first mapping of a segment imports ctypes (5-8 ms of CPU). A lookup that
will map one (attaching to an entry in flight, or creating an entry with a channel)
imports it before it takes the key's lock, so processes attaching at once do not queue
behind each other's imports. Each probe runs in a fresh interpreter (ctypes not loaded)
and records, at every acquisition of a key's lock, whether ctypes was loaded by then.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from procs_inline import StartGated

WAIT = 300.0  # a hang bound only: a fresh interpreter at load 50 may take a minute

PROBE = """
import io, json, sys
from streamcache import StreamCache
from streamcache.disk import index

at_lock = []
locked = index.Index.locked

def spy(self, key, timeout):
    at_lock.append("ctypes" in sys.modules)
    return locked(self, key, timeout)

index.Index.locked = spy
cache = StreamCache(sys.argv[1], registry=None, cleanup_interval=0)
how, key = sys.argv[2], sys.argv[3]
if how == "stream":
    with cache.stream(key, lambda w: [b"fresh"]) as s:
        got = s.read(5)
else:
    out = io.BytesIO()
    cache.fetch(key, out, lambda w: [b"fresh"])
    got = out.getvalue()
cache.wait_producers(300)
cache.stop()
print(json.dumps([at_lock, got.decode(), "ctypes" in sys.modules]))
"""


def probe(cache_dir: Path, how: str, key: str) -> tuple[list[bool], str, bool]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(cache_dir), how, key],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    at_lock, got, loaded = json.loads(done.stdout.splitlines()[-1])
    return at_lock, got, loaded


def test_a_reader_attaching_to_an_entry_in_flight_imports_before_the_lock(
    cache_dir: Path, gated_producer: StartGated
) -> None:
    gated_producer("in-flight")  # written "head ", waits
    at_lock, got, _ = probe(cache_dir, "stream", "in-flight")
    assert got == "head "
    assert at_lock and all(at_lock), f"ctypes loaded at each lock: {at_lock}"


def test_a_creator_with_a_channel_imports_before_the_lock(cache_dir: Path) -> None:
    at_lock, got, _ = probe(cache_dir, "stream", "fresh")
    assert got == "fresh"
    assert at_lock and all(at_lock), f"ctypes loaded at each lock: {at_lock}"


def test_an_inline_miss_with_nobody_else_does_not_import_it(cache_dir: Path) -> None:
    at_lock, got, loaded = probe(cache_dir, "fetch", "alone")
    assert got == "fresh"
    assert at_lock and not any(at_lock)
    assert not loaded
