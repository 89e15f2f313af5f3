"""Cross-process primitives with no knowledge of caches.

- :mod:`ipc.naming`: short POSIX IPC names (<= 30 characters, so macOS works)
  carrying a prefix derived from an owner directory, and enumeration of a
  prefix's objects for cleanup.
- :mod:`ipc.liveness`: process identity as (pid, start time), so a reused pid is
  never mistaken for the process that died.
- :mod:`ipc.doorbell`: a named semaphore with timed waits, used to wake a sleeper
  in another process.
- :mod:`ipc.segment`: a shared-memory segment with a header written only by one
  producer and slots each written only by its reader.
"""

from ipc.doorbell import Doorbell
from ipc.liveness import ProcessId, current_process, is_alive, start_time
from ipc.naming import NAME_MAX, ObjectName, list_objects, new_base, prefix_for
from ipc.segment import (
    STATE_DONE,
    STATE_FAILED,
    STATE_WRITING,
    Segment,
    SegmentError,
)

__all__ = [
    "NAME_MAX",
    "STATE_DONE",
    "STATE_FAILED",
    "STATE_WRITING",
    "Doorbell",
    "ObjectName",
    "ProcessId",
    "Segment",
    "SegmentError",
    "current_process",
    "is_alive",
    "list_objects",
    "new_base",
    "prefix_for",
    "start_time",
]
