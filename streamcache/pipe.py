"""The pipe: one producer writing a data file, many readers in any process.

The producer appends to the entry's data file and publishes its offset in the
entry's shared-memory segment; readers read the file up to that offset, each
publishing its position in its own slot. Two doorbells connect them: readers
sleep on ``r`` (the producer rings it after a write for as many readers as are
waiting), the producer sleeps on ``w`` (a reader rings it after advancing while
the producer waits).

Back pressure: after each write the producer blocks while
``offset - max(positions of live readers) > window``; ``window=0`` is Gitaly's
rule (wait until one reader has everything). When no live reader is left the
producer's write raises ``BrokenPipeError``: nothing more is produced, the entry
fails. The producer checks its readers' liveness at least every ``liveness``
seconds (on a timed-out wait, or after a write once that long has passed) and
drops dead ones; a waiting reader checks the producer's on each timed-out wait
and raises ``ProducerDied``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import posix_ipc

import ipc
from ipc import futex
from ipc.doorbell import unlink_semaphore
from ipc.naming import object_name
from ipc.segment import (
    SLOT_ACTIVE,
    SLOT_PID,
    SLOT_POSITION,
    SLOT_START,
    SLOT_WAITING,
    SLOT_WORDS,
    unlink_segment,
)

from .errors import CreateError, ProducerDied
from .filestore import entry_bytes
from .sink import usable_fd, write_all

CHUNK = 1 << 20  # a reader reads ahead at most this much
CREATOR_SLOT = 0  # the creating process's reader slot in its entry's segment
# Once others read too, an inline creator whose client took longer than this for
# one write hands its copy to a thread, so that client paces nobody else.
_SLOW_CLIENT = 0.01
# How often an inline producer looks for IPC objects that an attaching reader made.
_DISCOVERY_INTERVAL = 0.001
SEGMENT, READERS_BELL, WRITER_BELL = "s", "r", "w"


_fence_lock = threading.Lock()


def full_fence() -> None:
    """A full memory barrier between a store to shared memory and the next load.

    The wake-up protocol is Dekker-style: one side stores a flag then loads the
    other's progress, the other stores progress then loads the flag. x86 may let
    a load pass an earlier store, and then both sides miss each other and a
    sleeper waits for its timeout. Taking an uncontended lock executes a locked
    instruction, a full fence on x86 (about 50 ns). Correctness never depends on
    it: every wait is timed.
    """
    _fence_lock.acquire()
    _fence_lock.release()


class ReadersBell:
    """What readers sleep on and the producer rings after publishing progress.

    On Linux a futex on the segment's sequence word: one ring wakes every sleeper
    and a sleeper never misses a change made after it looked (see ``ipc.futex``).
    Elsewhere the ``r`` semaphore, rung once per sleeping reader.
    """

    def __init__(self, bell: ipc.Doorbell, seg: ipc.Segment) -> None:
        self._bell = bell
        self._seg = seg

    def ring(self, times: int = 1) -> None:
        """Wake the ``times`` readers that sleep (all of them, with a futex)."""
        if futex.SUPPORTED:
            futex.wake(self._seg.seq_address)
        else:
            self._bell.ring(times)

    def wait(self, seen: int, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` passes (False); ``seen`` is the segment's
        ``seq`` read before the caller last checked the progress."""
        if futex.SUPPORTED:
            return futex.wait(self._seg.seq_address, seen, timeout)
        return self._bell.wait(timeout)

    def close(self) -> None:
        self._bell.close()


