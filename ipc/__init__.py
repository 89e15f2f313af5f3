"""Cross-process primitives with no knowledge of caches.

- :mod:`ipc.naming`: short POSIX IPC names (<= 30 characters, so macOS works)
  carrying a prefix derived from an owner directory, and enumeration of a
  prefix's objects for cleanup.
- :mod:`ipc.liveness`: process identity as (pid, start time), so a reused pid is
  never mistaken for the process that died; the boot's tag, and the probe of a
  kernel-held lock that a live producer keeps.
- :mod:`ipc.clock`: the one injectable clock (wall, monotonic, sleep).
- :mod:`ipc.digest`: sha256 without OpenSSL's start-up cost.
- :mod:`ipc.doorbell`: a named semaphore with timed waits; :mod:`ipc.futex`: a
  broadcast wake-up on a word of shared memory (Linux).
- :mod:`ipc.segment`: a shared-memory segment with a header written only by one
  producer and slots each written only by its reader (:class:`ReaderSlot`).
- :mod:`ipc.wait`: the liveness-aware wait: a check of the other side on its own
  absolute deadline, however often the waiter is woken.
- :mod:`ipc.channel`: a segment and its two bells, with the producer's
  back-pressure wait and the readers' wait for progress.
"""

from ipc.channel import Channel, full_fence, unlink_channel
from ipc.clock import SYSTEM, Clock
from ipc.doorbell import Doorbell
from ipc.liveness import BOOT, ProcessId, current_process, is_alive, lock_held, start_time
from ipc.naming import NAME_MAX, ObjectName, list_objects, new_base, prefix_for
from ipc.segment import (
    FAILED_ABANDONED,
    FAILED_BY_PRODUCER,
    STATE_DONE,
    STATE_FAILED,
    STATE_WRITING,
    ReaderInfo,
    Readers,
    ReaderSlot,
    Segment,
    SegmentError,
)
from ipc.wait import Waiter, Wake

__all__ = [
    "BOOT",
    "FAILED_ABANDONED",
    "FAILED_BY_PRODUCER",
    "NAME_MAX",
    "STATE_DONE",
    "STATE_FAILED",
    "STATE_WRITING",
    "SYSTEM",
    "Channel",
    "Clock",
    "Doorbell",
    "ObjectName",
    "ProcessId",
    "ReaderInfo",
    "ReaderSlot",
    "Readers",
    "Segment",
    "SegmentError",
    "Waiter",
    "Wake",
    "current_process",
    "full_fence",
    "is_alive",
    "list_objects",
    "lock_held",
    "new_base",
    "prefix_for",
    "start_time",
    "unlink_channel",
]
