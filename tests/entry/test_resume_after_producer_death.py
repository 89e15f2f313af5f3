"""``resume=True``: a producer SIGKILLed mid-entry is replaced by one of its readers,
which re-runs create, checks the bytes already written and carries the same entry on.
Readers in other processes (fetch, stream, astream) get every byte, as from an
unkilled run; a create that is not deterministic fails the entry and is never
spliced; without resume, ProducerDied as before. Children live in procs_resume.py.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import procs_resume
import pytest
import xproc
from procs_resume import Payload
from xproc import payload_sha

import streamcache
from streamcache.disk.eviction import sweep_channels
from streamcache.disk.index import Record
from streamcache.disk.store import key_hash

WAIT = 60.0
# Spawning and attaching six readers, each bounded by WAIT, may take minutes at load 40.
pytestmark = pytest.mark.timeout(900)
TOTAL = 2 << 20
CHUNK = 16 << 10
SEED = "resume"
MODES = ("fetch", "stream", "astream")


def _kill_mid_entry(
    cache_dir: Path,
    spawn: SpawnContext,
    key: str,
    producer_mode: str,
    kill_at: int,
    readers: list[tuple[str, Payload, bool]],
    liveness: float = 0.2,
    after_kill: Callable[[streamcache.StreamCache], None] | None = None,
    held: int = 0,
    plain_liveness: float | None = None,
    sealing: str | None = None,
    before_kill: Callable[[streamcache.StreamCache], None] | None = None,
) -> tuple[list[tuple[Any, ...]], float]:
    """Start a producer of ``key`` (``resume=True``), attach ``readers`` (mode, create,
    resume) in processes of their own (with ``liveness``), let the producer write
    ``kill_at`` bytes, wait until they are published, SIGKILL it, run ``after_kill``;
    the readers' reports and the kill's time. The last ``held`` readers stop after
    their first bytes (the producer's first chunk) until the others have reported.
    ``plain_liveness``: the liveness of the readers without resume, if not ``liveness``.
    ``before_kill``: run just before the kill, with the kill point published.
    ``sealing``: the producer writes every byte and is killed while it seals the data
    file, at that stage (see procs_resume.producer_killed_sealing); ``kill_at`` is then
    the entry's size."""
    started, go, reached, release = spawn.Event(), spawn.Event(), spawn.Event(), spawn.Event()
    pout = spawn.Queue()
    if sealing is None:
        create = Payload(SEED, TOTAL, CHUNK, gate=(started, go), stop=(kill_at, reached))
        target: Callable[..., None] = procs_resume.producer
        args: tuple[Any, ...] = (str(cache_dir), key, producer_mode, create)
    else:
        create = Payload(SEED, TOTAL, CHUNK, gate=(started, go))
        target = procs_resume.producer_killed_sealing
        args = (str(cache_dir), key, sealing, create, reached)
    producer = spawn.Process(target=target, args=args, kwargs={"out": pout})
    producer.start()
    assert started.wait(WAIT), "the producer never wrote its first chunk"
    procs = []
    for i, (mode, reader_create, resume) in enumerate(readers):
        out = spawn.Queue()
        hold = release if i >= len(readers) - held else None
        p = spawn.Process(
            target=procs_resume.reader,
            args=(
                str(cache_dir),
                key,
                mode,
                reader_create,
                kill_at,
                resume,
                liveness if resume or plain_liveness is None else plain_liveness,
            ),
            kwargs={"out": out, "hold": hold},
        )
        p.start()
        procs.append((p, out))
    for _, out in procs:
        xproc.expect(out, "attached", WAIT)
    go.set()
    assert reached.wait(WAIT), "the producer never reached the kill point"
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    xproc.wait_until(
        lambda: (info := cache.peek(key)) is not None and info.produced >= kill_at,
        WAIT,
        "the kill point published",
    )
    if before_kill is not None:
        before_kill(cache)
    killed = time.monotonic()
    assert producer.pid is not None
    os.kill(producer.pid, signal.SIGKILL)
    producer.join(WAIT)
    assert producer.exitcode == -signal.SIGKILL
    if after_kill is not None:
        after_kill(cache)
    reports = []
    for i, (p, out) in enumerate(procs):
        if i == len(procs) - held:
            release.set()
        msg = out.get(timeout=WAIT)
        assert msg[0] != "error", msg[1]
        reports.append(msg)
        p.join(WAIT)
        assert p.exitcode == 0
    return reports, killed


@pytest.mark.parametrize(
    ("fraction", "producer_mode"),
    [(0.1, "thread"), (0.5, "inline"), (0.99, "thread"), (0.99, "inline")],
)
def test_every_reader_gets_every_byte_after_the_producer_is_killed(
    cache_dir: Path, spawn: SpawnContext, fraction: float, producer_mode: str
) -> None:
    kill_at = int(TOTAL * fraction) // CHUNK * CHUNK
    deterministic = Payload(SEED, TOTAL, CHUNK)
    readers = [(mode, deterministic, True) for mode in (*MODES, "wsgi", "asgi")]
    reports, killed = _kill_mid_entry(
        cache_dir, spawn, "resume-key", producer_mode, kill_at, readers
    )
    want = payload_sha(SEED, TOTAL, CHUNK)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)
    resumed = [r[3] - killed for r in reports]
    print(f"killed at {kill_at} bytes; first byte past it {min(resumed):.3f} s after the kill")
    # The resumed entry was published whole: a hit, with the same bytes.
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    hit = xproc.HashSink()
    assert cache.fetch("resume-key", hit, xproc.forbidden_create, timeout=WAIT) == (TOTAL, False)
    assert hit.hexdigest() == want


