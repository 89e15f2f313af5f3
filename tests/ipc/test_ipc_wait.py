"""ipc.wait and the channel's waits, on a clock that jumps: time passes between any
two readings (a loaded machine), and neither a wake-up nor such a jump may be taken
for something else."""

from __future__ import annotations

from pathlib import Path

import pytest

import ipc
from ipc.channel import Channel, unlink_channel


class JumpingClock:
    """Monotonic time that moves ``step`` seconds at every reading; sleeps take none."""

    def __init__(self, step: float) -> None:
        self.now = 1000.0
        self.step = step
        self.slept = 0

    def monotonic(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += 1


def _clock(j: JumpingClock) -> ipc.Clock:
    return ipc.Clock(monotonic=j.monotonic, sleep=j.sleep)


def test_the_check_falls_due_on_an_absolute_deadline() -> None:
    j = JumpingClock(0.0)
    w = ipc.Waiter(1.0, _clock(j))
    assert not w.check_due()
    j.now += 0.6
    assert not w.check_due()  # a wake-up in between does not move the check
    j.now += 0.6
    assert w.check_due()
    assert not w.check_due()


@pytest.mark.parametrize("deadline", [None, 10**9])
def test_a_check_falling_due_between_two_readings_is_no_deadline(
    tmp_path: Path, deadline: float | None
) -> None:
    """The check falls due between check_due and the sleep's length: that is a CHECK,
    never a DEADLINE (which once ended a fetch with TimeoutError long before its
    timeout under a 64-process storm)."""
    j = JumpingClock(0.7)
    prefix = ipc.prefix_for(tmp_path)
    ch = Channel.create(prefix, ipc.current_process(), 4)
    try:
        slot = ch.seg.claim_slot(ipc.current_process())
        w = ipc.Waiter(1.0, _clock(j))
        assert ch.wait_for_progress(slot, 0, w, deadline) is ipc.Wake.CHECK
        assert ch.wait_for_progress(None, 0, w, deadline) in (ipc.Wake.CHECK, ipc.Wake.PROGRESS)
    finally:
        ch.close()
        unlink_channel(ch.base)


def test_the_deadline_ends_a_wait(tmp_path: Path) -> None:
    j = JumpingClock(0.01)
    ch = Channel.create(ipc.prefix_for(tmp_path), ipc.current_process(), 4)
    try:
        w = ipc.Waiter(100.0, _clock(j))
        assert ch.wait_for_progress(None, 0, w, j.now + 0.05) in (
            ipc.Wake.PROGRESS,
            ipc.Wake.DEADLINE,
        )
        assert ch.wait_for_progress(None, 0, w, j.now - 1) is ipc.Wake.DEADLINE
    finally:
        ch.close()
        unlink_channel(ch.base)
