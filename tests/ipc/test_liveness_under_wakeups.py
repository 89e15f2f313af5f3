"""Liveness that nothing can starve (docs/design.md, "The cross-process protocol").

Every waiter checks the other side on its own absolute deadline, however often it is
woken: by handled signals (gunicorn's SIGUSR1, profilers, timers), by other readers
joining, failing or leaving, or spuriously. These tests wake the waiters as often as
real servers do and check the bound: a death is noticed within ``liveness`` plus a
margin for process scheduling on a loaded 2-core machine.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import NOTICE_MARGIN
from xproc import expect

pytestmark = pytest.mark.timeout(120)

# The defects caught here are far beyond the margin: a wait that restarts its clock at
# each signal of a 0.1 s storm never notices; twelve readers that notice one after
# another take 12 x liveness (12 s).
MARGIN = NOTICE_MARGIN


@contextmanager
def signal_storm(pids: list[int], period: float) -> Iterator[None]:
    """Send SIGUSR1 to ``pids`` every ``period`` seconds until the block ends."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(period):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


def _start(spawn: Any, target: Any, *args: Any) -> tuple[Any, Any]:
    out = spawn.Queue()
    p = spawn.Process(target=target, args=args, kwargs={"out": out})
    p.start()
    return p, out


def test_a_reader_under_a_signal_storm_notices_its_killed_producer(
    cache_dir: Path, spawn: Any
) -> None:
    import procs_liveness as procs

    liveness = 0.3
    wrote = spawn.Event()
    producer, pout = _start(spawn, procs.stalled_producer, str(cache_dir), "k", liveness, wrote)
    assert expect(pout, "created") == (True,)
    reader, rout = _start(spawn, procs.waiting_reader, str(cache_dir), "k", liveness)
    assert expect(rout, "first") == (procs.CHUNK,)
    with signal_storm([reader.pid], 0.1):
        time.sleep(0.3)  # let the storm run while the producer is alive (not a sync)
        producer.kill()
        killed = time.monotonic()
        how, when = expect(rout, "ended", timeout=30)
    producer.join(5)
    reader.join(10)
    assert how == "ProducerDied"
    assert when - killed <= liveness + MARGIN, f"noticed after {when - killed:.2f} s"


def test_a_window0_producer_under_a_signal_storm_notices_its_killed_reader(
    cache_dir: Path, spawn: Any
) -> None:
    import procs_liveness as procs

    liveness = 0.3
    go_alone = spawn.Event()
    producer, pout = _start(spawn, procs.window0_producer, str(cache_dir), "k", liveness, go_alone)
    assert expect(pout, "created") == (True,)
    reader, rout = _start(spawn, procs.attached_reader, str(cache_dir), "k", liveness)
    expect(rout, "attached")
    go_alone.set()
    expect(pout, "alone")
    with signal_storm([producer.pid], 0.1):
        time.sleep(0.3)  # the producer is blocked by its one live reader meanwhile
        reader.kill()
        killed = time.monotonic()
        msg = pout.get(timeout=30)
    reader.join(5)
    assert msg[0] == "broken", f"the producer never noticed: {msg!r}"
    assert msg[1] - killed <= liveness + MARGIN, f"noticed after {msg[1] - killed:.2f} s"
    producer.join(15)


def test_twelve_readers_of_a_killed_producer_all_notice_within_liveness(
    cache_dir: Path, spawn: Any
) -> None:
    """Each reader that raises ProducerDied leaves and rings the bell; that must not
    restart the others' clocks (they once noticed one after another, at 1, 2, 3... s)."""
    import procs_liveness as procs

    liveness = 1.0
    wrote = spawn.Event()
    producer, pout = _start(spawn, procs.stalled_producer, str(cache_dir), "k", liveness, wrote)
    assert expect(pout, "created") == (True,)
    readers = [
        _start(spawn, procs.waiting_reader, str(cache_dir), "k", liveness) for _ in range(12)
    ]
    for _, out in readers:
        assert expect(out, "first", timeout=60) == (procs.CHUNK,)
    producer.kill()
    killed = time.monotonic()
    delays = []
    for p, out in readers:
        how, when = expect(out, "ended", timeout=30)
        assert how == "ProducerDied"
        delays.append(when - killed)
        p.join(10)
    producer.join(5)
    print(f"notice after kill: median {statistics.median(delays):.3f} s, max {max(delays):.3f} s")
    assert max(delays) <= liveness + MARGIN, f"notice times {sorted(delays)}"
