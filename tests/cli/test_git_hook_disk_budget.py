"""The git hook's --max-bytes, the cache's disk budget, with real git: a fetch whose
miss finds the budget taken by stored packs evicts them first (the stored packs stay
within the budget plus one pack), and a fetch whose miss finds it taken by a pack in
flight runs pack-objects uncached, succeeds, and stores nothing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import test_git_fetches_share_pack_objects as shared
from cli_helpers import finish, stats, wait_until
from test_git_fetches_share_pack_objects import (
    GIT,
    WAIT,
    Server,
)

pytestmark = pytest.mark.skipif(GIT is None, reason="git is not installed")
origin = shared.origin  # the repository fixture (module-scoped) of those tests

BUDGET = "20K"  # less than any pack of the shared repository (about 2 MB)
BUDGET_BYTES = 20 * 1024
HELD = 30_000  # bytes of the first pack sent before it waits for the gate

# The git the hook runs: counts its runs; the first run sends HELD bytes of its pack,
# then waits (bounded) for the gate before sending the rest.
HOLDING_GIT = """#!/bin/sh
echo $$ >> "{runs}"
if mkdir "{held}" 2>/dev/null; then
    "{git}" "$@" > "{held}/pack" || exit $?
    head -c {first} "{held}/pack"
    i=0
    while [ ! -e "{gate}" ] && [ $i -lt 6000 ]; do sleep 0.05; i=$((i+1)); done
    tail -c +{rest} "{held}/pack"
    exit 0
fi
exec "{git}" "$@"
"""


def budgeted_server(tmp_path: Path, origin: Path, max_bytes: str | None) -> Server:
    """A Server whose hook has ``--max-bytes max_bytes`` (none: no budget)."""
    server = Server(tmp_path, origin)
    hook = tmp_path / "hook"
    script = hook.read_text()
    assert script.count('"$@"') == 1, script
    if max_bytes is not None:
        hook.write_text(script.replace('"$@"', f'--max-bytes {max_bytes} "$@"'))
    return server


def stored(server: Server) -> list[dict[str, object]]:
    return [e for e in stats(server.cache)["entries"] if e["state"] == "done"]


@pytest.mark.parametrize("max_bytes", [BUDGET, None])
def test_stored_packs_stay_within_the_budget_plus_one(
    tmp_path: Path, origin: Path, max_bytes: str | None
) -> None:
    server = budgeted_server(tmp_path, origin, max_bytes)
    try:
        server.clone_now(tmp_path / "full1")
        (full,) = stored(server)
        assert int(str(full["size"])) > BUDGET_BYTES
        server.clone_now(tmp_path / "shallow1", "--depth", "1")
        assert server.runs() == 2
        # With the budget, the shallow fetch's miss evicted the full pack first.
        assert len(stored(server)) == (1 if max_bytes else 2)
        if max_bytes:
            sizes = [int(str(e["size"])) for e in stored(server)]
            assert sum(sizes) <= BUDGET_BYTES + max(sizes)
        server.clone_now(tmp_path / "full2")
        assert server.runs() == (3 if max_bytes else 2)  # a miss again, or a hit
        assert len(stored(server)) == (1 if max_bytes else 2)
    finally:
        server.close()


def test_a_budget_taken_by_a_pack_in_flight_runs_the_next_fetch_uncached(
    tmp_path: Path, origin: Path
) -> None:
    server = budgeted_server(tmp_path, origin, BUDGET)
    try:
        git = tmp_path / "bin" / "git"
        git.write_text(
            HOLDING_GIT.format(
                runs=server.runs_file,
                held=tmp_path / "held",
                gate=server.gate,
                git=GIT,
                first=HELD,
                rest=HELD + 1,
            )
        )
        git.chmod(git.stat().st_mode | stat.S_IXUSR)
        first = server.clone(tmp_path / "full")

        def first_pack_held() -> bool:
            if not (server.cache / "v2").is_dir():
                return False
            entries = stats(server.cache)["entries"]
            return any(e["state"] == "writing" and e["written"] >= HELD for e in entries)

        wait_until(first_pack_held, "the first pack to hold the budget", WAIT)
        # Another request's miss finds the budget taken: pack-objects runs uncached.
        server.clone_now(tmp_path / "shallow1", "--depth", "1")
        assert first.poll() is None  # it did not wait for the pack in flight
        assert server.runs() == 2
        server.gate.touch()
        ((rc, _, err),) = finish([first], WAIT)
        assert rc == 0, err
        server.check(tmp_path / "full")
        wait_until(
            lambda: all(e["state"] != "writing" for e in stats(server.cache)["entries"]),
            "the first pack to be stored",
            WAIT,
        )
        assert len(stored(server)) == 1
        # The shallow pack was not stored: the same fetch runs pack-objects again.
        server.clone_now(tmp_path / "shallow2", "--depth", "1")
        assert server.runs() == 3
        counts = stats(server.cache)["commands"]
        assert counts["failed"] == 0
    finally:
        server.close()
