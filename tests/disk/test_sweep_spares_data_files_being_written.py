"""The cleanup sweep removes a data file that no record owns once it is older than
max_age, but never one its producer still holds locked: a new entry's file exists
before its record, and a producer descheduled for longer than max_age in between (a
loaded machine, max_age 0.2 s) had its file removed under it and failed with
FileNotFoundError."""

from __future__ import annotations

import os
import time
from pathlib import Path

from streamcache.cache import LAYOUT
from streamcache.disk.filestore import Filestore


def test_a_locked_data_file_survives_the_sweep_and_an_unlocked_one_does_not(
    tmp_path: Path,
) -> None:
    files = Filestore(str(tmp_path / LAYOUT))
    writing, wfd = files.create()  # locked, as a producer's
    dead, dfd = files.create()
    os.close(dfd)  # its producer is gone: the lock with it
    old = time.time() - 60
    for name in (writing, dead):
        os.utime(files.path(name), (old, old))
    try:
        assert files.sweep(time.time() - 1, set()) == 1
        assert os.path.exists(files.path(writing))
        assert not os.path.exists(files.path(dead))
    finally:
        os.close(wfd)
    # Once its producer lets go, it goes too.
    assert files.sweep(time.time() - 1, set()) == 1
    assert not os.path.exists(files.path(writing))
