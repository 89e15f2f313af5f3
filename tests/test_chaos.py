"""A bounded run of tools/chaos.py: real worker processes, real kill -9, real shared memory.

The driver (see its docstring) checks every served byte against the key's fixed content,
the kinds of failures, hangs (by heartbeats), and, after every worker exited and one gc
pass, that nothing is left in /dev/shm and every index record is a sound finished entry.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))  # spawn children inherit sys.path

import chaos  # noqa: E402

# The runs keep chaos.HANG and chaos.STARTUP, bounds generous for a busy machine; the
# tests' own timeouts leave room for a run that found hangs (their stack dumps, exits).


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


@pytest.mark.timeout(900)
def test_chaos_run_is_clean(tmp_path: Path) -> None:
    """No violation under kill -9 and a storm of handled SIGUSR1 (100 Hz to every worker,
    interrupting readers' and producers' waits alike, as a server's log-reopen signal
    would). Every call on half the keys passes resume=True: a killed producer's entry is
    carried on by one of its readers, and none of them is cut off; the run goes on (up
    to 300 s) until an entry was resumed. (Plain readers of the same entries are the
    command line's, --resume-share below 1.)"""
    opts = chaos.Options(
        seconds=8.0,
        workers=4,
        seed=20240611,
        kill_interval=0.4,
        signal_storm=100.0,
        resume_share=1.0,
        min_takeovers=1,
        max_seconds=300.0,
    )
    summary = chaos.run(str(tmp_path / "cache"), opts, str(tmp_path / "logs"))
    report = summary.format()
    assert summary.violations == [], report
    c = summary.counters
    # The run did what it is for: reads completed, creates ran, processes were killed.
    assert c["ok"] > 0, report
    assert c["creates_started"] > 0, report
    assert summary.kills > 0, report
    assert c["unexpected"] == 0, report
    assert summary.signals_sent > 0 and c["signals_handled"] > 0, report
    assert c["resume_ok"] > 0 and c["takeovers"] > 0, report
    assert c["resume_cut_off"] == 0, report


def test_zipf_keys_span_zero_to_the_largest_size() -> None:
    keys = chaos.zipf_keys(64, 64 * chaos.MiB)
    sizes = [chaos.content_size(k) for k in keys]
    assert min(sizes) == 0 and 0 < max(sizes) <= 64 * chaos.MiB
    assert max(sizes) > 16 * chaos.MiB  # log-uniform: the large end is reached
    assert len(chaos.content(keys[1])) == sizes[1]


@pytest.mark.timeout(900)
def test_long_stress_run_is_clean(tmp_path: Path) -> None:
    """20 seconds of the long stress run (docs/contributing.md: how to run it for ten minutes): Zipf
    keys of 0 to 4 MiB under a 128 KiB budget (eviction, and misses that bypass the cache
    all the time), astream-heavy (40% of the operations), kill -9 of producers and
    readers, SIGSTOP/SIGCONT of producers, the signal storm; every served byte is
    verified, and one gc leaves nothing in /dev/shm and no data file. A busy machine runs
    fewer operations: the run goes on (up to 300 s) until 20 operations bypassed."""
    opts = chaos.Options(
        seconds=20.0,
        workers=8,
        seed=20261203,
        kill_interval=0.5,
        signal_storm=20.0,
        keys=24,
        max_size=4 * chaos.MiB,
        max_bytes=128 * 1024,
        stop_interval=0.7,
        astream_share=0.4,
        min_bypassed=20,
        max_seconds=300.0,
    )
    summary = chaos.run(str(tmp_path / "cache"), opts, str(tmp_path / "logs"))
    report = summary.format()
    assert summary.violations == [], report
    c = summary.counters
    assert c["ok"] > 0 and c["creates_started"] > 0 and c["bytes_verified"] > 0, report
    assert summary.bypassed >= 20 and c["bypassed_ok"] > 0, report
    assert c["bypassed_op_astream"] > 0 and c["empty_writes"] > 0, report
    assert summary.kills > 0 and summary.stops > 0, report
    assert c["unexpected"] == 0, report
    assert summary.info["left_in_dev_shm"] == 0 and summary.info["left_data_files"] == 0, report


def test_astream_share_weights_the_mix() -> None:
    weights = chaos.op_weights(0.5)
    assert weights[chaos.OPS.index("astream")] / sum(weights) == pytest.approx(0.5)
    default = chaos.op_weights(None)
    assert default[chaos.OPS.index("astream")] / sum(default) < 0.1
    with pytest.raises(ValueError):
        chaos.op_weights(1.5)


@pytest.mark.timeout(300)
def test_a_worker_slow_to_start_is_not_hung(tmp_path: Path) -> None:
    """On a busy machine spawning a worker and importing take seconds: the hang bound
    runs from a worker's first heartbeat, its start-up has a bound of its own."""
    opts = chaos.Options(
        seconds=1.0, workers=2, seed=7, kill_interval=0.0, hang=0.5, fault="slow-start"
    )
    summary = chaos.run(str(tmp_path / "cache"), opts, str(tmp_path / "logs"))
    report = summary.format()
    assert summary.violations == [], report
    assert summary.longest_startup >= chaos.SLOW_START > opts.hang, report


@pytest.mark.timeout(300)
def test_a_hung_worker_is_caught_and_named(tmp_path: Path) -> None:
    """The start-up bound does not hide a hang: a worker whose first operation blocks
    for good is reported with that operation (op and key), its phase and its stack."""
    opts = chaos.Options(seconds=3.0, workers=1, seed=7, kill_interval=0.0, hang=0.5, fault="hang")
    summary = chaos.run(str(tmp_path / "cache"), opts, str(tmp_path / "logs"))
    report = summary.format()
    # Each incarnation hangs: the first is caught in the run, a restarted one maybe at
    # the stop.
    assert summary.violations and all(v.startswith("HANG") for v in summary.violations), report
    hang = summary.violations[0]
    assert hang.startswith("HANG (main loop made no progress)"), report
    m = re.search(r"op#1 (\w+) key=(\S+) timeout=\S+ phase=reading", hang)
    assert m is not None and m[1] in chaos.OPS and m[2] in chaos.KEYS, report
    assert "_hang_for_good" in hang, report


@pytest.mark.timeout(300)
def test_a_worker_killed_by_a_signal_is_reported_with_its_threads_stacks(
    tmp_path: Path,
) -> None:
    """A worker that dies of SIGSEGV is a violation that quotes its stderr, where
    faulthandler wrote every thread's Python stack: the faulting access can be found
    from the report alone."""
    opts = chaos.Options(seconds=1.0, workers=1, seed=7, kill_interval=0.0, fault="segv")
    summary = chaos.run(str(tmp_path / "cache"), opts, str(tmp_path / "logs"))
    report = summary.format()
    assert summary.violations, report
    crash = summary.violations[0]
    assert "exit code -11" in crash or "exited with -11" in crash, report
    assert "Fatal Python error: Segmentation fault" in crash, report
    assert "in _crash" in crash, report
