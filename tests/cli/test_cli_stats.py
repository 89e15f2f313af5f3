"""streamcache stats and gc: they tell the truth about a cache and never create one."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import (
    WAIT,
    Launcher,
    cli,
    env,
    finish,
    readers_of_entries_in_flight,
    stats,
    wait_until,
)

import ipc
import streamcache
from streamcache.cli.parser import build_parser
from streamcache.cli.stats import cache_root, collect


@pytest.mark.parametrize("command", ["stats", "gc"])
def test_a_path_that_is_not_a_cache_is_status_2_and_is_never_created(
    tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "typo" / "cache"
    out = cli(command, "--dir", str(missing))
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert not (tmp_path / "typo").exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    out = cli(command, "--dir", str(plain))
    assert out.returncode == 2 and "not a streamcache cache" in out.stderr
    assert os.listdir(plain) == []
    afile = tmp_path / "file"
    afile.write_text("x")
    out = cli(command, "--dir", str(afile))
    assert out.returncode == 2 and "not a directory" in out.stderr


@pytest.mark.parametrize("command", ["stats", "gc"])
def test_streamcache_dir_names_the_default(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "from-env"
    out = subprocess.run(
        [sys.executable, "-m", "streamcache", command],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env={**env(), "STREAMCACHE_DIR": str(missing)},
    )
    assert out.returncode == 2 and str(missing) in out.stderr
    assert not missing.exists()


@pytest.fixture
def launch() -> Iterator[Launcher]:
    launcher = Launcher()
    yield launcher
    launcher.close()


def test_stats_of_an_entry_in_flight(launch: Launcher, cache_dir: Path, tmp_path: Path) -> None:
    g = launch.gated(tmp_path)
    args = ["run", "--dir", str(cache_dir), "--key", "report-2026", "--key-preview", "40"]
    args += ["--", *g.argv()]
    runner = launch.start(*args)
    wait_until(lambda: len(g.runs()) == 1, "the command to start")
    follower = launch.start(*args)
    wait_until(lambda: readers_of_entries_in_flight(cache_dir) == 2, "the follower to attach")
    try:
        # The gated command wrote once and waits: past the default --stalled-after (30 s,
        # reached on a busy machine) the entry would show as "stalled", not "writing".
        quiet_ok = ("--stalled-after", "3600")
        text = cli("stats", "--dir", str(cache_dir), *quiet_ok)
        as_json = cli("stats", "--dir", str(cache_dir), "--json", *quiet_ok)
    finally:
        g.open()
        results = finish([runner, follower])
    assert [rc for rc, _, _ in results] == [0, 0]
    assert text.returncode == 0, text.stderr
    (row,) = [line for line in text.stdout.splitlines() if "report-2026" in line]
    # The producer: the process the first invocation started to run the command.
    (producer,) = g.parents()
    assert " writing " in row and f"{producer} alive" in row and "2: " in row
    assert "total: 1 entries (1 writing)" in text.stdout
    doc = json.loads(as_json.stdout)
    assert doc["schema"] == 1 and doc["dir"] == str(cache_dir)
    (e,) = doc["entries"]
    assert e["key_preview"] == "report-2026" and e["key_length"] == len("report-2026")
    assert e["state"] == "writing" and e["size"] is None and e["written"] > 0
    assert e["producer"] == {"pid": producer, "alive": True}
    assert e["age"] >= 0 and 0 < e["expires_in"] <= 60
    assert len(e["readers"]) == 2 and all(r["alive"] for r in e["readers"])
    assert {r["pid"] for r in e["readers"]} == {producer, follower.pid}
    assert doc["totals"]["states"]["writing"] == 1 and doc["totals"]["readers"] == 2
    assert doc["totals"]["ipc_objects"] == 3
    # Finished: "done", with its size; no producer, no readers.
    (e,) = stats(cache_dir)["entries"]
    # (stdout in frames, with the command's end: a little more than its output)
    assert e["state"] == "done" and e["size"] == e["written"] > len(results[0][1])
    assert e["producer"] is None and e["readers"] == []


def test_an_entry_whose_producer_writes_nothing_while_a_reader_waits_is_stalled(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    """The producer (a gated command) writes nothing while the follower waits: "writing"
    until --stalled-after has passed since the data file's last write, then "stalled"."""
    g = launch.gated(tmp_path)
    args = ["run", "--dir", str(cache_dir), "--key", "slow", "--", *g.argv()]
    runner = launch.start(*args)
    wait_until(lambda: len(g.runs()) == 1, "the command to start")
    follower = launch.start(*args)
    wait_until(lambda: readers_of_entries_in_flight(cache_dir) == 2, "the follower to attach")

    def entry(stalled_after: float | None) -> dict[str, Any]:
        (e,) = collect(*cache_root(str(cache_dir)), stalled_after)["entries"]
        return e

    try:
        assert entry(None)["state"] == "writing"
        assert entry(3600.0)["state"] == "writing"
        wait_until(lambda: entry(0.2)["state"] == "stalled", "the entry to show stalled")
        e = entry(0.2)
        assert e["quiet"] >= 0.2 and e["producer"]["alive"]
        out = cli("stats", "--dir", str(cache_dir), "--stalled-after", "0.2")
        assert out.returncode == 0, out.stderr
    finally:
        g.open()
        results = finish([runner, follower])
    assert [rc for rc, _, _ in results] == [0, 0]
    assert "total: 1 entries" in out.stdout


