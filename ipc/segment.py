"""A shared-memory segment: one producer's progress and its readers' positions.

Layout (version 3), little-endian unsigned 64-bit words, the same on every
Python version and every process::

    word  0   magic "SCSEG\\0\\0\\1"
    word  1   layout version (1)
    word  2   slot count
    word  3   progress: offset (bytes the producer has written, low 62 bits) and
              state (top 2 bits: 0 writing, 1 done, 2 failed) (producer only)
    word  4   failure code, once failed: 1 the producer failed, 2 abandoned (every
              reader left, so nothing more was produced)      (producer only)
    word  5   producer waiting for readers (0/1)           (producer only)
    word  6   producer pid                                 (producer only; a new
              producer of a resumed entry takes it over, see :meth:`Segment.take_over`)
    word  7   producer start time, microseconds            (producer only; likewise)
    word  8   slots used: high-water mark of claimed slots (slot claimers, under the
              caller's lock; never lowered)
    word  9   error text length                            (producer only)
    word 10   sequence: changed after every change of progress; readers sleep on its
              low 32 bits with a futex (Linux)              (producer only)
    word 11   announced final size + 1; 0 while unknown     (producer only)
    word 12   stalled (0/1): set once, by a reader that found the producer silent for
              its stall_timeout, under the caller's lock for the entry's key (see
              :meth:`Segment.mark_stalled`)
    word 13   resumable (0/1): set by a reader whose call may resume the entry if its
              producer dies (``resume=True``), under the caller's lock for the key
    word 14   rewinds: times a resumed entry's producer went back to a byte that create
              now gives differently (see :meth:`Segment.rewind`)  (producer only)
    word 15   rewound at: the byte the last rewind went back to  (producer only)
    bytes 128..511  error text, UTF-8                      (producer only)
    from byte 512: slots of 8 words (one cache line each, so readers never share one):
      word 0  position: bytes this reader has consumed     (its reader only)
      word 1  active (0/1)                                 (its reader only)
      word 2  waiting: 0, or the offset this reader sleeps until (its reader only)
      word 3  reader pid                                   (its reader only)
      word 4  reader start time, microseconds              (its reader only)

Invariants:

- Every field has a single writer at a time, so no shared mutex is ever held by a
  process that may die. The producer alone writes the header (words 8, 12 and 13
  aside, written by readers inside the caller's critical section), a reader alone
  writes its slot. A slot changes owner only inside the caller's
  critical section (the cache's index lock), when it is free or its owner is dead.
- A slot's words are written only through the :class:`ReaderSlot` of the reader that
  holds it, and only while it holds it: once released (by any thread of that reader),
  the handle writes nothing more, so a late write cannot land in the slot's next
  owner. Nothing outside this module knows the slot words' offsets.
- Words are written with single aligned 8-byte stores (memoryview of format
  ``Q``), so a concurrent reader never sees a torn value.
- The offset only grows, with one exception: a rewind (:meth:`Segment.rewind`). The
  producer publishes the offset after the bytes are in the data file, so a reader
  that sees offset N can read N bytes from the file.
- A rewind: the producer of a resumed entry whose create gives byte D differently
  stores D (word 15), then the rewind count (word 14), then the offset D, and only
  then truncates the data file to D and writes the new bytes. A reader compares the
  count with the one it last saw before every read and again after it: a reader
  whose bytes went past D fails (they were the old run's), one at or before D goes
  on with the new bytes (the file's bytes before D are the same in both runs). A
  read that overlapped the rewind sees the new count after it (its pread or
  sendfile saw the file change, which followed the count's store), so it is never
  taken for old bytes it may not have got.
- Offset and state share one word, stored at once, so a reader never sees a
  final state with a stale offset (no ordering between two stores is needed,
  which weakly ordered CPUs would not give). The state leaves "writing" once,
  after the error text is written.
- A reader sets its position only after it holds those bytes.
- Coalesced wake-ups. A reader that has caught up publishes in its "waiting" word the
  offset it waits for (its position + 1, or further on when it would rather take
  several writes at once), then re-checks the offset, and sleeps only if no byte
  beyond its position is published: a reader that is behind never sleeps. The
  producer stores the offset, then changes the futex word, then loads the "waiting"
  words, and wakes only the sleepers whose offset it has reached (on their slot's
  futex bit, :attr:`ReaderSlot.bit`). The lost wake-up argument: each side has a full
  fence between its store and its loads (``ipc.channel.full_fence``), so they cannot
  both miss each other: either the producer sees the reader's word (and wakes it once
  the offset reaches it), or the reader sees the new offset (and reads instead of
  sleeping). The reader sleeps on the futex word's value loaded after its own store
  and before its re-check, and the producer changes that word after storing the
  offset and before it wakes anyone: a reader whose re-check missed the new offset
  loaded the old word (stores become visible in order, and loads are not reordered
  with loads, on x86), so its sleep returns at once if the wake came first. A reader
  once rung for an offset is not rung again for it (``scan``'s ``rung``): it saw an
  offset at or past it, so if it sleeps again it waits for a later one. A producer
  about to block on its readers (``Channel.hold_back``) changes the word and wakes
  every sleeper first, whatever it waits for: nothing more comes until a reader
  moves. A sleep for an offset beyond the next byte is also bounded in time by the
  reader (it then takes what is there), and every sleep by the reader's liveness
  check, so a wake-up lost anyway (a weakly ordered CPU) costs latency, never a hang.
  A reader of an older version stores 1: it is woken on every write, as before.
"""

