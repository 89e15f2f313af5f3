"""The pipe's writing side: the binary writer handed to ``create``.

The producer appends to the entry's data file and publishes its offset on the
entry's channel (:mod:`ipc.channel`: a shared-memory segment and two bells); the
readers (:mod:`pipe`) read the file up to that offset.

Back pressure: after each write the producer blocks while
``offset - max(positions of live readers) > window``; ``window=0`` is Gitaly's rule
(wait until one reader has everything). When no live reader is left the producer's
write raises ``BrokenPipeError``: nothing more is produced, the entry fails (unless
every byte of an announced size is written: then the entry is whole). The wait
checks the readers' liveness on its own absolute deadline (:class:`ipc.wait.Waiter`),
so dead readers stop counting however often it is woken.
"""

from __future__ import annotations

import os

import ipc
from ipc.channel import Channel
from ipc.clock import SYSTEM, Clock
from ipc.liveness import same_process
from ipc.segment import SegmentError
from ipc.wait import Waiter

from ..disk.usage import Account, disk_full, is_disk_full
from ..errors import ProducerStalled, SharedMemoryRemoved
from ..metrics import NULL, Metrics
from .sizes import AnnouncedSize

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import NoReturn, Protocol

# How often an inline producer looks for the channel that an attaching reader made.
_DISCOVERY_INTERVAL = 0.001
# A producer counts its bytes and back pressure into the metrics every this many bytes
# (and when it ends), not on every write.
_COUNT_EVERY = 1 << 20


if TYPE_CHECKING:  # a Protocol, for type checkers only

    class CreatorCopy(Protocol):
        """The inline creator's own copy of each write to its ``dst`` (see producer.Tee)."""

        alive: bool

        def copy(self, data: bytes) -> None: ...

        def attach(self, channel: Channel) -> None: ...

    class CreatorFeed(Protocol):
        """The creator's reader fed in process (see feed.FedReader)."""

        def put(self, data: bytes, end: int) -> None: ...


