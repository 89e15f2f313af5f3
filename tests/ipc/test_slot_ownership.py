"""A reader slot's words are written only by the reader that holds it, while it holds it.

A ``close()`` from another thread (an astream cancelled mid-wait) releases the slot
while the reading thread may still be about to clear its "waiting" flag or publish a
position. Once released, the slot may belong to another reader: a late write from the
old one would clear the new owner's flag (a lost wake-up) or fake its position.
"""

from __future__ import annotations

import threading
from pathlib import Path

import ipc
import streamcache


def test_a_released_slot_takes_no_write_from_its_old_holder(cache_dir: Path) -> None:
    cache_dir.mkdir()
    name = "/" + ipc.new_base(ipc.prefix_for(cache_dir)) + "s"
    me = ipc.current_process()
    seg = ipc.Segment.create(name, me, slots=4)
    try:
        old = seg.claim_slot(me)
        assert old is not None
        old.set_waiting(True)
        assert old.release()
        new = seg.claim_slot(me)
        assert new is not None and new.index == old.index  # the slot changed owner
        new.set_position(5)
        new.set_waiting(True)
        old.set_waiting(False)  # the old holder's thread, late
        old.set_position(999)
        assert not old.release(), "released once only"
        info = seg.slot_info(new.index)
        assert info is not None and (info.position, info.waiting) == (5, True)
    finally:
        seg.close()
        seg.unlink()


def test_a_reader_closed_from_another_thread_leaves_the_next_owner_alone(
    cache_dir: Path,
) -> None:
    """Through the cache: a reader waiting in one thread is closed from another; a new
    reader takes its slot and waits; the old thread's exit must not touch the slot."""
    cache = streamcache.StreamCache(cache_dir, liveness=0.2, cleanup_interval=0)
    gate = threading.Event()

    def create(w: object) -> None:
        w.write(b"x")  # type: ignore[attr-defined]
        gate.wait(20)
        w.write(b"y")  # type: ignore[attr-defined]

    creator = cache.stream("k", create, timeout=20)
    try:
        assert creator.read(1) == b"x"
        first = cache.stream("k", create, timeout=20)
        assert first.read(1) == b"x"
        slot = first._source._slot  # type: ignore[attr-defined]
        index = slot.index
        errors: list[BaseException] = []

        def read_on() -> None:
            try:
                first.read(1)
            except BaseException as exc:  # closed under it: ValueError
                errors.append(exc)

        t = threading.Thread(target=read_on)
        t.start()
        seg = creator._source._seg  # type: ignore[attr-defined]
        deadline = threading.Event()
        for _ in range(2000):  # bounded: until the reading thread sleeps ("waiting")
            info = seg.slot_info(index)
            if info is not None and info.waiting:
                break
            deadline.wait(0.001)
        first.close()
        second = cache.stream("k", create, timeout=20)
        assert second._source._slot.index == index  # type: ignore[attr-defined]
        second._source._slot.set_waiting(True)  # type: ignore[attr-defined]
        t.join(10)
        assert not t.is_alive()
        info = seg.slot_info(index)
        assert info is not None and info.waiting, "the old reader wrote to its next owner's slot"
        second._source._slot.set_waiting(False)  # type: ignore[attr-defined]
        gate.set()
        assert second.read() == b"xy"
        second.close()
    finally:
        gate.set()
        creator.close()
        cache.wait_producers(10)
