"""The background cleanup loop: one pass every ``interval`` seconds in a daemon thread.

A pass (``StreamCache.gc``) takes the directory's cleanup lock without waiting,
so across all processes sharing a directory one runs it at a time. It evicts
records by their recorded expiry, discards unfinished records of dead
producers, and walks the filestore and /dev/shm for what no live entry owns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("streamcache")


class Cleaner:
    """Starts lazily (on first use, so nothing runs in a process that only forks),
    stops on :meth:`stop`, and is forgotten in a forked child until used again."""

    def __init__(self, run_pass: Callable[[], object], interval: float) -> None:
        self._run_pass = run_pass
        self.interval = interval
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        if self._thread is not None or self._stopped or self.interval <= 0:
            return
        with self._lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._loop, args=(self._wake,), name="streamcache-cleanup", daemon=True
                )
                self._thread.start()

    def _loop(self, wake: threading.Event) -> None:
        while not wake.wait(self.interval):
            try:
                self._run_pass()
            except Exception:  # never let one bad pass end the loop
                log.exception("streamcache cleanup pass failed")

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