@pytest.mark.parametrize("stage", ["mode", "trailer"])
def test_a_producer_killed_while_sealing_is_resumed(
    cache_dir: Path, spawn: SpawnContext, stage: str
) -> None:
    """Killed after the entry's last byte, before it was published (the data file's
    mode already "sealing", with or without its trailer): the re-run checks every byte
    and publishes the entry; no reader takes a trailer byte for data."""
    deterministic = Payload(SEED, TOTAL, CHUNK)
    readers = [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, "sealing-key", "thread", TOTAL, readers, sealing=stage
    )
    want = payload_sha(SEED, TOTAL, CHUNK)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    hit = xproc.HashSink()
    assert cache.fetch("sealing-key", hit, xproc.forbidden_create, timeout=WAIT) == (TOTAL, False)
    assert hit.hexdigest() == want


def test_readers_without_resume_read_a_producer_killed_after_its_seal_to_the_end(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """Its trailer written, the data file holds every byte of a create that returned:
    readers without resume read it to the end instead of getting ProducerDied (nothing
    to re-run; the entry itself is not kept, and the next call creates it afresh)."""
    deterministic = Payload(SEED, TOTAL, CHUNK)
    readers = [(mode, deterministic, False) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, "sealed-key", "thread", TOTAL, readers, sealing="trailer"
    )
    want = payload_sha(SEED, TOTAL, CHUNK)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)


@pytest.mark.parametrize("differs_at", ["first byte", "last byte before the kill"])
def test_a_create_that_is_not_deterministic_is_never_spliced(
    cache_dir: Path, spawn: SpawnContext, differs_at: str
) -> None:
    kill_at = TOTAL // 2
    flip = 0 if differs_at == "first byte" else kill_at - 1
    other = Payload(SEED, TOTAL, CHUNK, flip_at=flip)
    readers = [(mode, other, True) for mode in MODES]
    reports, _ = _kill_mid_entry(cache_dir, spawn, "nondet-key", "thread", kill_at, readers)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:2] == ("raised", "NotDeterministic"), (mode, report)
        assert "create is not deterministic" in report[2], (mode, report)
        # Nothing past the old bytes reached anyone: what each got is the old prefix.
        got = report[3]
        assert got <= kill_at, (mode, report)
        assert report[4] == _prefix_sha(got), (mode, report)
    # The next call gets the new run's bytes, if it joins that run before its producer
    # finds every reader gone, or its own: never the old ones spliced.
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    dst = xproc.HashSink()
    total, created = cache.fetch("nondet-key", dst, Payload(SEED, TOTAL, CHUNK), timeout=WAIT)
    new = xproc.HashSink()
    other(new)
    assert total == TOTAL
    assert dst.hexdigest() == (payload_sha(SEED, TOTAL, CHUNK) if created else new.hexdigest())


