"""A bounded run of tools/chaos.py: real worker processes, real kill -9, real shared memory.

The driver (see its docstring) checks every served byte against the key's fixed content,
the kinds of failures, hangs (by heartbeats), and, after every worker exited and one gc
pass, that nothing is left in /dev/shm and every index record is a sound finished entry.
"""

from __future__ import annotations

import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))  # spawn children inherit sys.path

import chaos  # noqa: E402


def test_content_is_fixed_and_position_dependent() -> None:
    """The check can fail: content differs per key and per block, so a shift is caught."""
    a, b = chaos.content(chaos.KEYS[5]), chaos.content(chaos.KEYS[6])
    assert a == chaos.content(chaos.KEYS[5])
    assert len(a) == chaos.content_size(chaos.KEYS[5]) > 2 * chaos.BLOCK
    assert a[: len(b)] != b[: len(a)]
    shifted = a[chaos.BLOCK :]
    assert chaos.first_difference(shifted, a) < chaos.BLOCK
    assert not a.startswith(shifted)
    assert chaos.first_difference(a[:100] + b"x" + a[101:], a) == 100


def test_chaos_run_is_clean(tmp_path: Path) -> None:
    """No violation under kill -9 and a storm of handled SIGUSR1 (100 Hz to every worker,
    interrupting readers' and producers' waits alike, as a server's log-reopen signal
    would)."""
    summary = chaos.run(
        str(tmp_path / "cache"),
        seconds=8.0,
        workers=4,
        seed=20240611,
        logdir=str(tmp_path / "logs"),
        kill_interval=0.4,
        signal_storm=100.0,
    )
    report = summary.format()
    assert summary.violations == [], report
    c = summary.counters
    # The run did what it is for: reads completed, creates ran, processes were killed.
    assert c["ok"] > 0, report
    assert c["creates_started"] > 0, report
    assert summary.kills > 0, report
    assert c["unexpected"] == 0, report
    assert summary.signals_sent > 0 and c["signals_handled"] > 0, report
