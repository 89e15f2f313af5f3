"""Every ```python block of README.md and of the docs site's pages runs as pasted: each
in a fresh interpreter (this one's), in an empty temporary working directory, with TMPDIR
and HOME under the test's own temporary directory, bounded in time; it passes when it
exits 0. A snippet that stops working fails the suite.

A block that needs a running server or runs for long is marked with an HTML comment on the
line just before it (blank lines between are allowed), which the rendered page does not
show::

    <!-- snippet: skip (needs a running gunicorn) -->
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# Catches a hang only: each snippet takes about a second on a quiet machine.
BOUND = 120.0

_SKIP = re.compile(r"<!--\s*snippet:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
_OPEN = re.compile(r"^```python\s*$")


class Snippet(NamedTuple):
    where: str  # "path:line" of the opening fence, relative to the repository
    code: str
    skip: str | None  # the reason given in the skip marker, or None


def parse(text: str, where: str) -> list[Snippet]:
    """The ```python blocks of a Markdown text, each with the skip reason marked before it."""
    found: list[Snippet] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not _OPEN.match(lines[i]):
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise ValueError(f"{where}:{start + 1}: a ```python block that never closes")
        before = [line for line in lines[:start] if line.strip()]
        marker = _SKIP.fullmatch(before[-1].strip()) if before else None
        skip = marker["reason"] if marker else None
        found.append(Snippet(f"{where}:{start + 1}", "\n".join(lines[start + 1 : j]) + "\n", skip))
        i = j + 1
    return found


def collect() -> list[Snippet]:
    found: list[Snippet] = []
    for path in FILES:
        found += parse(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return found


SNIPPETS = collect()


def test_the_collector_finds_blocks_and_skip_markers() -> None:
    text = "\n".join(
        [
            "text",
            "```python",
            "print(1)",
            "```",
            "<!-- snippet: skip (needs a server) -->",
            "",
            "```python",
            "serve()",
            "```",
            "```sh",
            "echo not python",
            "```",
        ]
    )
    assert parse(text, "x.md") == [
        Snippet("x.md:2", "print(1)\n", None),
        Snippet("x.md:7", "serve()\n", "needs a server"),
    ]
    with pytest.raises(ValueError, match=r"x\.md:1: a ```python block that never closes"):
        parse("```python\nprint(1)\n", "x.md")
    # The pages do hold snippets that run (a broken parser would pass every page).
    assert sum(s.skip is None for s in SNIPPETS) >= 5
    assert any(s.where.startswith("README.md:") for s in SNIPPETS)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.where for s in SNIPPETS])
def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    if snippet.skip is not None:
        pytest.skip(snippet.skip)
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code, encoding="utf-8")
    work = tmp_path / "cwd"
    work.mkdir()
    # What a snippet makes with tempfile or under ~ (and does not remove) stays in tmp_path.
    temp, home = tmp_path / "tmp", tmp_path / "home"
    temp.mkdir()
    home.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "HOME": str(home)}
    env.pop("XDG_CACHE_HOME", None)
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BOUND,
        )
    except subprocess.TimeoutExpired:  # subprocess.run kills the child
        pytest.fail(f"{snippet.where}: the snippet ran for more than {BOUND:.0f} s")
    if done.returncode != 0:
        pytest.fail(
            f"{snippet.where}: the snippet exited {done.returncode}\n"
            f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}",
            pytrace=False,
        )