class EntryWriter:
    """The binary writer handed to ``create``: appends to the data file.

    Runs in the producer's thread only; its fields need no lock.

    An inline creator's entry starts without a channel (``channel`` None): while
    nobody else reads, the creator's ``tee`` is its only reader and there is nothing
    to publish. The first process that attaches creates the channel under
    ``channel_base``; the writer looks for it before writes (at most every
    millisecond) and whenever it counts its readers, and from then on publishes every
    write there.
    """

    def __init__(
        self,
        fd: int,
        channel: Channel | None,
        window: int,
        liveness: float,
        tee: CreatorCopy | None = None,
        channel_base: str | None = None,
        clock: Clock = SYSTEM,
        metrics: Metrics = NULL,
        account: Account | None = None,
        feed: CreatorFeed | None = None,
    ) -> None:
        self._fd = fd
        self._feed = feed
        self._metrics = metrics
        self._counted = 0  # bytes of offset counted as generated
        self._held = 0.0  # seconds of the channel's back pressure counted
        self._account = account
        self.failure: OSError | None = None  # a write that failed: the entry is incomplete
        self._tee = tee
        self._channel_base = channel_base
        self._clock = clock
        self._next_discovery = 0.0
        self.channel: Channel | None = None
        self._window = window
        self._waiter = Waiter(liveness, clock)
        self.offset = 0
        self._size = AnnouncedSize()
        self.broken = False
        self.removed = False  # the channel's names were wiped: see SharedMemoryRemoved
        self._closed = False
        if channel is not None:
            self._attach(channel)

    def _attach(self, channel: Channel) -> None:
        """Publish from now on to ``channel`` (all bytes written so far at once)."""
        self.channel = channel
        if self._size.size is not None:
            channel.seg.announce_size(self._size.size)
        if self._tee is not None:
            self._tee.attach(channel)
        if self.offset:
            channel.publish(self.offset, self._waiter)

    def _discover(self) -> None:
        """Take the channel an attaching reader made, if there is one by now."""
        self._next_discovery = self._clock.monotonic() + _DISCOVERY_INTERVAL
        if self._channel_base is None:
            return
        try:
            channel = Channel.open(self._channel_base)
        except SegmentError:
            return
        if not same_process(channel.seg.producer, ipc.current_process()):
            channel.close()  # planted under the name: never trusted
            return
        self._attach(channel)

    def _live_readers(self) -> int:
        if self.channel is None:
            self._discover()
            if self.channel is None:
                return int(self._tee is not None and self._tee.alive)
        if self._waiter.check_due():
            self.channel.drop_dead_readers()
        return self.channel.readers().live

    # io-like surface
    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return self._closed

    def set_size(self, size: int) -> int:
        """Announce the entry's final size: readers in every process see it at once.
        Writing past it, or ending at any other size, fails the entry."""
        if self._closed:
            raise ValueError("set_size on a closed streamcache writer")
        size = self._size.announce(size, self.offset)
        if self.channel is not None:
            self.channel.seg.announce_size(size)
        return size

    def close(self) -> None:
        """End the entry's bytes (``create`` may call it; it need not). As Gitaly's
        Close: a producer whose readers all left fails with BrokenPipeError, and a
        second close is an error."""
        if self._closed:
            raise ValueError("streamcache writer already closed")
        self._closed = True
        if self.broken:
            raise BrokenPipeError("all readers closed")
        if self.removed:
            self._removed()
        self._size.check_end(self.offset)
        if self._live_readers() == 0 and not self._complete():
            self._broken()

    def _complete(self) -> bool:
        """Every announced byte is written: readers that took them all and left do not
        make the entry abandoned (it is whole; later readers will hit it)."""
        return self._size.size == self.offset

    def finish(self) -> None:
        """The producer's close after ``create`` returned (which may have closed already)."""
        if self.failure is not None:
            raise self.failure  # create carried on past a failed write
        self.check_stalled()
        if not self._closed:
            self.close()
        elif self.broken:
            raise BrokenPipeError("all readers closed")
        elif self.removed:
            self._removed()

    def abandon(self) -> None:
        """The producer is done with it: refuse any later write (from a thread ``create``
        left behind, say) instead of writing to a closed descriptor."""
        self._closed = True
        self._count()

    def _count(self) -> None:
        """Count the bytes written and the back pressure felt since the last count."""
        self._metrics.count_generated(self.offset - self._counted)
        self._counted = self.offset
        if self.channel is not None and self.channel.held_back > self._held:
            self._metrics.count_backpressure(self.channel.held_back - self._held)
            self._held = self.channel.held_back

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; blocks under back pressure; BrokenPipeError once all readers left."""
        if self._closed:
            raise ValueError("write to a closed streamcache writer")
        if self.broken:
            raise BrokenPipeError("all readers closed")
        if self.failure is not None:
            raise self.failure
        if self.removed:
            self._removed()
        self.check_stalled()
        if isinstance(data, str):
            raise TypeError("write() needs bytes, not str")
        view = memoryview(data).cast("B")
        total = len(view)
        if total == 0:
            return 0  # the offset does not rise: nobody to wake
        self._size.check_write(self.offset, total)
        tee = self._tee
        if tee is None or not tee.alive:
            if self._live_readers() == 0:
                self._broken()  # checked before writing: nothing lands that nobody reads
        elif self.channel is None and self._clock.monotonic() >= self._next_discovery:
            self._discover()  # has another reader attached meanwhile?
        if self._account is not None:
            self._account.reserve(total)  # before the bytes land (see usage.py)
        self._append(view)
        self.offset += total
        if self._feed is not None:  # before the publish: see feed.py
            self._feed.put(_as_bytes(data, view), self.offset)
        if self.offset - self._counted >= _COUNT_EVERY:
            self._count()
        channel = self.channel
        if channel is None:  # only the creator reads, straight from this write
            assert tee is not None
            tee.copy(_as_bytes(data, view))
            if not tee.alive and not self._complete() and self._live_readers() == 0:
                self._broken()
            return total
        readers = channel.publish(self.offset, self._waiter)
        if channel.removed:
            self._removed()
        if tee is not None and tee.alive:
            tee.copy(_as_bytes(data, view))
            if tee.alive:
                return total  # the creator has everything: nobody is behind the window
            readers = None
        if self._complete():
            return total  # the last byte: nothing comes that a reader could fall behind on
        if channel.hold_back(self.offset, self._window, self._waiter, readers) == 0:
            self._broken()
        if channel.removed:
            self._removed()
        return total

    def _append(self, view: memoryview) -> None:
        try:
            done = os.write(self._fd, view)
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            # The file may hold part of it: the entry cannot be completed any more.
            if not is_disk_full(exc):
                self.failure = exc
                raise
            self.failure = disk_full(exc)
            raise self.failure from exc

    def check_stalled(self) -> None:
        """Raise :class:`ProducerStalled` if a reader declared this producer stalled
        (every reader failed, and the entry left the index: nothing more is wanted)."""
        if self.channel is not None and self.channel.seg.stalled:
            raise ProducerStalled(
                "a reader waited for this producer's next byte for the cache's "
                "stall_timeout: the entry failed for every reader"
            )

    def _broken(self) -> NoReturn:
        self.broken = True
        raise BrokenPipeError("all readers closed")

    def _removed(self) -> NoReturn:
        """The channel's names are gone while the entry is written (found on a liveness
        check): no reader can attach any more, so the entry fails."""
        self.removed = True
        raise SharedMemoryRemoved(
            "the entry's shared memory was removed while it was written (a reboot, or "
            "systemd's RemoveIPC); it can no longer be shared"
        )


def _as_bytes(data: bytes | bytearray | memoryview, view: memoryview) -> bytes:
    """What a dst gets: the caller's bytes as they are, a copy of anything mutable."""
    return data if type(data) is bytes else view.tobytes()