class EntryIPC:
    """The shared-memory segment and two doorbells of one entry being written."""

    def __init__(self, base: str, seg: ipc.Segment, readers: ipc.Doorbell, writer: ipc.Doorbell):
        self.base = base
        self.seg = seg
        self.readers_bell = ReadersBell(readers, seg)
        self.writer_bell = writer

    @classmethod
    def create(
        cls,
        prefix: str,
        producer: ipc.ProcessId,
        slots: int,
        base: str | None = None,
        *,
        offset: int = 0,
        producer_reads: bool = False,
    ) -> EntryIPC:
        """Create fresh objects (under ``base``, or a new random one; a name that exists
        is an error, never opened). ``offset`` and ``producer_reads`` as for
        :meth:`ipc.Segment.create`.

        Invariant: the doorbells come first and the segment, its magic written last,
        after them (and :func:`unlink_entry_ipc` removes the segment first), so a
        segment that opens always has its own doorbells beside it: :meth:`open`
        never pairs a segment with doorbells of another set. Doorbells without a
        segment are a set being made or unmade; cleanup leaves young ones alone.
        """
        base = base or ipc.new_base(prefix)
        rb = ipc.Doorbell.create(object_name(base, READERS_BELL))
        try:
            wb = ipc.Doorbell.create(object_name(base, WRITER_BELL))
            try:
                seg = ipc.Segment.create(
                    object_name(base, SEGMENT),
                    producer,
                    slots,
                    offset=offset,
                    producer_reads=producer_reads,
                )
            except BaseException:
                wb.close()
                wb.unlink()
                raise
        except BaseException:
            rb.close()
            rb.unlink()
            raise
        return cls(base, seg, rb, wb)

    @classmethod
    def open(cls, base: str) -> EntryIPC:
        """Attach to an entry's objects (``ipc.SegmentError`` if they are gone)."""
        seg = ipc.Segment.open(object_name(base, SEGMENT))
        bells: list[ipc.Doorbell] = []
        try:
            for kind in (READERS_BELL, WRITER_BELL):
                bells.append(ipc.Doorbell.open(object_name(base, kind)))
        except posix_ipc.Error as exc:
            for bell in bells:
                bell.close()
            seg.close()
            raise ipc.SegmentError(f"doorbells of {base} are gone") from exc
        return cls(base, seg, bells[0], bells[1])

    def close(self) -> None:
        self.readers_bell.close()
        self.writer_bell.close()
        self.seg.close()  # last: a futex wait or wake may use its mapping until then


def unlink_entry_ipc(base: str) -> None:
    """Remove an entry's IPC names: the segment first, then the doorbells (see
    :meth:`EntryIPC.create`)."""
    unlink_segment(object_name(base, SEGMENT))
    unlink_semaphore(object_name(base, READERS_BELL))
    unlink_semaphore(object_name(base, WRITER_BELL))


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