@pytest.mark.parametrize("rerun", ["differs", "ends short"])
def test_readers_behind_the_first_differing_byte_go_on_with_the_new_bytes(
    cache_dir: Path, spawn: SpawnContext, rerun: str
) -> None:
    """The re-run of create differs at byte D (or ends there), halfway to the kill
    point: the readers past D (every byte up to the kill) fail; the two held at the
    first chunk get the whole entry as the new run gives it, and so does the next
    call, a hit."""
    kill_at = TOTAL // 2
    flip = kill_at // 2
    if rerun == "differs":
        other = Payload(SEED, TOTAL, CHUNK, flip_at=flip)
    else:
        other = Payload(SEED, flip, CHUNK)
    readers = [(mode, other, True) for mode in (*MODES, "fetch", "stream")]
    reports, _ = _kill_mid_entry(cache_dir, spawn, "rewind-key", "thread", kill_at, readers, held=2)
    for (mode, _, _), report in zip(readers[:3], reports[:3], strict=True):
        assert report[:2] == ("raised", "NotDeterministic"), (mode, report)
        assert f"byte {flip} differently" in report[2], (mode, report)
        assert flip < report[3] <= kill_at and report[4] == _prefix_sha(report[3])
    new = xproc.HashSink()
    other(new)
    for (mode, _, _), report in zip(readers[3:], reports[3:], strict=True):
        assert report[:3] == ("ok", new.n, new.hexdigest()), (mode, report)
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    hit = xproc.HashSink()
    assert cache.fetch("rewind-key", hit, xproc.forbidden_create, timeout=WAIT) == (new.n, False)
    assert hit.hexdigest() == new.hexdigest()


def test_without_resume_readers_get_producer_died(cache_dir: Path, spawn: SpawnContext) -> None:
    kill_at = TOTAL // 2
    readers = [(mode, Payload(SEED, TOTAL, CHUNK), False) for mode in MODES]
    reports, _ = _kill_mid_entry(cache_dir, spawn, "plain-key", "thread", kill_at, readers)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:2] == ("raised", "ProducerDied"), (mode, report)
        assert report[3] <= kill_at


