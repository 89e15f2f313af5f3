"""Child-process functions for tests/disk/test_stripe_locks.py (spawn context).

Each child reports through a multiprocessing queue ``out`` (``("error", traceback)`` on an
unexpected exception, via :func:`xproc.reporting`); every wait is bounded.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from xproc import WAIT, reporting

from streamcache.cache import LAYOUT
from streamcache.disk.index import Index


@reporting
def fork_while_locked(dir: str, key_hash: str, *, out: Any) -> None:
    """A thread holds ``key_hash``'s index stripe; meanwhile the main thread forks a child
    that merely lives on (a pool worker, a subprocess before exec). The test then SIGKILLs
    this process while its thread is still inside the critical section."""
    index = Index(os.path.join(dir, LAYOUT))
    locked = threading.Event()
    never = threading.Event()

    def hold() -> None:
        with index.locked(key_hash, WAIT):
            locked.set()
            never.wait(WAIT * 2)

    threading.Thread(target=hold, daemon=True).start()
    if not locked.wait(WAIT):
        raise TimeoutError("the thread never took the lock")
    pid = os.fork()
    if pid == 0:  # the forked child: does nothing with the cache, just lives
        try:
            time.sleep(WAIT)
        finally:
            os._exit(0)
    out.put(("forked", pid))
    never.wait(WAIT * 2)
