"""streamcache demo: validated options, progress, and a summary that checks the cache."""

from __future__ import annotations

import re

import pytest
from cli_helpers import cli


def test_a_small_demo_passes_and_summarises() -> None:
    out = cli("demo", "--workers", "3", "--keys", "2", "--size", "4", "--rounds", "2")
    assert out.returncode == 0, out.stderr
    assert "result: OK" in out.stdout
    assert out.stdout.count("produced 1 time(s)") == 2  # one producer per key
    assert "fetches: 12, bytes served: 50331648 (48 MiB)" in out.stdout
    # Two entries of 4 MiB written to disk, served 12 times.
    assert "disk bytes written by producers: 8388608 (8 MiB); served 6.0x" in out.stdout
    assert "corrupt fetches: 0" in out.stdout
    assert re.search(r"back pressure: producers ran [\d.]+ s, [\d.]+ s \(\d+%\)", out.stdout)
    assert re.search(r"throughput: \d+ MiB/s", out.stdout)
    assert "IPC objects left after cleanup: 0" in out.stdout
    # Not a terminal: periodic progress lines, per worker, on stderr.
    assert "served" in out.stderr and "w2 " in out.stderr
    assert "\x1b[" not in out.stderr


@pytest.mark.parametrize(
    "option",
    [["--workers", "0"], ["--size", "-3"], ["--rounds", "0"], ["--keys", "0"], ["--size", "x"]],
)
def test_bad_options_are_usage_errors(option: list[str]) -> None:
    out = cli("demo", *option)
    assert out.returncode == 2
    assert f"argument {option[0]}" in out.stderr
    assert "result" not in out.stdout
