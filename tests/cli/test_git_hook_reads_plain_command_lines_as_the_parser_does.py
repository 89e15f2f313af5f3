"""The git hook reads the command lines upload-pack gives it without building the parser
(argparse costs more than a cache hit): each one it reads gives what the parser gives,
and everything else (help, abbreviations, bad values, '--', no command) is left to the
parser, whose messages and exit statuses stay as they were."""

from __future__ import annotations

import os

import pytest
from cli_helpers import cli

from streamcache.cli.hook import (
    DEFAULT_MAX_AGE,
    DEFAULT_MIN_OCCURRENCES,
    Request,
    quick,
    request_of,
)
from streamcache.cli.parser import build_parser

HOOK = "git-pack-objects-hook"
GIT = ["git", "pack-objects", "--revs", "--thin", "--stdout", "--delta-base-offset"]
SHALLOW = ["git", "--shallow-file", "", "pack-objects", "--stdout", "--shallow"]


def parsed(words: list[str]) -> Request:
    return request_of(build_parser(HOOK).parse_args([HOOK, *words]))


@pytest.mark.parametrize(
    "words",
    [
        GIT,
        SHALLOW,
        ["--dir", "/var/cache/git", *GIT],
        ["--dir=~/cache", *GIT],
        ["--dir", "~/cache", "--max-age", "90", "--min-occurrences", "0", *GIT],
        ["--max-age=5m", "--max-bytes=2G", "--dir", "d", *GIT],
        ["--max-bytes", "500M", "--max-bytes", "1000", *GIT],  # the last one wins
        ["--min-occurrences", "3", "--dir", "a", "--dir", "b", *GIT],
        ["--dir", "d", "git", "pack-objects", "--dir", "x", "--stdout"],  # all git's
        ["--dir=", *GIT],
        ["--dir", "d", "cat"],  # not cacheable: run as it is, by serve
    ],
)
def test_what_it_reads_matches_the_parser(words: list[str]) -> None:
    request = quick(words)
    assert request is not None
    assert request.fields() == parsed(words).fields()


def test_the_defaults_are_the_parsers() -> None:
    request = quick(GIT)
    assert request is not None
    home = os.path.expanduser("~")
    assert request.fields() == (GIT, None, DEFAULT_MAX_AGE, DEFAULT_MIN_OCCURRENCES, None)
    assert quick(["--dir=~/c", *GIT]).fields()[1] == f"{home}/c"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "words",
    [
        [],
        ["--dir", "d"],  # no command
        ["-h"],
        ["--help"],
        ["--max-a", "5", *GIT],  # an abbreviation: argparse's business
        ["--max-age", "0", *GIT],
        ["--max-age", "soon", *GIT],
        ["--min-occurrences", "-1", *GIT],
        ["--max-bytes", "lots", *GIT],
        ["--dir", *GIT[1:]],  # --dir's value would be an option
        ["--dir"],
        ["--", *GIT],
        ["--verbose", *GIT],
        ["-", *GIT],
    ],
)
def test_anything_else_is_left_to_the_parser(words: list[str]) -> None:
    assert quick(words) is None


@pytest.mark.parametrize(
    ("words", "status", "says"),
    [
        (["--max-age", "0", *GIT], 2, "invalid duration '0': must be more than 0"),
        (["--max-bytes", "lots", *GIT], 2, "invalid size 'lots'"),
        (["--dir", "d"], 2, "needs the command git gives"),
        (["--bogus", *GIT], 2, "unrecognized arguments"),
    ],
)
def test_the_parser_still_reports_bad_command_lines(
    words: list[str], status: int, says: str
) -> None:
    done = cli(HOOK, *words)
    assert done.returncode == status, done.stderr
    assert says in done.stderr
