"""The producer of one entry: runs ``create``, then publishes the outcome.

Two ways to run: :meth:`Producer.run` in a producer thread (``stream()``, and
``fetch`` with a timeout, so the caller can leave while ``create`` goes on), or
:meth:`Producer.run_inline` in the creating ``fetch``'s own thread, handing each write
straight to its ``dst`` through a :class:`Tee` (no thread, no re-reading the file).

The order of publishing, kept in :meth:`Producer._finalize`:

1. The writer is abandoned (a thread that ``create`` left behind can write no more).
2. Success: the data file is sealed (trailer, expiry), then renamed to the entry's
   name and the record removed (``Store.publish``). Failure: the record is removed
   and the data file unlinked (``Store.drop``), after ``Outcome.error`` is set.
3. Only then does the segment say "done" or "failed" (with a code: the producer
   failed, or every reader left), every reader is rung and the channel's names are
   unlinked. So a reader that saw the end finds a hit on its next fetch, and one that
   saw a failure creates afresh.
4. Last, the lock on the data file goes (see filestore.py): a reader that finds it
   free while the producer's process lives reads the outcome in the segment, or
   takes the entry for abandoned if there is none.
"""

from __future__ import annotations

import contextlib
import os
import threading

import ipc
from ipc.channel import Channel, unlink_channel
from ipc.clock import SYSTEM, Clock
from ipc.liveness import same_process
from ipc.segment import FAILED_ABANDONED, FAILED_BY_PRODUCER, ReaderSlot, SegmentError

from ..disk.filestore import TRAILER
from ..disk.index import Record
from ..disk.store import Store
from ..disk.usage import Account, disk_full, is_disk_full
from ..errors import CreateError, Error, ProducerStalled, SharedMemoryRemoved, describe
from ..log import log
from .creator import call_create
from .pipe import CREATOR_SLOT, Outcome, PipeReader
from .sink import usable_fd, write_all
from .stream import Stream
from .writer import EntryWriter

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from .create_types import Create
    from .feed import FedReader

# Once others read too, an inline creator whose client took longer than this for one
# write hands its copy to a thread, so that client paces nobody else.
_SLOW_CLIENT = 0.01

_creating = threading.local()


def check_not_creating(root: str, key: str) -> None:
    """Raise :class:`Error` if this thread is running the ``create`` of ``key`` in the
    cache at ``root``: it would wait for itself forever."""
    if (root, key) in getattr(_creating, "keys", ()):
        raise Error(
            "create fetched its own key from the thread that runs it; it would wait for "
            "itself forever"
        )


class _Creating:
    """Marks ``(root, key)`` as being created by this thread for the ``with`` block."""

    def __init__(self, root: str, key: str) -> None:
        self._item = (root, key)

    def __enter__(self) -> None:
        keys: set[tuple[str, str]] | None = getattr(_creating, "keys", None)
        if keys is None:
            keys = _creating.keys = set()
        keys.add(self._item)

    def __exit__(self, *exc: object) -> None:
        _creating.keys.discard(self._item)