class Writer:
    """The binary writer handed to ``create``: appends to the data file.

    Runs in the producer's thread only; its fields need no lock.

    An inline creator's entry starts without IPC objects (``entry`` None): while
    nobody else reads, the creator's ``tee`` is its only reader and there is
    nothing to publish. The first process that attaches creates them (under a
    name derived from the data file's); ``discover`` (called before writes, at
    most every millisecond, and whenever the readers are counted, until it
    returns them) finds them, and from then on every write is published there.
    """

    def __init__(
        self,
        fd: int,
        entry: EntryIPC | None,
        window: int,
        liveness: float,
        tee: Tee | None = None,
        discover: Callable[[], EntryIPC | None] = lambda: None,
    ) -> None:
        self._fd = fd
        self._tee = tee
        self._discover = discover
        self._next_discovery = 0.0
        self.entry: EntryIPC | None = None
        self._window = window
        self._liveness = liveness
        self.offset = 0
        self.broken = False
        self._closed = False
        # Slots whose owner was found dead: (slot, pid, start in microseconds).
        self._dead: set[tuple[int, int, int]] = set()
        # Readers' liveness is checked at least every ``liveness`` seconds, blocked
        # or not, so a producer whose readers all died stops within that bound.
        self._next_liveness_check = time.monotonic() + liveness
        if entry is not None:
            self._attach(entry)

    def _attach(self, entry: EntryIPC) -> None:
        """Publish from now on to ``entry`` (all bytes written so far at once)."""
        self.entry = entry
        self._seg = entry.seg
        if self._tee is not None:
            self._tee.attach(entry.seg)
        if self.offset:
            self._seg.publish_offset(self.offset)
            full_fence()
            waiting = self._scan()[2]
            if waiting:
                entry.readers_bell.ring(waiting)

    def _live_readers(self) -> int:
        if self.entry is None:
            self._next_discovery = time.monotonic() + _DISCOVERY_INTERVAL
            entry = self._discover()
            if entry is not None:
                self._attach(entry)
            else:
                return int(self._tee is not None and self._tee.alive)
        return self._scan()[0]

    # io-like surface
    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End the entry's bytes (``create`` may call it; it need not). As Gitaly's
        Close: a producer whose readers all left fails with BrokenPipeError, and a
        second close is an error."""
        if self._closed:
            raise ValueError("streamcache writer already closed")
        self._closed = True
        if self.broken:
            raise BrokenPipeError("all readers closed")
        if self._live_readers() == 0:
            self._broken()

    def finish(self) -> None:
        """The producer's close after ``create`` returned (which may have closed already)."""
        if not self._closed:
            self.close()
        elif self.broken:
            raise BrokenPipeError("all readers closed")

    def abandon(self) -> None:
        """The producer is done with it: refuse any later write (from a thread ``create``
        left behind, say) instead of writing to a closed descriptor."""
        self._closed = True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; blocks under back pressure; BrokenPipeError once all readers left."""
        if self._closed:
            raise ValueError("write to a closed streamcache writer")
        if self.broken:
            raise BrokenPipeError("all readers closed")
        if isinstance(data, str):
            raise TypeError("write() needs bytes, not str")
        view = memoryview(data).cast("B")
        total = len(view)
        if total == 0:
            return 0  # the offset does not rise: nobody to wake
        tee = self._tee
        if tee is None or not tee.alive:
            if self._live_readers() == 0:
                self._broken()  # checked before writing: nothing lands that nobody reads
        elif self.entry is None and time.monotonic() >= self._next_discovery:
            self._live_readers()  # has another reader attached meanwhile?
        done = os.write(self._fd, view)
        while done < total:
            done += os.write(self._fd, view[done:])
        self.offset += total
        if self.entry is None:  # only the creator reads, straight from this write
            assert tee is not None
            tee.copy(_as_bytes(data, view))
            if not tee.alive and self._live_readers() == 0:
                self._broken()
            return total
        self._seg.publish_offset(self.offset)
        full_fence()  # the offset is visible before we look at the waiting flags
        if time.monotonic() >= self._next_liveness_check:
            self._drop_dead_readers()
        live, best, waiting = self._scan()
        if waiting:
            self.entry.readers_bell.ring(waiting)
        if tee is not None and tee.alive:
            tee.copy(_as_bytes(data, view))
            if tee.alive:
                return total  # the creator has everything: nobody is behind the window
            live, best, waiting = self._scan()
        self._hold_back(live, best)
        return total

    def _broken(self) -> NoReturn:
        self.broken = True
        raise BrokenPipeError("all readers closed")

    def _scan(self) -> tuple[int, int, int]:
        """(live readers, their largest position, how many wait) from one snapshot."""
        words = self._seg.slots()
        live = waiting = 0
        best = -1
        dead = self._dead
        for i in range(0, len(words), SLOT_WORDS):
            if not words[i + SLOT_ACTIVE]:
                continue
            if dead and (i // SLOT_WORDS, words[i + SLOT_PID], words[i + SLOT_START]) in dead:
                continue
            live += 1
            waiting += words[i + SLOT_WAITING]
            pos = words[i + SLOT_POSITION]
            if pos > best:
                best = pos
        return live, best, waiting

    def _hold_back(self, live: int, best: int) -> None:
        """Back pressure: wait while no live reader is within ``window`` of the offset."""
        while True:
            if live == 0:
                self._broken()
            if self.offset - best <= self._window:
                return
            # Invariant: set "waiting", then re-check; a reader advancing after our
            # check sees the flag and rings.
            self._seg.set_producer_waiting(True)
            full_fence()
            live, best, _ = self._scan()
            if live and self.offset - best <= self._window:
                self._seg.set_producer_waiting(False)
                return
            assert self.entry is not None
            rang = self.entry.writer_bell.wait(self._liveness)
            self._seg.set_producer_waiting(False)
            if not rang:
                self._drop_dead_readers()
            live, best, _ = self._scan()

    def _drop_dead_readers(self) -> None:
        self._next_liveness_check = time.monotonic() + self._liveness
        words = self._seg.slots()
        for i in range(0, len(words), SLOT_WORDS):
            if words[i + SLOT_ACTIVE]:
                pid, start = words[i + SLOT_PID], words[i + SLOT_START]
                if not ipc.is_alive(pid, start / 1_000_000):
                    self._dead.add((i // SLOT_WORDS, pid, start))


def ring_all(entry: EntryIPC) -> None:
    """Wake every reader waiting on ``entry`` (at least one ring: a reader may be about
    to wait)."""
    words = entry.seg.slots()
    waiting = sum(words[SLOT_WAITING::SLOT_WORDS])
    entry.readers_bell.ring(max(waiting, 1))


def _as_bytes(data: bytes | bytearray | memoryview, view: memoryview) -> bytes:
    """What a dst gets: the caller's bytes as they are, a copy of anything mutable."""
    return data if type(data) is bytes else view.tobytes()


