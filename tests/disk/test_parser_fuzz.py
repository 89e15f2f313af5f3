"""Fuzzing the parsers of what the cache reads back from disk: records (Record.from_text,
fed from a symlink's target) and trailers (trailer_size, open_entry, written_so_far).

Whatever the input, a parser returns its documented "garbage" outcome (None, or 0 bytes
for written_so_far) and never raises; valid values round-trip. Example counts are kept
small and deadlines off: the suite runs under -n auto on four Pythons at once.
"""

from __future__ import annotations

import math
import os
import string
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipc
from streamcache.disk.filestore import (
    _MAGIC,
    SEALING_MODE,
    TRAILER,
    WRITING_MODE,
    Filestore,
    producer_pid,
    trailer_size,
    written_so_far,
)
from streamcache.disk.index import RECORD_VERSION, Record, _b36

KEY = "ab" * 32
FAST = settings(max_examples=300, deadline=None)
FILES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

hexdigits = st.text(alphabet="0123456789abcdef", min_size=1, max_size=20)
# Tokens near the valid ones, and junk: reaches every branch of the parser.
number_tokens = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "1_000", "0x10", "", "-0", "١٢", "zzzz"]),
    st.integers(0, 36**14).map(lambda n: _b36(n / 1000)),
    st.text(max_size=12),
)
file_tokens = st.one_of(
    st.builds(lambda a, b, c: f"{a}-{b}-{c}", hexdigits, hexdigits, hexdigits),
    st.builds(lambda a, b: f"{a}-{b}", hexdigits, hexdigits),
    st.sampled_from(["../x-1-0", "a/b-1-0", "x--0", "--", "x-0x1f-0", "x--5-0"]),
    st.text(max_size=40),
)
version_tokens = st.one_of(
    st.just(str(RECORD_VERSION)), st.integers(-5, 100).map(str), st.text(max_size=3)
)
boot_tokens = st.one_of(st.just(ipc.BOOT), hexdigits, st.text(max_size=10))
near_records = st.builds(
    lambda v, f, s, e, b, sep: sep.join([v, f, s, e, b]),
    version_tokens,
    file_tokens,
    number_tokens,
    number_tokens,
    boot_tokens,
    st.sampled_from([" ", "  ", "\t", " \x00"]),
)


def check_record(text: str) -> None:
    rec = Record.from_text(KEY, text)
    if rec is None:
        return
    # Anything accepted is fully sound: a file name that names its producer, finite
    # non-negative times, and the same record once written back.
    assert producer_pid(rec.file) == rec.pid
    assert "/" not in rec.file
    assert 0 <= rec.start < math.inf and 0 <= rec.expires < math.inf
    again = Record.from_text(KEY, rec.to_text())
    assert again is not None and again.file == rec.file and again.pid == rec.pid


@FAST
@given(st.text(max_size=120))
def test_record_parser_takes_any_text(text: str) -> None:
    check_record(text)


@FAST
@given(near_records)
def test_record_parser_takes_near_valid_text(text: str) -> None:
    check_record(text)


@FAST
@given(st.binary(max_size=100))
def test_record_parser_takes_any_link_target(raw: bytes) -> None:
    """os.readlink decodes a target's bytes with surrogateescape: lone surrogates too."""
    check_record(os.fsdecode(raw.replace(b"\x00", b"")))


times = st.floats(0, 2**40, allow_nan=False).map(lambda x: round(x, 3))


@FAST
@given(
    st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    st.integers(1, 2**22),
    st.integers(0, 2**32),
    times,
    times,
)
def test_record_round_trip(rand: str, pid: int, counter: int, start: float, expires: float) -> None:
    rec = Record(KEY, f"{rand}-{pid:x}-{counter:x}", pid, start, expires)
    assert Record.from_text(KEY, rec.to_text()) == rec