from __future__ import annotations

import mmap
import os
import stat
import sys
import threading
from collections.abc import Collection

import posix_ipc

from ipc.liveness import ProcessId, is_alive
from ipc.tuples import NamedTuple

MAGIC = int.from_bytes(b"SCSEG\x00\x00\x01", "little")
VERSION = 4

STATE_WRITING = 0
STATE_DONE = 1
STATE_FAILED = 2

FAILED_BY_PRODUCER = 1  # create raised, or the entry could not be published
FAILED_ABANDONED = 2  # every reader left: the producer stopped (BrokenPipeError)

HEADER_BYTES = 512
_SLOT_WORDS = 8
SLOT_BYTES = _SLOT_WORDS * 8  # one slot: a cache line, so readers never share one
# 1 MiB of slots. Shared memory is allocated on first touch, and readers claim
# the lowest free slot, so only the slots ever used cost memory or scan time.
# Readers beyond them still work, unslotted.
DEFAULT_SLOTS = 16384
MAX_SLOTS = 1 << 20
ERROR_OFFSET = 136
ERROR_MAX = HEADER_BYTES - ERROR_OFFSET

_W_MAGIC, _W_VERSION, _W_SLOTS, _W_PROGRESS, _W_CODE = 0, 1, 2, 3, 4
_STATE_SHIFT = 62
_OFFSET_MASK = (1 << _STATE_SHIFT) - 1
_W_PWAIT, _W_PPID, _W_PSTART, _W_USED, _W_ERRLEN = 5, 6, 7, 8, 9
# Changed by the producer after every change of progress (a futex word: its low 32
# bits, at the word's first bytes on little-endian machines, its last on big-endian).
_W_SEQ = 10
_W_SIZE = 11  # the size create announced, plus one (0: none announced)
_W_STALLED = 12  # 1 once a reader declared the producer stalled
_W_RESUMABLE = 13  # 1 once a reader that may resume the entry attached
_W_REWINDS, _W_REWOUND_AT = 14, 15  # see Segment.rewind
# Bytes of the dead producer's output a resumed entry's producer has re-created and
# found equal so far (see Segment.set_checked): progress for readers' stall clocks.
_W_CHECKED = 16
_SEQ_BYTE = _W_SEQ * 8 + (4 if sys.byteorder == "big" else 0)
_HEADER_WORDS = HEADER_BYTES // 8
# Words of a slot (private to this module).
_S_POSITION, _S_ACTIVE, _S_WAITING, _S_PID, _S_START = 0, 1, 2, 3, 4


class SegmentError(Exception):
    """A segment is missing, truncated, foreign or of another layout version."""


def _micros(seconds: float) -> int:
    """A start time as stored: whole microseconds (never negative)."""
    return max(round(seconds * 1_000_000), 0)


def _seconds(micros: int) -> float:
    return micros / 1_000_000


class Readers(NamedTuple):
    """One scan of the slots: live readers, the largest position among them (-1 with
    none), how many of them wait for the producer; the futex bits of the waiting
    readers to wake, as the scan's offset reached theirs (``due``), and of those waiting
    for more (``asleep``)."""

    live: int
    best: int
    waiting: int
    due: int = 0
    asleep: int = 0


class ReaderInfo(NamedTuple):
    """One active slot, as :meth:`Segment.reader_list` reports it."""

    slot: int
    reader: ProcessId
    position: int
    waiting: bool


