"""No wake-up is lost: reader processes sleep whenever they catch up while the producer
publishes one byte at a time. Each sleep's liveness check is far away, so a reader that
misses its wake-up sleeps until that check instead of being woken, and reports it.

Readers that take every write are paced by a producer that publishes the next byte
once every reader has the last one (it never blocks with readers asleep, so only the
ring for the offset they wait for can wake them). Readers that coalesce (each sleep
asks for several more bytes and never gives up early) and a mix of both run under
Gitaly's back pressure (window 0: the producer blocks until a reader has everything,
ringing every sleeper first). A lost wake-up is the bug coalescing risks: a producer
that rings only past some offsets, an offset compared off by one, a store and a load
reordered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import xproc
from xproc import expect

import ipc
from ipc.channel import Channel, full_fence, unlink_channel

READERS = 6
BYTES = 100  # one write each
PERIOD = 20.0  # each sleep's liveness check: far beyond any wake-up on a loaded machine


def _all_caught_up(ch: Channel, offset: int) -> None:
    """Block until every reader's position is ``offset`` (readers ring the writer's bell
    when they move while the producer waits)."""
    seg = ch.seg
    while True:
        if all(r.position >= offset for r in seg.reader_list()):
            return
        seg.set_producer_waiting(True)
        full_fence()
        behind = [r for r in seg.reader_list() if r.position < offset]
        if behind:
            # A reader that missed its ring moves only at its check, PERIOD later.
            rung = ch.writer_bell.wait(PERIOD / 2)
            assert rung, f"readers {behind} never caught up with {offset}: a lost wake-up"
        seg.set_producer_waiting(False)


@pytest.mark.parametrize(
    "aheads",
    [(1,) * READERS, (4,) * READERS, (1, 4) * (READERS // 2)],
    ids=["next-byte", "coalescing", "mixed"],
)
def test_every_sleeping_reader_is_woken(
    tmp_path: Path, spawn: Any, aheads: tuple[int, ...]
) -> None:
    ch = Channel.create(ipc.prefix_for(tmp_path), ipc.current_process(), 64)
    kids = []
    try:
        claim = spawn.Lock()
        outs = []
        for ahead in aheads:
            out = spawn.Queue()
            kid = spawn.Process(
                target=xproc.wakeup_reader,
                args=(ch.base, claim, BYTES, ahead, PERIOD),
                kwargs={"out": out},
            )
            kid.start()
            kids.append(kid)
            outs.append(out)
        for out in outs:
            expect(out, "ready", timeout=120)
        for offset in range(1, BYTES + 1):
            waiter = ipc.Waiter(PERIOD)
            readers = ch.publish(offset, waiter)
            if offset == BYTES:
                break  # (readers leave once they have the last byte)
            if max(aheads) == 1:
                _all_caught_up(ch, offset)
            else:
                # Held back until a reader moves; a check falling due in there means it
                # waited a whole period: its readers slept through their rings.
                producer = ipc.Waiter(PERIOD / 2)
                check = producer.next_check
                assert ch.hold_back(offset, 0, producer, readers) == len(aheads)
                assert producer.next_check == check, f"held back at {offset}: a lost wake-up"
        ch.seg.finish(BYTES)
        ch.ring_all()
        results = [expect(out, "done", timeout=4 * PERIOD) for out in outs]
        for kid in kids:
            kid.join(30)
            assert kid.exitcode == 0
        lost = [checks for checks, _ in results]
        assert lost == [0] * len(aheads), f"sleeps that missed their wake-up, by reader: {lost}"
        assert sum(sleeps for _, sleeps in results) > 0, "no reader ever slept: nothing tested"
    finally:
        for kid in kids:
            if kid.is_alive():
                kid.kill()
            kid.join(10)
        unlink_channel(ch.base)
        ch.close()