class Tee:
    """The inline creator's own copy of the entry: each write goes straight to ``dst``,
    so the creator is a reader that always has everything.

    While nobody else reads that is all. Once another reader has attached (the entry
    has its segment, slot 0 the creator's), the creator's client must not pace the
    others, so the copy is handed over (``handoff(bytes delivered)``) to a reader of
    the file in a thread of this process: at once when ``dst`` has a descriptor (a
    socket or pipe: the thread copies with sendfile), else once a write to ``dst``
    took longer than :data:`_SLOW_CLIENT`. The producer then goes on at the pace of
    the fastest reader, as in Gitaly. If ``dst`` fails, the creator leaves and the
    error is kept for the caller. Used only by the producer's thread.
    """

    def __init__(self, dst: Any, handoff: Callable[[int], None]) -> None:
        self._dst = dst
        self._fd = usable_fd(dst)
        self._handoff = handoff
        self._seg: ipc.Segment | None = None
        self.delivered = 0
        self.alive = True
        self.error: Exception | None = None

    def attach(self, seg: ipc.Segment) -> None:
        """The entry's segment exists now, with slot 0 the creator's."""
        if not self.alive:
            seg.release_slot(CREATOR_SLOT)
        elif self._fd is not None:
            self._hand_over()
        else:
            self._seg = seg
            seg.set_position(CREATOR_SLOT, self.delivered)

    def copy(self, data: bytes) -> None:
        seg = self._seg
        started = time.monotonic()
        try:
            write_all(self._dst, data)
        except Exception as exc:
            self.error = exc
            self.alive = False
            if seg is not None:
                seg.release_slot(CREATOR_SLOT)
            return
        self.delivered += len(data)
        if seg is not None:
            seg.set_position(CREATOR_SLOT, self.delivered)
            if time.monotonic() - started > _SLOW_CLIENT:
                self._hand_over()

    def _hand_over(self) -> None:
        self.alive = False
        self._handoff(self.delivered)


class _Reader:
    """The copy step shared by both readers: ``pread`` or ``sendfile`` of what
    :meth:`_available` reports, from the reader's own position.

    ``close`` is safe while another thread of this process is inside ``read`` (an
    ``astream`` cancelled mid-wait closes from a second thread): it gives up the
    reader's place at once, but the descriptor and mappings are released by
    whichever of the two finishes last, so the reading thread never touches an
    unmapped semaphore or a reused descriptor.
    """

    _SHORT = "the entry's data file is shorter than published"

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.position = 0
        self._guard = threading.Lock()  # protects _busy, _closed and _released
        self._busy = 0
        self._closed = False
        self._released = False

    def _available(self, deadline: float | None) -> int:
        """Bytes readable now (waiting for some if needed); 0 at the end."""
        raise NotImplementedError

    def read(self, n: int, deadline: float | None) -> bytes:
        """Up to ``n`` (at most CHUNK) bytes; b"" at the end of a finished entry."""
        if n <= 0:
            return b""
        self._enter()
        try:
            avail = self._available(deadline)
            if not avail:
                return b""
            data = os.pread(self._fd, min(avail, n, CHUNK), self.position)
            if not data:
                raise CreateError(self._SHORT)
            self._advance(len(data))
            return data
        finally:
            self._exit()

    def sendfile(
        self, out_fd: int, deadline: float | None, wait_writable: Callable[[], None]
    ) -> int:
        """Copy the next available bytes to ``out_fd`` with os.sendfile; 0 at the end."""
        self._enter()
        try:
            avail = self._available(deadline)
            if not avail:
                return 0
            while True:
                try:
                    n = os.sendfile(out_fd, self._fd, self.position, min(avail, CHUNK))
                    break
                except BlockingIOError:
                    wait_writable()
            if not n:
                raise CreateError(self._SHORT)
            self._advance(n)
            return n
        finally:
            self._exit()

    def _advance(self, n: int) -> None:
        self.position += n

    def _enter(self) -> None:
        with self._guard:
            if self._closed:
                raise ValueError("I/O operation on a closed stream")
            self._busy += 1

    def _exit(self) -> None:
        with self._guard:
            self._busy -= 1
            release = self._closed and not self._busy and not self._released
            self._released = self._released or release
        if release:
            self._release()

    def close(self) -> None:
        with self._guard:
            if self._closed:
                return
            self._closed = True
            # The close counts as a user until its _leave is done, so a read ending
            # meanwhile cannot release (unmap) what _leave still touches.
            self._busy += 1
        try:
            self._leave()
        finally:
            self._exit()

    def _leave(self) -> None:
        """Give up this reader's place (mappings still valid)."""

    def _release(self) -> None:
        os.close(self._fd)


