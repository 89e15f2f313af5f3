"""The options of :class:`StreamCache`, checked before anything touches the disk."""

from __future__ import annotations

from ipc.segment import MAX_SLOTS
from ipc.tuples import NamedTuple

from . import config
from .disk.filestore import MAX_KEY_PREVIEW

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from .config import Duration


class CacheOptions(NamedTuple):
    """A StreamCache's options, checked, in seconds and bytes (``dir`` aside)."""

    max_age: float
    window: int
    max_bytes: int | None
    liveness: float
    cleanup_interval: float  # the default resolved: min(max_age, 60), at least 1 s
    reader_slots: int
    key_preview: int
    allow_network_fs: bool
    stall_timeout: float | None


def check_options(
    *,
    max_age: Duration,
    window: int,
    max_bytes: int | None,
    liveness: Duration,
    cleanup_interval: float | None,
    reader_slots: int,
    key_preview: int,
    allow_network_fs: bool,
    stall_timeout: Duration | None,
) -> CacheOptions:
    """The options checked (TypeError or ValueError naming the first one that is wrong)."""
    max_age_s = config.seconds(max_age, "max_age")
    window = config.nonnegative_int(window, "window")
    max_bytes = config.optional_budget(max_bytes, "max_bytes")
    liveness_s = config.seconds(liveness, "liveness", allow_zero=False)
    reader_slots = config.nonnegative_int(reader_slots, "reader_slots")
    if not 1 <= reader_slots <= MAX_SLOTS:
        raise ValueError(f"reader_slots must be in 1..{MAX_SLOTS}")
    key_preview = config.nonnegative_int(key_preview, "key_preview")
    if key_preview > MAX_KEY_PREVIEW:
        raise ValueError(f"key_preview must be in 0..{MAX_KEY_PREVIEW}")
    if cleanup_interval is None:
        cleanup_interval = max(min(max_age_s, 60.0), 1.0)
    else:
        cleanup_interval = config.seconds(cleanup_interval, "cleanup_interval")
    stall_timeout_s = (
        None
        if stall_timeout is None
        else config.seconds(stall_timeout, "stall_timeout", allow_zero=False)
    )
    if not isinstance(allow_network_fs, bool):
        raise TypeError(f"allow_network_fs must be a bool, not {type(allow_network_fs).__name__}")
    return CacheOptions(
        max_age_s,
        window,
        max_bytes,
        liveness_s,
        cleanup_interval,
        reader_slots,
        key_preview,
        allow_network_fs,
        stall_timeout_s,
    )