# -- trailers ---------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=40))
def test_trailer_parser_takes_any_bytes(tail: bytes) -> None:
    size = trailer_size(tail)
    if size is not None:
        assert len(tail) == TRAILER.size and tail.startswith(_MAGIC)
        assert TRAILER.pack(_MAGIC, size) == tail


@FAST
@given(st.integers(0, 2**64 - 1))
def test_trailer_round_trip(size: int) -> None:
    assert trailer_size(TRAILER.pack(_MAGIC, size)) == size


@FAST
@given(st.binary(min_size=8, max_size=8), st.integers(0, 2**64 - 1))
def test_a_trailer_of_another_magic_is_garbage(magic: bytes, size: int) -> None:
    expected = size if magic == _MAGIC else None
    assert trailer_size(TRAILER.pack(magic, size)) == expected


def entry_files() -> st.SearchStrategy[bytes]:
    """An entry file's bytes: sound, or sound and then damaged, or junk."""
    data = st.binary(max_size=300)
    sound = data.map(lambda d: d + TRAILER.pack(_MAGIC, len(d)))

    def damage(b: bytes, at: int, how: str) -> bytes:
        at = at % (len(b) + 1)
        if how == "cut":
            return b[:at]
        if how == "append":
            return b + b"\x00"
        if how == "flip" and at < len(b):
            return b[:at] + bytes([b[at] ^ 0xFF]) + b[at + 1 :]
        return b

    damaged = st.builds(
        damage, sound, st.integers(0, 400), st.sampled_from(["cut", "append", "flip"])
    )
    wrong_size = st.builds(
        lambda d, n: d + TRAILER.pack(_MAGIC, n), data, st.integers(0, 2**64 - 1)
    )
    return st.one_of(sound, damaged, wrong_size, st.binary(max_size=64))


@FILES
@given(entry_files(), st.sampled_from([-1, 0, 100, 1 << 20]))
def test_open_entry_serves_only_sound_files(content: bytes, read_up_to: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        files = Filestore(root)
        path = files.entry_path(KEY)
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(content)
        fin = files.open_entry(KEY, read_up_to)
        if fin is None:
            # Refused: so it is not a sound entry.
            body = content[: -TRAILER.size]
            assert len(content) < TRAILER.size or trailer_size(content[-16:]) != len(body)
            return
        try:
            assert fin.size == len(content) - TRAILER.size
            assert trailer_size(content[-TRAILER.size :]) == fin.size
            if fin.data is not None:
                assert fin.data == content[: fin.size]
            else:
                assert os.pread(fin.fd, len(content) + 1, 0) == content
        finally:
            if fin.fd >= 0:
                os.close(fin.fd)


@FILES
@given(entry_files(), st.sampled_from([WRITING_MODE, SEALING_MODE]))
def test_written_so_far_never_counts_a_trailer_byte(content: bytes, mode: int) -> None:
    with tempfile.TemporaryFile() as f:
        f.write(content)
        f.flush()
        os.fchmod(f.fileno(), mode)
        n = written_so_far(f.fileno())
    if mode == WRITING_MODE:
        assert n == len(content)  # only the entry's bytes are in it yet
    else:
        assert n in (0, len(content) - TRAILER.size)
        if n:
            assert trailer_size(content[-TRAILER.size :]) == n


def test_the_garbage_outcome_is_reachable() -> None:
    """The checks above can fail: a sound record and trailer parse, garbage does not."""
    name = f"{'0' * 16}-{os.getpid():x}-0"
    assert Record.from_text(KEY, f"{RECORD_VERSION} {name} 1a 2 {ipc.BOOT}") is not None
    assert Record.from_text(KEY, f"{RECORD_VERSION + 1} {name} 1a 2 {ipc.BOOT}") is None
    assert Record.from_text(KEY, f"{RECORD_VERSION} {name} 1a 2") is None
    assert trailer_size(TRAILER.pack(_MAGIC, 7)) == 7
    assert trailer_size(TRAILER.pack(b"SCdone\x00\x02", 7)) is None
    assert set(string.hexdigits) >= set(name.replace("-", ""))
