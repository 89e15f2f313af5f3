"""The doorbell's fallback for platforms without sem_timedwait (macOS).

Linux has timed waits, so the fallback is forced by switching the module's
capability flag: the only way to run that path here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import ipc
from ipc import doorbell
from ipc.naming import new_base, object_name


def test_polling_wait_times_out_and_wakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doorbell, "_TIMED_WAITS", False)
    name = object_name(new_base(ipc.prefix_for(tmp_path)), "r")
    bell = ipc.Doorbell.create(name)
    try:
        assert bell.wait(0.05) is False
        bell.ring()
        assert bell.wait(0.05) is True
        ringer = threading.Timer(0.05, bell.ring)
        ringer.start()
        assert bell.wait(10) is True
        ringer.join()
    finally:
        bell.close()
        bell.unlink()