def test_without_a_preview_an_entry_is_labelled_by_its_hash(cache_dir: Path) -> None:
    assert cli("run", "--dir", str(cache_dir), "--key", "secret", "--", "echo", "x").stdout
    out = cli("stats", "--dir", str(cache_dir))
    assert "secret" not in out.stdout
    (e,) = stats(cache_dir)["entries"]
    assert e["key_preview"] is None
    assert f"sha256:{e['key_sha256'][:16]}" in out.stdout


def test_expired_entries_are_shown_expired_and_collected(cache_dir: Path) -> None:
    # Made here, not by `streamcache run`: the process that runs the command collects
    # expired entries as it ends, which at load 70 came after the 250 ms.
    def create(w: streamcache.Writer) -> None:
        w.write(b"x\n")

    cache = streamcache.StreamCache(cache_dir, max_age=0.25, cleanup_interval=0)
    cache.fetch("expiring", io.BytesIO(), create)
    cache.stop()

    def states() -> list[str]:
        return [e["state"] for e in stats(cache_dir)["entries"]]

    wait_until(lambda: states() == ["expired"], "the entry to expire")
    assert " expired " in cli("stats", "--dir", str(cache_dir)).stdout
    out = cli("gc", "--dir", str(cache_dir))
    assert out.returncode == 0, out.stderr
    assert "removed 1 expired entry, 0 entries of dead producers" in out.stdout
    assert states() == []


def test_gc_counts_the_ipc_objects_of_a_dead_producer(
    launch: Launcher, cache_dir: Path, tmp_path: Path
) -> None:
    """The channel of an entry whose producer died goes with the entry: it is counted
    (it used to be removed uncounted, "IPC objects removed 0")."""
    g = launch.gated(tmp_path)
    # A long max-age: at load 70 the steps below outlasted the default, and gc counted
    # the entry as expired instead.
    args = ["run", "--dir", str(cache_dir), "--max-age", "1h", "--", *g.argv()]
    runner = launch.start(*args)
    wait_until(lambda: len(g.runs()) == 1, "the command to start")
    follower = launch.start(*args)
    try:
        wait_until(lambda: readers_of_entries_in_flight(cache_dir) == 2, "the follower")
        # The producer (the process the first invocation started to run the command) and
        # the follower at once, before the follower notices its producer died (within
        # 1 s) and drops the entry itself: the entry and its channel are then gc's.
        (producer,) = g.parents()
        os.kill(producer, signal.SIGKILL)
        follower.kill()
        runner.wait(WAIT)
        follower.wait(WAIT)
        (e,) = stats(cache_dir)["entries"]
        assert e["state"] == "failed" and "died" in e["error"]
        assert len(ipc.list_objects(ipc.prefix_for(cache_dir))) == 3
        out = cli("gc", "--dir", str(cache_dir))
    finally:
        finish([runner, follower])  # (the command, SIGTERMed as its runner died, ends too)
    assert out.returncode == 0, out.stderr
    assert "1 entry of a dead producer or garbage record" in out.stdout
    assert "3 IPC objects" in out.stdout
    assert stats(cache_dir)["entries"] == []
    assert ipc.list_objects(ipc.prefix_for(cache_dir)) == []


def test_watch_refreshes_until_interrupted(launch: Launcher, cache_dir: Path) -> None:
    assert cli("run", "--dir", str(cache_dir), "--", "echo", "x").returncode == 0
    watch = launch.start(
        "stats", "--dir", str(cache_dir), "--json", "--watch", "0.05", interruptible=True
    )
    assert watch.stdout is not None
    docs = [json.loads(watch.stdout.readline()) for _ in range(3)]
    assert [len(d["entries"]) for d in docs] == [1, 1, 1]
    assert docs[0]["time"] < docs[1]["time"] < docs[2]["time"]
    watch.send_signal(signal.SIGINT)
    ((rc, _, err),) = finish([watch])
    assert rc == 0, err


def test_help_has_no_rest_markup_and_every_option_is_explained() -> None:
    parser = build_parser()
    subparsers = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    for name, p in [("streamcache", parser), *subparsers.items()]:
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    for command in ([], ["run"], ["stats"], ["gc"], ["demo"]):
        out = cli(*command, "--help")
        assert out.returncode == 0
        assert "``" not in out.stdout and ":class:" not in out.stdout and ":func:" not in out.stdout
    assert "STREAMCACHE_DIR" in cli("--help").stdout
    assert "STREAMCACHE_DIR" in cli("stats", "--help").stdout
    version = cli("--version")
    assert (
        version.returncode == 0
        and version.stdout.strip() == f"streamcache {streamcache.__version__}"
    )


def test_stats_shows_garbage_as_invalid_and_never_hangs_on_it(cache_dir: Path) -> None:
    assert cli("run", "--dir", str(cache_dir), "--", "echo", "x").returncode == 0
    root = cache_dir / "v2"
    h = "ab" * 32
    (root / "entries" / "ab").mkdir(exist_ok=True)
    os.mkfifo(root / "entries" / "ab" / h)  # a FIFO where a finished entry goes
    (root / "entries" / "ab" / "foreign").write_bytes(b"not an entry")
    (root / "index" / "cd").mkdir(parents=True, exist_ok=True)
    os.symlink("9 garbage", root / "index" / "cd" / f"{'cd' * 32}.rec")
    out = cli("stats", "--dir", str(cache_dir), "--json", timeout=WAIT)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    states = sorted(e["state"] for e in doc["entries"])
    assert states == ["done", "invalid", "invalid", "invalid"]
    assert doc["totals"]["states"]["invalid"] == 3
    text = cli("stats", "--dir", str(cache_dir), timeout=WAIT)
    assert text.returncode == 0 and text.stdout.count(" invalid ") == 3
