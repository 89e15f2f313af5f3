"""Start-up stays light: ``import streamcache``, a cache made without metrics, and
``streamcache run`` (a miss and a hit) import none of the costly modules that only some
uses need (prometheus_client for metrics, psutil off Linux, asyncio for astream, logging
for a log line, dataclasses for a Config, ...). Each check runs in a fresh interpreter
and reads its ``sys.modules``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WAIT = 60.0

# Imported only when used: metrics given a registry, a liveness check off Linux,
# astream, a log line, a Config, ``--version``, ``demo``, a NullCache's stream or a
# bypassed miss (queue), a write that must wait (select); and typing, which only type
# checkers need (``streamcache.Writer`` and ``Create`` import it at their first use;
# from Python 3.14 the named tuples are typing's, see ipc.tuples).
LAZY = (
    "prometheus_client",
    "psutil",
    "asyncio",
    "concurrent.futures",
    "logging",
    "dataclasses",
    "importlib.metadata",
    "multiprocessing",
    "queue",
    "select",
    *(("typing",) if sys.version_info < (3, 14) else ()),
)


# Nor, on a hit, by the git hook, which runs at every fetch: the parser (argparse), ctypes
# (for futex waits), OpenSSL (hashlib's), and what runs a command or buffers its stdin.
HOOK_LAZY = (*LAZY, "argparse", "gettext", "ctypes", "_hashlib", "subprocess", "tempfile")


def loaded_after(
    code: str,
    *argv: str,
    lazy: tuple[str, ...] = LAZY,
    stdin: Path | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """The ``lazy`` modules loaded once ``code`` ran in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {lazy} if m in sys.modules]))"
    with open(stdin if stdin is not None else os.devnull, "rb") as given:
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv],
            stdin=given,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=True,
            env=env,
        )
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_import_streamcache_loads_none_of_them() -> None:
    assert loaded_after("import streamcache") == []


def test_a_cache_without_metrics_loads_none_of_them(cache_dir: Path) -> None:
    code = """
import io, sys
from streamcache import StreamCache
cache = StreamCache(sys.argv[1], registry=None, cleanup_interval=0)
for _ in range(2):  # a miss, then a hit
    out = io.BytesIO()
    cache.fetch("k", out, lambda w: [b"x" * 100_000])
    assert out.getvalue() == b"x" * 100_000
cache.gc()
cache.stop()
"""
    assert loaded_after(code, str(cache_dir)) == []