class Segment:
    """A mapped segment. Create with :meth:`create`, attach with :meth:`open`."""

    def __init__(self, name: str, mm: mmap.mmap, inode: tuple[int, int] = (0, 0)) -> None:
        self.name = name
        self._mm = mm
        self.inode = inode  # (device, inode) of the object mapped, see still_named
        self._words = memoryview(mm).cast("Q")
        self.slot_count = self._words[_W_SLOTS]
        self.seq_address = _address_of(mm, _SEQ_BYTE)

    # -- life cycle -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        producer: ProcessId,
        slots: int = DEFAULT_SLOTS,
        *,
        offset: int = 0,
        producer_reads: bool = False,
    ) -> Segment:
        """Create a fresh segment (O_CREX, mode 0600) owned by ``producer``, its progress
        at ``offset``; ``producer_reads``: slot 0 is the producer's own reader. Both are
        in place before the magic, so nobody sees the segment without them."""
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be in 1..{MAX_SLOTS}")
        size = HEADER_BYTES + slots * _SLOT_WORDS * 8
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, 0o600, size)
        try:
            inode = _inode(os.fstat(shm.fd))
            mm = mmap.mmap(shm.fd, size)
        finally:
            os.close(shm.fd)
        words = memoryview(mm).cast("Q")
        words[_W_VERSION] = VERSION
        words[_W_SLOTS] = slots
        words[_W_PPID] = producer.pid
        words[_W_PSTART] = _micros(producer.start)
        words[_W_PROGRESS] = offset
        if producer_reads:
            base = _HEADER_WORDS
            words[base + _S_POSITION] = offset
            words[base + _S_PID] = producer.pid
            words[base + _S_START] = _micros(producer.start)
            words[base + _S_ACTIVE] = 1
            words[_W_USED] = 1
        words[_W_MAGIC] = MAGIC  # last: a segment without magic is not yet valid
        words.release()
        return cls(name, mm, inode)

    @classmethod
    def open(cls, name: str) -> Segment:
        """Attach to an existing segment, checking its owner, mode, magic, version and
        size: an object planted under the name (by another user, or not a regular
        object: a symlink or FIFO in /dev/shm) is refused, never mapped."""
        try:
            shm = posix_ipc.SharedMemory(name, 0)
        except (posix_ipc.Error, OSError) as exc:  # OSError: ELOOP for a planted symlink
            raise SegmentError(f"cannot open segment {name}: {exc}") from exc
        try:
            st = os.fstat(shm.fd)
            if not _ours(st):
                raise SegmentError(f"segment {name} is not ours (owner, mode or type)")
            size = st.st_size
            if size < HEADER_BYTES:
                raise SegmentError(f"segment {name} is truncated ({size} bytes)")
            mm = mmap.mmap(shm.fd, size)
        finally:
            os.close(shm.fd)
        words = memoryview(mm).cast("Q")
        slots = words[_W_SLOTS]
        if (
            words[_W_MAGIC] != MAGIC
            or words[_W_VERSION] != VERSION
            or not 1 <= slots <= MAX_SLOTS
            or size < HEADER_BYTES + slots * _SLOT_WORDS * 8
        ):
            words.release()
            mm.close()
            raise SegmentError(f"segment {name} is foreign or of another layout version")
        words.release()
        return cls(name, mm, _inode(st))

    def still_named(self) -> bool:
        """Whether this segment's name still refers to this very object: False once it
        was unlinked (by its producer at the end, or by a /dev/shm wipe: a reboot,
        systemd's RemoveIPC) or replaced."""
        try:
            shm = posix_ipc.SharedMemory(self.name, 0)
        except (posix_ipc.Error, OSError):
            return False
        try:
            return _inode(os.fstat(shm.fd)) == self.inode
        finally:
            os.close(shm.fd)

    def close(self) -> None:
        """Unmap. The object must not be used afterwards."""
        try:
            self._words.release()
            self._mm.close()
        except (BufferError, ValueError):
            pass

    def unlink(self) -> None:
        unlink_segment(self.name)

    # -- producer side (header) ---------------------------------------------------------

    @property
    def producer(self) -> ProcessId:
        return ProcessId(self._words[_W_PPID], _seconds(self._words[_W_PSTART]))

    def producer_alive(self) -> bool:
        return is_alive(self._words[_W_PPID], _seconds(self._words[_W_PSTART]))

    def take_over(self, producer: ProcessId) -> None:
        """Name ``producer`` as the one writing the entry from now on (a resumed entry).

        The header's producer words change hands only here, and only once the previous
        producer is dead and its successor holds the entry's data-file lock, inside the
        caller's critical section for the entry's key: so they still have one writer at
        a time. The start time is stored before the pid: a reader that loads the pair
        in between sees a process that is not alive, and looks again under that lock.
        """
        self._words[_W_PSTART] = _micros(producer.start)
        self._words[_W_PPID] = producer.pid

    @property
    def offset(self) -> int:
        return self._words[_W_PROGRESS] & _OFFSET_MASK

    @property
    def state(self) -> int:
        return self._words[_W_PROGRESS] >> _STATE_SHIFT

    def progress(self) -> tuple[int, int]:
        """(offset, state) from one load."""
        word = self._words[_W_PROGRESS]
        return word & _OFFSET_MASK, word >> _STATE_SHIFT

    @property
    def seq(self) -> int:
        """The futex word: read it before checking progress, then sleep on it."""
        return self._words[_W_SEQ] & 0xFFFFFFFF

    def bump(self) -> None:
        """Change the futex word: a reader about to sleep on its old value does not."""
        w = self._words
        w[_W_SEQ] = (w[_W_SEQ] + 1) & 0xFFFFFFFF

    @property
    def announced_size(self) -> int | None:
        """The final size the producer announced, or None."""
        word = self._words[_W_SIZE]
        return word - 1 if word else None

    def announce_size(self, size: int) -> None:
        self._words[_W_SIZE] = size + 1

    def publish_offset(self, offset: int) -> None:
        self._words[_W_PROGRESS] = offset  # state "writing" is 0
        self.bump()

    def finish(self, offset: int) -> None:
        """Publish the final offset and the "done" state in one store."""
        self._words[_W_PROGRESS] = offset | (STATE_DONE << _STATE_SHIFT)
        self.bump()

    def fail(self, error: str, code: int = FAILED_BY_PRODUCER) -> None:
        """Publish the error text and code, then the "failed" state."""
        data = error.encode("utf-8", "replace")[:ERROR_MAX]
        self._mm[ERROR_OFFSET : ERROR_OFFSET + len(data)] = data
        self._words[_W_ERRLEN] = len(data)
        self._words[_W_CODE] = code
        self._words[_W_PROGRESS] = self.offset | (STATE_FAILED << _STATE_SHIFT)
        self.bump()

    @property
    def error(self) -> str:
        n = min(self._words[_W_ERRLEN], ERROR_MAX)
        return self._mm[ERROR_OFFSET : ERROR_OFFSET + n].decode("utf-8", "replace")

    @property
    def failure_code(self) -> int:
        """FAILED_BY_PRODUCER or FAILED_ABANDONED once failed; 0 before."""
        return self._words[_W_CODE]

    @property
    def stalled(self) -> bool:
        """Whether a reader declared the producer stalled (see :meth:`mark_stalled`)."""
        return bool(self._words[_W_STALLED])

    def mark_stalled(self) -> bool:
        """Declare the producer stalled; True if this call did (it was not yet).

        The one header word a reader writes. Callers hold the caller's lock for the
        entry's key, so two readers never race for it, and only ever set it: a reader
        that sees it set fails, and the producer's next write or its end does too.
        """
        if self._words[_W_STALLED]:
            return False
        self._words[_W_STALLED] = 1
        return True

    @property
    def resumable(self) -> bool:
        """Whether a reader that may resume the entry attached (cleanup then leaves a
        dead producer's entry to its live readers)."""
        return bool(self._words[_W_RESUMABLE])

    def mark_resumable(self) -> None:
        """Set by a resumable reader as it attaches, under the caller's lock for the
        entry's key (like word 12: readers only ever set it)."""
        self._words[_W_RESUMABLE] = 1

    def rewind(self, offset: int) -> None:
        """Go back to ``offset`` (a resumed entry's create gives that byte differently
        from its dead producer's run): readers past it fail, the others will read the
        new bytes. The producer stores this before it truncates the data file (see the
        module docstring's invariants)."""
        w = self._words
        w[_W_REWOUND_AT] = offset
        w[_W_REWINDS] += 1
        w[_W_PROGRESS] = offset  # state "writing" is 0
        self.bump()

    def set_checked(self, n: int) -> None:
        """A resumed entry's producer has re-created its first ``n`` bytes and found
        them equal to those on disk. Nothing new for readers to read, but progress:
        a reader's stall clock counts silence from the last change of offset or of
        this word, so re-checking a long prefix is never taken for a stall (its
        producer's writes are the only stores to it, as for the offset)."""
        self._words[_W_CHECKED] = n

    @property
    def checked(self) -> int:
        return self._words[_W_CHECKED]

    @property
    def rewinds(self) -> int:
        """How many times the entry was rewound (see :meth:`rewind`)."""
        return self._words[_W_REWINDS]

    @property
    def rewound_at(self) -> int:
        """The byte the last rewind went back to."""
        return self._words[_W_REWOUND_AT]

    def set_producer_waiting(self, waiting: bool) -> None:
        self._words[_W_PWAIT] = int(waiting)

    @property
    def producer_waiting(self) -> bool:
        return bool(self._words[_W_PWAIT])

    # -- reader side (slots) ------------------------------------------------------------

    def claim_slot(self, reader: ProcessId) -> ReaderSlot | None:
        """Claim a free slot for ``reader``; None when all are taken by live readers.

        Must be called inside the caller's critical section for this segment (two
        claimers must never race for one slot). A slot is free when inactive, or when
        its owner died.
        """
        w = self._words
        used = w[_W_USED]
        free = next(
            (s for s in range(used) if not w[_HEADER_WORDS + s * _SLOT_WORDS + _S_ACTIVE]),
            used if used < self.slot_count else None,
        )
        if free is None:  # all used slots active: reclaim one whose owner died
            free = next((s for s in range(used) if not self._owner_alive(s)), None)
            if free is None:
                return None
        base = _HEADER_WORDS + free * _SLOT_WORDS
        # A reclaimed slot stays active throughout (a dead owner's slot is active):
        # clearing it would let the producer count zero readers for an instant.
        w[base + _S_POSITION] = 0
        w[base + _S_WAITING] = 0
        w[base + _S_PID] = reader.pid
        w[base + _S_START] = _micros(reader.start)
        w[base + _S_ACTIVE] = 1  # last: the slot counts only once it is complete
        if free >= used:
            w[_W_USED] = free + 1
        return ReaderSlot(self._words, free)

    def adopt_slot(self, slot: int) -> ReaderSlot:
        """The handle of a slot claimed for this process by another (``producer_reads``
        gives the producer slot 0 at creation)."""
        return ReaderSlot(self._words, slot)

    def _owner_alive(self, slot: int) -> bool:
        base = _HEADER_WORDS + slot * _SLOT_WORDS
        return is_alive(self._words[base + _S_PID], _seconds(self._words[base + _S_START]))

    def scan(
        self,
        skip: Collection[tuple[int, int, int]] = (),
        offset: int | None = None,
        rung: dict[int, int] | None = None,
    ) -> Readers:
        """Live readers, their best position, how many wait and their futex bits, from
        one snapshot of the active slots. ``skip``: slots found dead, as (slot, pid,
        start) from :meth:`dead_readers` (a slot re-claimed since by another reader
        counts again). ``offset``: a waiting reader is due once it reaches the offset
        the reader waits for (None: every waiting reader is due; others are
        ``asleep``). ``rung``: slot -> the offset its reader waited for when it was
        last rung, kept by the caller: a reader rung for that offset is not due again
        (it is awake, not yet scheduled; once it sleeps again it waits for more)."""
        words = self._snapshot()
        live = waiting = due = asleep = 0
        best = -1
        for i in range(0, len(words), _SLOT_WORDS):
            if not words[i + _S_ACTIVE]:
                continue
            if skip and (i // _SLOT_WORDS, words[i + _S_PID], words[i + _S_START]) in skip:
                continue
            live += 1
            until = words[i + _S_WAITING]
            if until:
                waiting += 1
                slot = i // _SLOT_WORDS
                if offset is not None and until > offset:
                    asleep |= 1 << (slot & 31)
                elif rung is None:
                    due |= 1 << (slot & 31)
                elif rung.get(slot) != until:
                    rung[slot] = until
                    due |= 1 << (slot & 31)
            pos = words[i + _S_POSITION]
            if pos > best:
                best = pos
        return Readers(live, best, waiting, due, asleep)

    def dead_readers(self) -> set[tuple[int, int, int]]:
        """The active slots whose owner died, as (slot, pid, start) for :meth:`scan`."""
        words = self._snapshot()
        dead = set()
        for i in range(0, len(words), _SLOT_WORDS):
            if words[i + _S_ACTIVE]:
                pid, start = words[i + _S_PID], words[i + _S_START]
                if not is_alive(pid, _seconds(start)):
                    dead.add((i // _SLOT_WORDS, pid, start))
        return dead

    def has_live_reader(self, exclude: int | None = None) -> bool:
        """True if an active slot (other than slot ``exclude``) belongs to a live process."""
        words = self._snapshot()
        return any(
            words[i + _S_ACTIVE]
            and i // _SLOT_WORDS != exclude
            and is_alive(words[i + _S_PID], _seconds(words[i + _S_START]))
            for i in range(0, len(words), _SLOT_WORDS)
        )

    def takes_new_readers(self) -> bool:
        """Whether a new reader may attach: still writing, and either every announced
        byte written (the producer then finishes with no reader left) or a live reader
        attached (a producer whose readers all left fails)."""
        offset, state = self.progress()
        if state != STATE_WRITING:
            return False
        return self.announced_size == offset or self.has_live_reader()

    def reader_list(self) -> list[ReaderInfo]:
        """Every active slot (for inspection: ``streamcache stats``)."""
        words = self._snapshot()
        return [
            ReaderInfo(
                i // _SLOT_WORDS,
                ProcessId(words[i + _S_PID], _seconds(words[i + _S_START])),
                words[i + _S_POSITION],
                bool(words[i + _S_WAITING]),
            )
            for i in range(0, len(words), _SLOT_WORDS)
            if words[i + _S_ACTIVE]
        ]

    def slot_info(self, slot: int) -> ReaderInfo | None:
        """The reader holding ``slot``, or None if it is not active."""
        return next((r for r in self.reader_list() if r.slot == slot), None)

    @property
    def slots_used(self) -> int:
        """High-water mark of claimed slots (slots are reused lowest first)."""
        return min(self._words[_W_USED], self.slot_count)

    def _snapshot(self) -> list[int]:
        used = min(self._words[_W_USED], self.slot_count)
        return self._words[_HEADER_WORDS : _HEADER_WORDS + used * _SLOT_WORDS].tolist()


class ReaderSlot:
    """A reader's claim on one slot: the only way its words are written.

    ``release`` may come from another thread of the reader (an ``astream`` cancelled
    mid-wait closes from a second thread) while the reading thread is about to publish
    its position or clear its "waiting" flag. Each write happens under the handle's
    lock and only while the slot is held, so after ``release`` nothing of this reader
    lands in the slot, which may already belong to another reader.
    """

    __slots__ = ("_base", "_held", "_lock", "_words", "bit", "index")

    def __init__(self, words: memoryview, index: int) -> None:
        self._words = words
        self.index = index
        self.bit = 1 << (index & 31)  # the futex bit this reader sleeps on
        self._base = _HEADER_WORDS + index * _SLOT_WORDS
        self._lock = threading.Lock()
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def set_position(self, position: int) -> None:
        with self._lock:
            if self._held:
                self._words[self._base + _S_POSITION] = position

    def set_waiting(self, until: int) -> None:
        """Publish the offset this reader waits for (0 or False: it does not wait; True:
        any byte after offset 0)."""
        with self._lock:
            if self._held:
                self._words[self._base + _S_WAITING] = int(until)

    def release(self) -> bool:
        """Give the slot up (once); True if this call released it."""
        with self._lock:
            if not self._held:
                return False
            self._held = False
            self._words[self._base + _S_ACTIVE] = 0
            return True


def _inode(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _ours(st: os.stat_result) -> bool:
    """A segment this user made: owned by us, private, a regular object (where the
    platform reports a type at all)."""
    kind = stat.S_IFMT(st.st_mode)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077 and kind in (0, stat.S_IFREG)


def mapping_prepared() -> bool:
    """Whether this process has loaded what mapping a segment needs (ctypes)."""
    return "ctypes" in sys.modules


def prepare_mapping() -> None:
    """Load what mapping a segment needs, if not yet: ctypes, 5-8 ms of CPU at a
    process's first mapping. For a caller about to map one while holding a lock that
    other processes wait for, so that it does not make them wait for an import."""
    import ctypes  # noqa: F401


def _address_of(mm: mmap.mmap, offset: int) -> int:
    """The address of byte ``offset`` of the mapping (valid while it is mapped). The
    ctypes view is dropped at once: a live export would keep the mapping from closing."""
    import ctypes  # here: a process that never maps a segment does without it

    view = ctypes.c_char.from_buffer(mm, offset)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def unlink_segment(name: str) -> bool:
    """Remove a segment's name (True if it existed); mappings already open keep working."""
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        return False
    except (posix_ipc.Error, OSError):
        return False  # a name we cannot unlink (another user's, a directory): not ours
    return True