class Producers:
    """The producers running in this process for one cache (``wait_producers``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[Producer] = set()

    def add(self, producer: Producer) -> None:
        with self._lock:
            self._running.add(producer)

    def discard(self, producer: Producer) -> None:
        with self._lock:
            self._running.discard(producer)

    def threads(self) -> list[threading.Thread]:
        with self._lock:
            return [p.thread for p in self._running if p.thread is not None]

    def after_fork_in_child(self) -> None:
        # Threads do not survive fork: the child has no producers, and must not
        # inherit a lock some other thread held at the fork.
        self._lock = threading.Lock()
        self._running = set()


class Producer:
    """Runs ``create`` for one entry (``rec``, data file open as ``fd``) and publishes
    the outcome. ``channel`` is None for an inline creator's entry until another reader
    attaches (see :class:`writer.EntryWriter`)."""

    def __init__(
        self,
        store: Store,
        rec: Record,
        channel: Channel | None,
        fd: int,
        *,
        window: int,
        liveness: float,
        running: Producers,
        clock: Clock = SYSTEM,
    ) -> None:
        self._store = store
        self.rec = rec
        self._channel = channel
        self._fd = fd
        # The data file's lock (taken by Filestore.create) must outlive the descriptor
        # the producer closes before publishing: a reader that finds it free while the
        # process lives takes the entry for abandoned. This duplicate holds it until
        # the outcome is in the segment (the end of _finalize).
        self._lock_fd = os.dup(fd)
        self._window = window
        self._liveness = liveness
        self._running = running
        self._clock = clock
        self.outcome = Outcome()
        self._account = Account(store.usage, rec.file)
        self.thread: threading.Thread | None = None
        # The creator's reader fed by this producer's writes (feed.py), if it has one.
        self.feed: FedReader | None = None
        # Whoever claims the producer (run, run_inline or abort) finalizes it: exactly once.
        self._claim_lock = threading.Lock()
        self._claimed = False
        running.add(self)

    def _claim(self) -> bool:
        with self._claim_lock:
            mine = not self._claimed
            self._claimed = True
            return mine

    def _writer(self, tee: Tee | None = None) -> EntryWriter:
        return EntryWriter(
            self._fd,
            self._channel,
            self._window,
            self._liveness,
            tee,
            self._store.channel_base(self.rec.file),
            self._clock,
            self._store.metrics,
            self._account,
            self.feed,
        )

    def start(self, create: Create) -> None:
        """Run ``create`` in a producer thread. If the thread cannot start, the entry
        fails at once (and the error propagates)."""
        thread = threading.Thread(
            target=self.run, args=(create,), name=f"streamcache-producer-{self.rec.key[:8]}"
        )
        try:
            thread.start()
        except BaseException as exc:
            self.abort(exc)
            raise
        self.thread = thread

    def abort(self, error: BaseException) -> None:
        """Fail the entry if it never started running (a no-op once it has)."""
        if self._claim():
            self._finalize(self._writer(), error)

    def run(self, create: Create) -> None:
        if not self._claim():
            return
        writer = self._writer()
        error: BaseException | None = None
        try:
            with _Creating(self._store.index.root, self.rec.key):
                call_create(create, writer)
            writer.finish()
        except BaseException as exc:  # a failing create fails the entry, never the process
            error = exc
        self._finalize(writer, error)

    def run_inline(self, create: Create, dst: Any) -> int:
        """Run ``create`` here, copying each write to ``dst``; return the bytes copied.

        If ``dst`` fails, the creator stops being a reader: ``create`` goes on for
        the entry's other readers (or gets BrokenPipeError if none is left), and the
        ``dst`` error is raised once it returns.
        """
        error: BaseException | None = None
        tee: Tee | None = None
        writer: EntryWriter | None = None
        self._claim()  # from here on every exit goes through _finalize
        try:
            tee = Tee(dst, self._fd, self._store, self.rec, self._liveness, self.outcome)
            writer = self._writer(tee)
            with _Creating(self._store.index.root, self.rec.key):
                call_create(create, writer)
            writer.finish()
        except BaseException as exc:
            error = exc
        if writer is None:
            writer = self._writer()
        self._finalize(writer, error)
        follower = tee.follower if tee is not None else None
        if follower is not None:
            follower.join()  # it reads to the end the segment now shows
        # The creator's own dst failing comes first: the entry may have failed only
        # because of it (no other reader left).
        if tee is not None and tee.error is not None:
            raise tee.error
        if follower is not None and follower.error is not None:
            # A CreateError of the copy is the entry's own, raised below; unless the
            # entry went on without it: then the creator's client still lacks bytes.
            if not isinstance(follower.error, CreateError) or self.outcome.error is None:
                raise follower.error
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise error
        failure = self.outcome.error
        if failure is not None:  # create's, or one publishing the entry
            raise CreateError(describe(failure)) from failure
        assert tee is not None
        return tee.delivered + (follower.written if follower is not None else 0)

    def _finalize(self, writer: EntryWriter, error: BaseException | None) -> None:
        """Publish the outcome in the order the module docstring gives."""
        store = self._store
        writer.abandon()
        if writer.failure is not None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
            error = writer.failure  # the real cause, whatever create made of it
        try:
            if error is None:
                self._account.reserve(TRAILER.size, force=True)
                store.files.seal(self._fd, writer.offset, self.rec.expires)
        except BaseException as exc:
            error = error or (disk_full(exc) if is_disk_full(exc) else exc)
        try:
            os.close(self._fd)
        except OSError as exc:
            error = error or exc
        kept = False
        try:
            if error is None:
                try:
                    kept = store.publish(self.rec) is not None
                except BaseException as exc:
                    error = disk_full(exc) if is_disk_full(exc) else exc
            if error is None and not kept:
                error = self._stalled(writer)  # declared stalled just before the publish
            if error is not None:
                self.outcome.error = error  # before the segment says so: see Outcome
                store.drop(self.rec)
                _log_failure(self.rec, writer, error)
                if is_disk_full(error):
                    store.usage.mark_full()
        finally:
            self._settle(kept)
            # Once the record is gone no reader attaches any more; one may have made
            # the channel since this producer last looked (its name derives from the
            # data file's, so it is found even if the record was evicted), also in
            # place of ours after a /dev/shm wipe: every one is told the outcome.
            abandoned = isinstance(error, BrokenPipeError) and writer.broken
            channels = [c for c in (writer.channel, self._open_channel()) if c is not None]
            if len(channels) == 2 and channels[0].seg.inode == channels[1].seg.inode:
                channels.pop().close()
            for channel in channels:
                self._end_channel(channel, writer.offset, error, abandoned)
            if not channels:  # none, or a partial set left by an attaching reader that died
                unlink_channel(store.channel_base(self.rec.file))
            if self.feed is not None:
                self.feed.ended()  # after the segment says how: its reader reads that
            self._running.discard(self)
            # Last: the outcome is published by now. A create that closed the data
            # file's descriptors under the producer (EBADF) has released the lock already.
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)

    def _stalled(self, writer: EntryWriter) -> ProducerStalled | None:
        """Whether a reader declared the entry stalled (see Store.stalled: a stall
        declared before the publish made it find no record), as the error to end with."""
        channel = writer.channel or self._open_channel()
        if channel is None:
            return None
        try:
            stalled = channel.seg.stalled
        finally:
            if channel is not writer.channel:
                channel.close()
        if not stalled:
            return None
        return ProducerStalled("a reader declared this producer stalled before the entry ended")

    def _settle(self, kept: bool) -> None:
        """Settle the entry's bytes with the usage total (never raises: the channel's
        end must follow)."""
        try:
            self._account.end(kept)
        except OSError:
            log.exception("streamcache: could not update the disk usage total")

    def _open_channel(self) -> Channel | None:
        try:
            channel = Channel.open(self._store.channel_base(self.rec.file))
        except SegmentError:
            return None
        if not same_process(channel.seg.producer, ipc.current_process()):
            channel.close()  # planted under the name: never trusted
            return None
        return channel

    @staticmethod
    def _end_channel(
        channel: Channel, offset: int, error: BaseException | None, abandoned: bool
    ) -> None:
        """Publish the outcome in the segment, wake every reader, unlink the names."""
        seg = channel.seg
        try:
            if error is None:
                seg.finish(offset)
            else:
                # Whatever happened, readers must learn the entry failed: a reader
                # waits on a live producer process for as long as it says "writing".
                try:
                    text = describe(error)
                except BaseException:
                    text = "the producer failed"
                if offset > seg.offset:  # an inline producer that found the channel late
                    seg.publish_offset(offset)
                seg.fail(text, FAILED_ABANDONED if abandoned else FAILED_BY_PRODUCER)
            channel.ring_all()
        finally:
            unlink_channel(channel.base)
            channel.close()


class Tee:
    """The inline creator's own copy of the entry: each write goes straight to ``dst``,
    so the creator is a reader that always has everything.

    While nobody else reads that is all. Once another reader has attached (the entry
    has its channel, slot 0 the creator's), the creator's client must not pace the
    others, so the copy moves to a :class:`Follower`, a reader of the file in a thread
    of this process: at once when ``dst`` has a descriptor (a socket or pipe: the
    thread copies with sendfile), else once a write to ``dst`` took longer than
    :data:`_SLOW_CLIENT`. The producer then goes on at the pace of the fastest reader,
    as in Gitaly. If ``dst`` fails, the creator leaves and the error is kept for the
    caller. Used only by the producer's thread.
    """

    def __init__(
        self,
        dst: Any,
        fd: int,
        store: Store,
        rec: Record,
        liveness: float,
        outcome: Outcome,
        clock: Clock = SYSTEM,
    ) -> None:
        self._dst = dst
        self._dst_fd = usable_fd(dst)
        self._data_fd = fd
        self._store = store
        self._rec = rec
        self._liveness = liveness
        self._outcome = outcome
        self._clock = clock
        self._slot: ReaderSlot | None = None
        self.delivered = 0
        self.alive = True
        self.error: Exception | None = None
        self.follower: Follower | None = None

    def attach(self, channel: Channel) -> None:
        """The entry's channel exists now, with slot 0 the creator's."""
        slot = channel.seg.adopt_slot(CREATOR_SLOT)
        if not self.alive:
            slot.release()
        elif self._dst_fd is not None:
            self._hand_over()
        else:
            self._slot = slot
            slot.set_position(self.delivered)

    def copy(self, data: bytes) -> None:
        slot = self._slot
        started = self._clock.monotonic()
        try:
            write_all(self._dst, data)
        except Exception as exc:
            self.error = exc
            self.alive = False
            if slot is not None:
                slot.release()
            return
        self.delivered += len(data)
        if slot is not None:
            slot.set_position(self.delivered)
            if self._clock.monotonic() - started > _SLOW_CLIENT:
                self._hand_over()

    def _hand_over(self) -> None:
        """Another reader attached: the creator's copy to ``dst`` continues from
        ``delivered`` in a thread that reads the file (from the creator's slot 0)."""
        self.alive = False
        follower = self.follower = Follower(self._dst)
        try:
            channel = Channel.open(self._store.channel_base(self._rec.file))
            try:
                fd = os.dup(self._data_fd)  # the file may be unlinked (evicted) by now
            except BaseException:
                channel.close()
                raise
        except Exception as exc:  # the creator loses its copy; the entry goes on
            if isinstance(exc, SegmentError):  # its names were wiped since it attached
                removed = SharedMemoryRemoved(
                    "the entry's shared memory was removed while it was written"
                )
                exc = CreateError(describe(removed))
            follower.error = exc
            return
        slot = channel.seg.adopt_slot(CREATOR_SLOT)
        reader = PipeReader(
            fd, channel, slot, self._liveness, self._store, self._rec, self._outcome, self._clock
        )
        reader.position = self.delivered
        slot.set_position(self.delivered)
        follower.start(reader, f"streamcache-creator-{self._rec.key[:8]}")


class Follower:
    """The inline creator's copy to its ``dst`` once another reader attached: a thread
    of the creating process reading the file, like any reader."""

    def __init__(self, dst: Any) -> None:
        self._dst = dst
        self.written = 0
        self.error: Exception | None = None
        self._thread: threading.Thread | None = None

    def start(self, reader: PipeReader, name: str) -> None:
        self._thread = threading.Thread(target=self._run, args=(reader,), name=name)
        self._thread.start()

    def _run(self, reader: PipeReader) -> None:
        try:
            with Stream(reader, True, None) as s:
                self.written = s.copy_to(self._dst)
        except Exception as exc:  # dst failed (or the entry did: the producer says why)
            self.error = exc

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


def _log_failure(rec: Record, writer: EntryWriter, error: BaseException) -> None:
    """The one log line of a failed entry (its readers log nothing: each gets the
    CreateError). A producer whose readers all left is routine (clients went away)."""
    import logging

    abandoned = isinstance(error, BrokenPipeError) and writer.broken
    log.log(
        logging.DEBUG if abandoned else logging.WARNING,
        "streamcache: entry %s failed after %d bytes: %s",
        rec.key[:16],
        writer.offset,
        "every reader left" if abandoned else describe(error),
    )