class PipeReader(_Reader):
    """Reads an entry that is still being written, from offset 0.

    ``slot`` is None for a reader beyond the segment's slot capacity: it still
    reads everything, but does not count for back pressure, and re-checks with a
    backoff from 1 to 50 ms instead of sleeping on the doorbell (whose rings are
    counted for slotted readers only).
    """

    def __init__(
        self,
        fd: int,
        entry: EntryIPC,
        slot: int | None,
        liveness: float,
        on_producer_died: Callable[[], int | None],
        local_cause: Callable[[], BaseException | None] = lambda: None,
    ) -> None:
        super().__init__(fd)
        self._entry = entry
        self._seg = entry.seg
        self._slot = slot
        self._liveness = liveness
        # Called when the producer is found dead: the entry's recorded final size if
        # it finished after all (killed between its record and its segment), else None.
        self._on_producer_died = on_producer_died
        self._local_cause = local_cause  # the producer's exception, when it ran here
        self._final: int | None = None
        self._in_file = 0  # bytes found in the data file beyond the published offset
        self._poll = 0.001
        self._next_check = time.monotonic() + liveness

    def _available(self, deadline: float | None) -> int:
        while True:
            if self._closed:
                raise ValueError("I/O operation on a closed stream")
            if self._final is not None:
                offset, state = self._final, ipc.STATE_DONE
            else:
                offset, state = self._seg.progress()
                if state == ipc.STATE_WRITING:
                    offset = max(offset, self._in_file)
            if offset > self.position:
                return offset - self.position
            if state == ipc.STATE_DONE:
                return 0
            if state == ipc.STATE_FAILED:
                raise self._failure(self._seg.error)
            self._wait(deadline)

    def _advance(self, n: int) -> None:
        self.position += n
        self._poll = 0.001
        if self._slot is not None:
            with self._guard:
                if self._closed:
                    return  # the slot may already belong to another reader
                self._seg.set_position(self._slot, self.position)
            full_fence()
        if self._seg.producer_waiting:
            self._entry.writer_bell.ring()

    def _failure(self, text: str) -> CreateError:
        err = CreateError(text)
        err.__cause__ = self._local_cause()
        return err

    def _wait(self, deadline: float | None) -> None:
        seg = self._seg
        slot = self._slot
        if slot is not None:
            timeout = self._liveness
        else:
            self._poll = min(self._poll * 2, 0.05)
            timeout = self._poll
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for the producer")
            timeout = min(timeout, remaining)
        if slot is None:
            time.sleep(timeout)
            rang = time.monotonic() < self._next_check
        else:
            # Invariant: announce "waiting" before the last check of the offset, so
            # a producer publishing after that check sees the flag and rings.
            seg.set_waiting(slot, True)
            full_fence()
            try:
                seen = seg.seq
                offset, state = seg.progress()
                if offset > self.position or state != ipc.STATE_WRITING:
                    return
                rang = self._entry.readers_bell.wait(seen, timeout)
            finally:
                seg.set_waiting(slot, False)
        if rang:
            return
        self._next_check = time.monotonic() + self._liveness
        offset, state = seg.progress()
        if state == ipc.STATE_WRITING and offset <= self.position:
            # Nothing published for a while: bytes in the file count too (an inline
            # producer publishes only once it has found the IPC objects; the kernel
            # grows a file only over copied bytes, and the producer never rewrites).
            self._in_file = entry_bytes(self._fd)
            if self._in_file > self.position:
                return
            producer = seg.producer
            if not ipc.is_alive(producer.pid, producer.start):
                self._final = self._on_producer_died()
                if self._final is None:
                    raise ProducerDied(
                        f"the producing process (pid {producer.pid}) died before "
                        "finishing the entry"
                    )

    def _leave(self) -> None:
        if self._slot is not None:
            self._seg.release_slot(self._slot)
            full_fence()
            if self._seg.producer_waiting:
                # The producer may be waiting on us; let it re-count its readers.
                self._entry.writer_bell.ring()
        # Wake our own thread if it sleeps in read() (a spurious wake-up for others).
        self._entry.readers_bell.ring()

    def _release(self) -> None:
        self._entry.close()
        os.close(self._fd)


class FileReader(_Reader):
    """Reads a finished entry of known size; takes no slot (the entry is immutable)."""

    _SHORT = "the entry's data file is shorter than its recorded size"

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(fd)
        self.size = size

    def _available(self, deadline: float | None) -> int:
        return self.size - self.position
