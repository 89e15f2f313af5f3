"""The bytes of a shared command's entry: its stdout and stderr as frames, as Gitaly's
sideband writer keeps them (one band byte, a 4-byte big-endian length, the payload),
ended by a frame that carries the exit status.

Every reader replays stdout (band 1) to its own stdout and stderr (band 2) to its own
stderr in the order the command wrote them; the end frame (band 3) holds the status
the reader exits with. Only a command that exited 0 is stored, so a stored entry
always ends with status 0; a failed run fails its entry instead, and its failure's
text carries the status (see :mod:`streamcache.cli.detached`)."""

from __future__ import annotations

import os
import struct

from ..entry.sink import NO_SENDFILE

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from ..entry.stream import Stream

STDOUT = 1
STDERR = 2
END = 3

HEADER = struct.Struct(">BI")
# A reader's cost is per frame (parse, one write each): the command's stdout pipe is
# grown to this (Linux), so a fast command's output comes in frames this large.
MAX_PAYLOAD = 1 << 20


def frame(band: int, payload: bytes) -> bytes:
    return HEADER.pack(band, len(payload)) + payload


def end_frame(status: int) -> bytes:
    return frame(END, bytes([status & 0xFF]))


# What a detached producer tells its invocation, alone, when it finds the entry there
# already (another process produces it): read it yourself. Never in an entry (band 4
# is not a frame there), so it cannot be taken for a command's output.
HANDOFF = HEADER.pack(4, 0)


class FrameError(ValueError):
    """Bytes that are not frames: an entry not written by a shared command."""


class Demux:
    """A ``dst`` for the cache: parses frames as they come, in chunks of any size, and
    writes band 1 to ``out_fd`` and band 2 to ``err_fd`` (dropped when None). With
    ``out_fd`` None every frame is passed on whole to ``relay_fd`` instead (less
    band 2 when ``err_fd`` is None): the detached producer relays to its invocation.
    ``status`` is the end frame's, None until one came."""

    def __init__(self, out_fd: int | None, err_fd: int | None, relay_fd: int | None = None) -> None:
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.relay_fd = relay_fd
        self.status: int | None = None
        self.delivered = 0  # payload bytes written out
        self._buf = bytearray()
        self._band = 0
        self._left = -1  # payload bytes still to come of the current frame; -1: a header

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while len(view):
            if self._left < 0:
                need = HEADER.size - len(self._buf)
                self._buf += view[:need]
                view = view[need:]
                if len(self._buf) < HEADER.size:
                    break
                self._band, self._left = HEADER.unpack(self._buf)
                if not STDOUT <= self._band <= END:
                    raise FrameError(f"not a frame: band {self._band}")
                self._buf.clear()
                if self.relay_fd is not None and self._passed(self._band):
                    _write_all(self.relay_fd, HEADER.pack(self._band, self._left))
            take = view[: self._left]
            view = view[len(take) :]
            self._left -= len(take)
            self._payload(take)
            if self._left == 0:
                self._left = -1
        return total

    def _passed(self, band: int) -> bool:
        return band != STDERR or self.err_fd is not None

    def _payload(self, data: memoryview) -> None:
        band = self._band
        if band == END:
            self._buf += data
            if self._left == 0:
                self.status = self._buf[0] if self._buf else 0
                self._buf.clear()
                if self.relay_fd is not None:
                    _write_all(self.relay_fd, bytes([self.status]))
            return
        if not data:
            return
        if self.relay_fd is not None:
            if self._passed(band):
                _write_all(self.relay_fd, data)
            return
        fd = self.out_fd if band == STDOUT else self.err_fd
        if fd is not None:
            _write_all(fd, data)
            self.delivered += len(data)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view) :]


class Replay:
    """Replays the frames of a cache ``Stream`` (an entry, finished or in flight) to
    ``out_fd`` (band 1) and ``err_fd`` (band 2; dropped when None), as :class:`Demux`
    does for bytes given to it, without taking the payloads through this process: it
    reads each frame's header (a few bytes) and moves the payload from the entry's data
    file to the descriptor with ``Stream.sendfile``. Where a descriptor refuses
    sendfile (a file opened with O_APPEND, a terminal, an entry with no data file),
    its payloads are read and written instead. ``status`` is the end frame's, None
    until one came."""

    def __init__(self, out_fd: int, err_fd: int | None) -> None:
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.status: int | None = None
        self.delivered = 0  # payload bytes written out
        self._copied: set[int] = set()  # descriptors that refused sendfile

    def replay(self, stream: Stream) -> None:
        """Every frame of ``stream`` to its descriptor, up to the stream's end (or a
        frame cut short: then ``status`` may stay None)."""
        while (header := _read_exactly(stream, HEADER.size)) is not None:
            band, length = HEADER.unpack(header)
            if not STDOUT <= band <= END:
                raise FrameError(f"not a frame: band {band}")
            if band == END:
                payload = _read_exactly(stream, length)
                if payload is None:
                    return
                self.status = payload[0] if payload else 0
                continue
            fd = self.out_fd if band == STDOUT else self.err_fd
            if not self._move(stream, fd, length):
                return

    def _move(self, stream: Stream, fd: int | None, length: int) -> bool:
        """``length`` bytes of ``stream`` to ``fd`` (read and dropped when None);
        False if the stream ended first."""
        left = length
        while left:
            if fd is None or fd in self._copied:
                data = stream.read(min(left, MAX_PAYLOAD))
                if fd is not None:
                    _write_all(fd, data)
                moved = len(data)
            else:
                try:
                    moved = stream.sendfile(fd, left)
                except OSError as exc:
                    if exc.errno not in NO_SENDFILE:
                        raise
                    self._copied.add(fd)  # (nothing moved) read and write from now on
                    continue
            if not moved:
                return False
            left -= moved
            if fd is not None:
                self.delivered += moved
        return True


def _read_exactly(stream: Stream, n: int) -> bytes | None:
    """``n`` bytes of ``stream``, or None if it ends first."""
    data = stream.read(n)
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            return None
        data += more
    return data
