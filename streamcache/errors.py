"""Exceptions.

::

    Exception
     └── Error                 base of everything streamcache raises on its own
          └── CreateError      the producer of an entry failed; every reader gets it
               ├── ProducerDied  the producing process died or vanished mid-stream
               ├── ProducerStalled  the producer wrote nothing for stall_timeout
               └── AllReadersLeft  (internal) every reader left, so the producer stopped
          └── SharedMemoryRemoved  an entry's IPC objects were removed from under it
          └── UnsupportedFilesystem  (also an OSError) the cache dir or /dev/shm cannot
                                     keep the cache's promises (a network file system)

Bad arguments raise the built-in ``TypeError``/``ValueError``; a ``timeout`` that
passes raises the built-in ``TimeoutError``. A producer whose readers all left gets
``BrokenPipeError`` from its writer's ``write``.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of streamcache's own errors."""


class CreateError(Error):
    """The producer of an entry failed.

    The text carries the original exception's type name and message; in the process
    where the producer ran, the original exception is also the ``__cause__``.
    """


class ProducerDied(CreateError):
    """The process producing an entry died or vanished before finishing it."""


class ProducerStalled(CreateError):
    """The producer of an entry, alive, wrote nothing for the cache's ``stall_timeout``
    while readers waited: the entry failed for every reader and left the index, and
    the producer's next write raises this too."""


class NotDeterministic(CreateError):
    """A resumed entry (``resume=True``) was re-created with bytes that differ from those
    its dead producer had written: create is not deterministic. Raised to every reader
    that had read past the first differing byte (and to all, if create announced
    another size); readers behind it go on with the new bytes. No byte of the new run
    is ever spliced after old bytes that differ."""


class AllReadersLeft(CreateError):
    """The producer stopped because every reader had left (its write raised
    BrokenPipeError). A reader that attached just then, before any byte reached its
    caller, looks the key up again instead of failing."""


class SharedMemoryRemoved(Error):
    """The shared-memory objects of an entry in flight were removed from under it (a
    reboot's /dev/shm, systemd's RemoveIPC at logout): nobody can attach to it any
    more, so it fails (its producer's ``write`` raises this; readers get a
    CreateError naming it) and the next fetch creates afresh."""


class UnsupportedFilesystem(Error, OSError):
    """The cache directory is on a network or cluster file system (refused unless
    ``allow_network_fs=True``), or /dev/shm cannot hold an entry's shared memory
    (absent, not writable, too small). The message names the type and why."""


def describe(exc: BaseException) -> str:
    """``TypeName: message``, the form in which an error crosses processes. Never
    raises: an exception whose ``str()`` fails is described by its type alone."""
    name = getattr(type(exc), "__name__", "Exception")
    try:
        text = str(exc)
    except BaseException:
        return f"{name}: <message could not be formatted>"
    return f"{name}: {text}" if text else name
