"""Run the test suite on a busy machine: beside ``stress-ng --cpu 8``, N times in a row.

The suite's bounds catch hangs, never speed: it must pass on a machine busy with other
work. This is the check, as a command (not part of the suite itself)::

    python tools/busy_suite.py                  # 3 rounds of `pytest -n auto -q`
    python tools/busy_suite.py --rounds 5 --cpu 16 -- -x tests/test_chaos.py

Everything after ``--`` goes to pytest. The load generator is started by this script,
stopped by its pid at the end (never by name), and the load average is printed beside
every round. Exit status: 0 when every round passed, 1 otherwise, 2 when stress-ng is
missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the test suite beside stress-ng.")
    parser.add_argument("--rounds", type=int, default=3, help="suite runs in a row (3)")
    parser.add_argument("--cpu", type=int, default=8, help="stress-ng --cpu workers (8)")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.cpu < 0:
        parser.error("--rounds must be >= 1 and --cpu >= 0")
    stress = shutil.which("stress-ng")
    if args.cpu and stress is None:
        print("stress-ng is not installed (apt-get install stress-ng)", file=sys.stderr)
        return 2
    pytest_args = args.pytest_args or ["-n", "auto", "-q", "-p", "no:cacheprovider"]
    load: subprocess.Popen[bytes] | None = None
    if args.cpu:
        assert stress is not None
        load = subprocess.Popen(
            [stress, "--cpu", str(args.cpu), "--quiet"],
            start_new_session=True,
            stderr=subprocess.DEVNULL,
        )
    # A SIGTERM (timeout, CI) unwinds like Ctrl-C, so the finally below stops the load.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    failed = 0
    try:
        for n in range(1, args.rounds + 1):
            before = os.getloadavg()[0]
            started = time.monotonic()
            print(f"round {n}/{args.rounds}: load {before:.1f} at start", flush=True)
            rc = subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT)
            took = time.monotonic() - started
            after = os.getloadavg()[0]
            verdict = "passed" if rc == 0 else f"FAILED (exit {rc})"
            print(f"round {n}: {verdict} in {took:.0f} s, load {before:.1f} -> {after:.1f}")
            failed += rc != 0
    finally:
        if load is not None:
            os.killpg(load.pid, signal.SIGTERM)
            try:
                load.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(load.pid, signal.SIGKILL)
                load.wait()
    print(
        f"{args.rounds - failed} of {args.rounds} rounds passed beside stress-ng --cpu {args.cpu}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
