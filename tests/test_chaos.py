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


def test_zipf_keys_span_zero_to_the_largest_size() -> None:
    keys = chaos.zipf_keys(64, 64 * chaos.MiB)
    sizes = [chaos.content_size(k) for k in keys]
    assert min(sizes) == 0 and 0 < max(sizes) <= 64 * chaos.MiB
    assert max(sizes) > 16 * chaos.MiB  # log-uniform: the large end is reached
    assert len(chaos.content(keys[1])) == sizes[1]


def test_long_stress_run_is_clean(tmp_path: Path) -> None:
    """20 seconds of the long stress run (README: how to run it for ten minutes): Zipf
    keys of 0 to 4 MiB under a 2 MiB budget (eviction and bypass), kill -9 of producers
    and readers, SIGSTOP/SIGCONT of producers, the signal storm; every served byte is
    verified, and one gc leaves nothing in /dev/shm and no data file."""
    summary = chaos.run(
        str(tmp_path / "cache"),
        seconds=20.0,
        workers=8,
        seed=20261203,
        logdir=str(tmp_path / "logs"),
        kill_interval=0.5,
        signal_storm=20.0,
        keys=24,
        max_size=4 * chaos.MiB,
        max_bytes=2 * chaos.MiB,
        stop_interval=0.7,
    )
    report = summary.format()
    assert summary.violations == [], report
    c = summary.counters
    assert c["ok"] > 0 and c["creates_started"] > 0 and c["bytes_verified"] > 0, report
    assert summary.kills > 0 and summary.stops > 0, report
    assert c["unexpected"] == 0, report
    assert summary.info["left_in_dev_shm"] == 0 and summary.info["left_data_files"] == 0, report