def test_a_reader_without_resume_that_notices_first_leaves_the_entry_to_the_others(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """Readers without resume check every 0.2 s, those with it every 2 s: the plain
    ones notice the death first and get ProducerDied, but leave the entry (record,
    channel, data file) to the resumable ones, which carry it on and get every byte."""
    kill_at = TOTAL // 2
    deterministic = Payload(SEED, TOTAL, CHUNK)
    readers = [("fetch", deterministic, False), ("stream", deterministic, False)]
    readers += [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, "mixed-key", "thread", kill_at, readers, 2.0, plain_liveness=0.2
    )
    for (mode, _, _), report in zip(readers[:2], reports[:2], strict=True):
        assert report[:2] == ("raised", "ProducerDied"), (mode, report)
    want = payload_sha(SEED, TOTAL, CHUNK)
    for (mode, _, _), report in zip(readers[2:], reports[2:], strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)


def test_a_call_without_resume_that_finds_the_producer_dead_leaves_the_entry_to_its_readers(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """A fetch without resume arrives after the kill, before the resumable readers
    (liveness 3 s) notice: it runs create itself, uncached (a bypass), and leaves the
    entry alone; the readers then carry it on and get every byte."""
    kill_at = TOTAL // 2
    deterministic = Payload(SEED, TOTAL, CHUNK)
    got: list[tuple[Any, ...]] = []

    def plain_fetch_after_kill(cache: streamcache.StreamCache) -> None:
        sink = xproc.HashSink()
        got.append((cache.fetch("bypass-key", sink, deterministic, timeout=WAIT), sink))

    readers = [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, "bypass-key", "thread", kill_at, readers, 3.0, plain_fetch_after_kill
    )
    want = payload_sha(SEED, TOTAL, CHUNK)
    ((result, sink),) = got
    assert result == (TOTAL, True) and sink.hexdigest() == want
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)


def test_a_reader_that_noticed_the_death_before_the_resume_leaves_the_channel(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """A reader that found the dead producer and acts on it only after a successor
    took over, and after the entry's record went (invalidated here; declared stalled
    in the chaos run that found it), must not unlink the channel under the live
    successor: its readers would fail with SharedMemoryRemoved. It is told the entry
    is carried on, and waits again."""
    kill_at = TOTAL // 2
    deterministic = Payload(SEED, TOTAL, CHUNK)
    key = "noticed-key"
    h = key_hash(key)
    old: list[Record] = []
    carried: list[object] = []

    def remember(cache: streamcache.StreamCache) -> None:
        rec = cache._store.index.read(h)
        assert rec is not None
        old.append(rec)

    def act_late(cache: streamcache.StreamCache) -> None:
        store = cache._store
        xproc.wait_until(
            lambda: (r := store.index.read(h)) is not None and r.file != old[0].file,
            WAIT,
            "a successor's record",
        )
        cur = store.index.read(h)
        assert cur is not None
        fd = os.open(store.files.path(cur.file), os.O_RDONLY)
        try:
            assert cache.invalidate(key)
            carried.append(store.producer_died(old[0], fd))
        finally:
            os.close(fd)

    readers = [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, key, "thread", kill_at, readers, before_kill=remember, after_kill=act_late
    )
    want = payload_sha(SEED, TOTAL, CHUNK)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)
    assert isinstance(carried[0], Record), carried


def test_a_resumable_call_that_finds_the_producer_dead_takes_the_entry_over(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """The readers would notice the death only after 30 s (their liveness); a call with
    resume=True that comes first resumes the entry at its lookup instead of dropping
    it, and the readers, woken by its writes, go on."""
    kill_at = TOTAL // 2
    deterministic = Payload(SEED, TOTAL, CHUNK)
    got: list[tuple[Any, ...]] = []

    def fetch_after_kill(cache: streamcache.StreamCache) -> None:
        sink = xproc.HashSink()
        got.append((cache.fetch("late-key", sink, deterministic, timeout=WAIT, resume=True), sink))

    readers = [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, "late-key", "thread", kill_at, readers, 30.0, fetch_after_kill
    )
    want = payload_sha(SEED, TOTAL, CHUNK)
    ((result, sink),) = got
    assert result == (TOTAL, False) and sink.hexdigest() == want
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)


def test_re_checking_a_long_prefix_is_not_a_stall(cache_dir: Path, spawn: SpawnContext) -> None:
    """A call with resume and a cache with stall_timeout resumes the entry at its
    lookup; its create is slow (a chunk every 20 ms), so re-creating the 1 MiB already
    on disk takes about 1.3 s, with no new byte for the readers, against a 0.5 s
    stall_timeout: the re-check counts as progress, and nobody declares a stall."""
    kill_at = TOTAL // 2
    deterministic = Payload(SEED, TOTAL, CHUNK)
    slow = Payload(SEED, TOTAL, CHUNK, pace=0.02)
    got: list[tuple[Any, ...]] = []

    def fetch_after_kill(_: streamcache.StreamCache) -> None:
        cache = streamcache.StreamCache(
            cache_dir, liveness=0.2, stall_timeout=0.5, cleanup_interval=0
        )
        sink = xproc.HashSink()
        got.append((cache.fetch("slow-key", sink, slow, timeout=WAIT, resume=True), sink))

    readers = [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, "slow-key", "thread", kill_at, readers, 30.0, fetch_after_kill
    )
    want = payload_sha(SEED, TOTAL, CHUNK)
    ((result, sink),) = got
    assert result == (TOTAL, False) and sink.hexdigest() == want
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)