def test_streamcache_run_loads_none_of_them_on_a_miss_or_a_hit(
    cache_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.write_bytes(bytes(range(256)) * 256)
    # The command's output goes to a file: stdout carries the probe's answer.
    code = """
import sys
from streamcache.cli import main
with open(sys.argv[2], "wb") as out:
    sys.stdout.flush()
    saved = sys.stdout
    sys.stdout = out
    status = main(["run", "--dir", sys.argv[1], "--", "cat", sys.argv[3]])
    sys.stdout = saved
assert status == 0, status
"""
    for outcome in ("miss", "hit"):
        got = tmp_path / outcome
        assert loaded_after(code, str(cache_dir), str(got), str(data)) == [], outcome
        assert got.read_bytes() == data.read_bytes(), outcome


def test_metrics_still_load_prometheus_client_when_given_a_registry(cache_dir: Path) -> None:
    code = """
import io, sys
from streamcache import StreamCache
from prometheus_client import REGISTRY
cache = StreamCache(sys.argv[1], cleanup_interval=0)  # the default registry
cache.fetch("k", io.BytesIO(), lambda w: [b"x"])
cache.stop()
value = REGISTRY.get_sample_value(
    "streamcache_fetches_total", {"dir": sys.argv[1], "outcome": "miss"}
)
assert value == 1.0, value
"""
    assert "prometheus_client" in loaded_after(code, str(cache_dir))


def test_config_loads_dataclasses_at_its_first_use() -> None:
    code = """
import sys
import streamcache
assert "dataclasses" not in sys.modules
from streamcache import Config
import dataclasses
assert [f.name for f in dataclasses.fields(Config)][:2] == ["dir", "enabled"]
assert streamcache.Config is Config
"""
    assert "dataclasses" in loaded_after(code)


def test_the_git_hook_imports_no_other_command() -> None:
    """The hook runs at every fetch: its parser is built alone, without the modules of
    run, stats and demo (nor any LAZY module)."""
    code = """
import sys
from streamcache.cli.parser import build_parser
args = build_parser("git-pack-objects-hook").parse_args(
    ["git-pack-objects-hook", "--dir", "d", "--", "git", "pack-objects", "--stdout"]
)
assert args.argv[-2:] == ["pack-objects", "--stdout"], args.argv
others = ("streamcache.cli.run", "streamcache.cli.stats", "streamcache.cli.demo")
assert not [m for m in others if m in sys.modules], sys.modules.keys()
"""
    assert loaded_after(code) == []


def test_a_git_hook_hit_loads_none_of_them(cache_dir: Path, tmp_path: Path) -> None:
    """A miss stores the pack of a ``git`` that prints one (first in the PATH, as
    upload-pack's exec-path is), then the same request is a hit."""
    pack = tmp_path / "pack"
    pack.write_bytes(bytes(range(256)) * 256)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    git = bin_dir / "git"
    git.write_text(f'#!/bin/sh\ncat "{pack}"\n')
    git.chmod(0o755)
    request = tmp_path / "request"
    request.write_bytes(b"0123456789abcdef0123456789abcdef01234567\n--not\n\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    # The pack goes to a file: stdout carries the probe's answer.
    code = """
import sys
from streamcache.cli import main
with open(sys.argv[2], "wb") as out:
    sys.stdout.flush()
    saved = sys.stdout
    sys.stdout = out
    status = main(
        ["git-pack-objects-hook", "--dir", sys.argv[1], "--min-occurrences", "0",
         "git", "pack-objects", "--revs", "--thin", "--stdout", "--delta-base-offset"]
    )
    sys.stdout = saved
assert status == 0, status
"""
    for outcome in ("miss", "hit"):
        got = tmp_path / outcome
        loaded = loaded_after(
            code, str(cache_dir), str(got), lazy=HOOK_LAZY, stdin=request, env=env
        )
        assert got.read_bytes() == pack.read_bytes(), outcome
    assert loaded == []
    counts = json.loads(
        subprocess.run(
            [sys.executable, "-m", "streamcache", "stats", "--dir", str(cache_dir), "--json"],
            capture_output=True,
            timeout=WAIT,
            check=True,
            env=env,
        ).stdout
    )["commands"]
    assert (counts["miss"], counts["hit"]) == (1, 1)


def test_start_up_compiles_no_annotation() -> None:
    """typing.NamedTuple compiles each string annotation, and the first compile() of a
    process sets up the interpreter's AST types: the package and the hook's modules
    define their named tuples without it (ipc.tuples), and no TypeVar with a string
    bound exists at run time."""
    code = """
import builtins
evals = []
real = builtins.compile
def counting(source, filename, mode, *args, **kwargs):
    if mode == "eval":
        evals.append(source)
    return real(source, filename, mode, *args, **kwargs)
builtins.compile = counting
import streamcache, streamcache.cli.dispatch, streamcache.cli.hook
assert evals == [], evals
"""
    assert loaded_after(code) == []


def test_writer_and_create_load_typing_at_their_first_use() -> None:
    """``streamcache.Writer`` is typing's Protocol and ``Create`` the callable type of
    create, as type checkers see them, once a program asks for them."""
    code = """
import sys
import streamcache
assert sys.version_info >= (3, 14) or "typing" not in sys.modules
from streamcache import Create, Writer
import typing
assert typing.Protocol in Writer.__mro__ and Writer._is_protocol
assert Create.__args__[0] is Writer, Create.__args__
assert streamcache.Writer is Writer and streamcache.Create is Create
"""
    assert loaded_after(code, lazy=("typing",)) == ["typing"]