def test_a_resumable_call_that_cannot_take_the_entry_over_leaves_it_to_its_readers(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """A call with resume arrives after the kill, before the readers' 3 s liveness
    check, while the data file's lock is held (here by this test, shared, as a
    reader's liveness probe holds it for a moment): it cannot take the entry over, and
    must not discard it under the readers either. It runs its create uncached (a
    bypass); once the lock is free the readers resume the entry themselves."""
    kill_at = TOTAL // 2
    deterministic = Payload(SEED, TOTAL, CHUNK)
    key = "held-key"
    got: list[tuple[Any, ...]] = []

    def fetch_while_held(cache: streamcache.StreamCache) -> None:
        rec = cache._store.index.read(key_hash(key))
        assert rec is not None
        fd = os.open(cache._store.files.path(rec.file), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            sink = xproc.HashSink()
            got.append((cache.fetch(key, sink, deterministic, timeout=WAIT, resume=True), sink))
        finally:
            os.close(fd)

    readers = [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, key, "thread", kill_at, readers, 3.0, fetch_while_held
    )
    want = payload_sha(SEED, TOTAL, CHUNK)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)
    ((result, sink),) = got
    assert sink.hexdigest() == want and result == (TOTAL, True), result


def test_a_takeover_interrupted_before_its_record_is_written_is_undone(
    cache_dir: Path, spawn: SpawnContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call with resume takes the entry over at its lookup and is interrupted (an
    exception out of a signal handler, put here at the record's write) after it named
    itself producer and renamed the data file: both are undone, so the readers find
    the dead producer's entry as it was at their next check and resume it themselves,
    instead of waiting on a live process that holds no lock."""
    kill_at = TOTAL // 2
    deterministic = Payload(SEED, TOTAL, CHUNK)
    key = "interrupted-key"
    raised: list[BaseException] = []

    def interrupted_fetch(cache: streamcache.StreamCache) -> None:
        def interrupted(rec: Record) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(cache._store.index, "write", interrupted)
        try:
            cache.fetch(key, xproc.HashSink(), deterministic, timeout=WAIT, resume=True)
        except KeyboardInterrupt as exc:
            raised.append(exc)
        finally:
            monkeypatch.undo()

    readers = [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, key, "thread", kill_at, readers, 3.0, interrupted_fetch
    )
    assert raised, "the takeover was not interrupted"
    want = payload_sha(SEED, TOTAL, CHUNK)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)


def test_the_channel_sweep_leaves_a_dead_producers_channel_to_its_resumable_readers(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    """The sweep of /dev/shm at the end of a cleanup pass spares the channels of the
    entries it found in the index; an entry made after the pass listed the keys is
    not among them. Its producer dead, its channel is left to its live resumable
    readers all the same (they take it over by those names)."""
    kill_at = TOTAL // 2
    deterministic = Payload(SEED, TOTAL, CHUNK)

    def sweep(cache: streamcache.StreamCache) -> None:
        sweep_channels(cache._store.prefix, set(), time.time())

    readers = [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, "swept-key", "thread", kill_at, readers, 3.0, sweep
    )
    want = payload_sha(SEED, TOTAL, CHUNK)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)


def test_a_cleanup_pass_leaves_a_dead_producers_entry_to_its_resumable_readers(
    cache_dir: Path, spawn: SpawnContext
) -> None:
    kill_at = TOTAL // 2
    deterministic = Payload(SEED, TOTAL, CHUNK)
    passes: list[streamcache.cache.GCReport] = []
    readers = [(mode, deterministic, True) for mode in MODES]
    reports, _ = _kill_mid_entry(
        cache_dir, spawn, "gc-key", "thread", kill_at, readers, 1.0, lambda c: passes.append(c.gc())
    )
    assert passes[0].discarded == 0, passes
    want = payload_sha(SEED, TOTAL, CHUNK)
    for (mode, _, _), report in zip(readers, reports, strict=True):
        assert report[:3] == ("ok", TOTAL, want), (mode, report)
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    assert cache.gc().discarded == 0
    assert len(xproc.data_files(cache_dir)) == 1  # the finished entry, nothing else


def _prefix_sha(n: int) -> str:
    import hashlib

    return hashlib.sha256(xproc.payload_bytes(SEED, TOTAL, CHUNK)[:n]).hexdigest()
