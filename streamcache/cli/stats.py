"""streamcache stats, gc and invalidate: what a cache directory holds, one cleanup
pass, and dropping one key's entry.

``stats`` only reads: records (symlinks), file metadata, the key previews stored with
data files, and the shared-memory segments of entries in flight (the read-only
inspection module gives those). It takes no lock, changes nothing, and creates
nothing. None of the commands creates the directory it is pointed at.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterator

import ipc

from ..cache import LAYOUT, StreamCache
from ..disk.filestore import Filestore, entry_info
from ..disk.inspection import in_flight, shard_files
from . import counters
from .options import CliError, default_dir

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = 1
STATES = ("writing", "stalled", "done", "expired", "failed", "invalid")
# ``stats``' default for --stalled-after: seconds without a write, while a reader waits,
# after which an entry in flight is shown "stalled".
STALLED_AFTER = 30.0

STATS_DESCRIPTION = """\
Show every entry of a cache: its key preview (when the cache stores one) or its
key's sha256, state, size, age, producer and progress, and its readers with their
positions; then totals. Reads only: takes no lock and creates nothing.

states:
  writing   being produced; new fetches attach to it and stream it
  stalled   being produced, but its producer (alive) has written nothing for
            --stalled-after seconds while a reader waits for it (a cache with
            stall_timeout fails such an entry; without one, readers wait on)
  done      finished and unexpired: served from the file
  expired   past its max-age: no longer served (removed by the next cleanup)
  failed    its producer failed or died: no longer served
  invalid   a file or record that is not intact (removed by the next cleanup)
"""

STATS_EPILOG = f"""\
JSON schema (--json; version {SCHEMA_VERSION}; sizes in bytes, times in seconds):
  {{"schema": {SCHEMA_VERSION}, "dir": str, "time": epoch seconds,
   "entries": [{{
      "key_sha256": hex str (the entry's name),
      "key_preview": str or null (the key's first characters, when stored),
      "key_length": int or null (the full key's length, when a preview is stored),
      "state": "writing" | "stalled" | "done" | "expired" | "failed" | "invalid",
      "size": int or null (the final size: once finished, or once announced by create),
      "written": int (bytes produced so far; the size once finished),
      "disk_bytes": int (the entry's file on disk),
      "age": seconds or null (since the entry was created, when recorded),
      "expires_in": seconds or null (negative once expired),
      "quiet": seconds or null (entries in flight: since their producer last wrote),
      "producer": {{"pid": int, "alive": bool}} or null (finished entries),
      "error": str or null (why it failed),
      "readers": [{{"slot": int, "pid": int, "alive": bool, "position": int,
                   "waiting": bool}}]}}],
   "totals": {{"entries": int, "states": {{state: int}}, "bytes": int (sum of "written"),
              "disk_bytes": int, "readers": int, "orphaned_data_files": int,
              "ipc_objects": int}},
   "commands": null or {{"hit": int, "miss": int, "uncached": int, "failed": int,
                "served_bytes": int, "generated_bytes": int}}
      (the counters of 'run' and 'git-pack-objects-hook' invocations on this cache:
      lookups that read an entry, that ran the command, that could not use the cache;
      invocations that did not deliver everything; bytes delivered to them and
      written by their commands)}}
With --watch --json, one such document per line, each on a single line.
"""

GC_DESCRIPTION = """\
Run one cleanup pass on a cache directory and print what it removed: expired
entries, entries whose producer died (and records that are garbage), data files
that no entry owns, and shared-memory objects (segments and semaphores) that no
entry in flight owns. Entries in flight are left alone.
"""

INVALIDATE_DESCRIPTION = """\
Drop the entry of KEY, so that the next request for it, in any process, creates
it afresh: a finished entry is removed (readers that have it open read on), and an
entry being produced goes on for its current readers but is never stored. Says
whether there was anything to drop; either way the exit status is 0.
"""


def cache_root(path: str | None) -> tuple[str, str]:
    """The cache dir named by ``path`` (or the default) and its layout root; CliError
    (exit status 2) if it is not a cache. Nothing is created."""
    cache_dir = os.path.abspath(path if path is not None else default_dir())
    try:
        st = os.stat(cache_dir)
    except FileNotFoundError:
        raise CliError(f"no cache at {cache_dir}: it does not exist (nothing created)") from None
    except OSError as exc:
        raise CliError(f"cannot read {cache_dir}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"{cache_dir} is not a directory, so not a cache")
    root = os.path.join(cache_dir, LAYOUT)
    if os.path.isdir(cache_dir) and not os.access(cache_dir, os.R_OK | os.X_OK):
        raise CliError(f"cannot read {cache_dir}: permission denied")
    if not os.path.isdir(root):
        raise CliError(
            f"{cache_dir} is not a streamcache cache: it has no {LAYOUT}/ directory, which "
            "a cache makes when first opened"
        )
    return cache_dir, root


def _info(path: str, now: float) -> dict[str, Any]:
    info = entry_info(path)
    if info is None:
        return {"key_preview": None, "key_length": None, "age": None}
    return {
        "key_preview": info.key_preview,
        "key_length": info.key_length,
        "age": max(now - info.created, 0.0),
    }


def _blank(key_hash: str) -> dict[str, Any]:
    return {
        "key_sha256": key_hash,
        "key_preview": None,
        "key_length": None,
        "state": "invalid",
        "size": None,
        "written": 0,
        "disk_bytes": 0,
        "age": None,
        "expires_in": None,
        "quiet": None,
        "producer": None,
        "error": None,
        "readers": [],
    }


def _finished(root: str, now: float) -> Iterator[dict[str, Any]]:
    files = Filestore(root)
    for entry in shard_files(files.entries_dir):
        name = entry.name
        item = _blank(name)
        item.update(_info(entry.path, now))
        try:
            item["disk_bytes"] = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        fin = None
        if files.entry_path(name) == entry.path:
            try:
                fin = files.open_entry(name)
            except OSError:
                fin = None
        if fin is None:
            item["error"] = "not an intact entry"
        else:
            if fin.fd >= 0:
                os.close(fin.fd)
            item.update(
                state="done" if fin.expires > now else "expired",
                size=fin.size,
                written=fin.size,
                expires_in=fin.expires - now,
            )
        yield item


def _in_flight(
    root: str, prefix: str, now: float, live_files: set[str], stalled_after: float | None
) -> Iterator[dict[str, Any]]:
    for e in in_flight(root, prefix):
        item = _blank(e.key_hash)
        rec = e.record
        if rec is None or e.path is None:
            item["error"] = "a record that does not parse"
            yield item
            continue
        live_files.add(rec.file)
        item.update(_info(e.path, now))
        item.update(
            producer={"pid": rec.pid, "alive": e.producer_alive},
            expires_in=rec.expires - now,
            disk_bytes=e.disk_bytes,
            written=e.written,
            size=e.size,
            readers=[r._asdict() for r in e.readers],
            quiet=None if e.modified is None else max(now - e.modified, 0.0),
        )
        if e.state == ipc.STATE_FAILED:
            item["state"] = "failed"
            item["error"] = e.error
        elif not e.producer_alive:
            item["state"] = "failed"
            item["error"] = f"the producing process (pid {rec.pid}) died"
        elif rec.expires <= now:
            item["state"] = "expired"
        elif e.state == ipc.STATE_DONE:
            item["state"] = "done"  # being published
            item["size"] = item["written"]
        elif _stalled(item, stalled_after):
            item["state"] = "stalled"
        else:
            item["state"] = "writing"
        yield item


def _stalled(item: dict[str, Any], stalled_after: float | None) -> bool:
    """Nothing written for ``stalled_after`` seconds while a live reader waits."""
    quiet = item["quiet"]
    if stalled_after is None or quiet is None or quiet < stalled_after:
        return False
    return any(r["alive"] and r["waiting"] for r in item["readers"])


def collect(cache_dir: str, root: str, stalled_after: float | None = None) -> dict[str, Any]:
    """The stats document (see STATS_EPILOG for its schema); entries in flight are
    "stalled" after ``stalled_after`` seconds without a write (None: never)."""
    now = time.time()
    prefix = ipc.prefix_for(cache_dir)
    live_files: set[str] = set()
    entries = list(_in_flight(root, prefix, now, live_files, stalled_after))
    entries += list(_finished(root, now))
    orphans = sum(1 for e in shard_files(Filestore(root).data_dir) if e.name not in live_files)
    states = Counter(e["state"] for e in entries)
    return {
        "schema": SCHEMA_VERSION,
        "dir": cache_dir,
        "time": now,
        "entries": entries,
        "totals": {
            "entries": len(entries),
            "states": {s: states[s] for s in STATES},
            "bytes": sum(e["written"] for e in entries),
            "disk_bytes": sum(e["disk_bytes"] for e in entries),
            "readers": sum(len(e["readers"]) for e in entries),
            "orphaned_data_files": orphans,
            "ipc_objects": len(ipc.list_objects(prefix)),
        },
        "commands": counters.read(cache_dir),
    }


# -- text ------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    sign = "-" if s < 0 else ""
    s = abs(s)
    if s < 120:
        return f"{sign}{s:.1f}s"
    if s < 7200:
        return f"{sign}{s / 60:.1f}m"
    return f"{sign}{s / 3600:.1f}h"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def entry_label(e: dict[str, Any], width: int = 32) -> str:
    """The key preview, quoted (… when cut), or ``sha256:`` and the start of the hash."""
    preview = e["key_preview"]
    if preview is None:
        return f"sha256:{e['key_sha256'][:16]}"
    text = _printable(preview)
    cut = len(text) > width - 2 or (e["key_length"] or 0) > len(preview)
    if cut:
        text = text[: width - 3] + "…"
    return f'"{text}"'


def _readers(e: dict[str, Any], show: int = 3) -> str:
    readers = e["readers"]
    if not readers:
        return "-"
    parts = []
    for r in readers[:show]:
        mark = "" if r["alive"] else " dead"
        wait = " waiting" if r["waiting"] else ""
        parts.append(f"{r['pid']}@{human_bytes(r['position'])}{wait}{mark}")
    more = f", +{len(readers) - show} more" if len(readers) > show else ""
    return f"{len(readers)}: " + ", ".join(parts) + more


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"cache {doc['dir']} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(doc['time']))}"
    ]
    entries = sorted(doc["entries"], key=lambda e: (STATES.index(e["state"]), -(e["age"] or 0.0)))
    if entries:
        header = (
            f"{'ENTRY':34} {'STATE':8} {'BYTES':>10} {'AGE':>7} {'EXPIRES':>8}  "
            f"{'PRODUCER':16} READERS (pid@position)"
        )
        lines.append(header)
        for e in entries:
            p = e["producer"]
            producer = "-" if p is None else f"{p['pid']} {'alive' if p['alive'] else 'dead'}"
            lines.append(
                f"{entry_label(e):34} {e['state']:8} {human_bytes(e['written']):>10} "
                f"{_seconds(e['age']):>7} {_seconds(e['expires_in']):>8}  {producer:16} "
                f"{_readers(e)}"
            )
            if e["error"]:
                lines.append(f"{'':34} error: {_printable(e['error'])}")
    else:
        lines.append("no entries")
    t = doc["totals"]
    states = ", ".join(f"{n} {s}" for s, n in t["states"].items() if n)
    lines.append(
        f"total: {t['entries']} entries{f' ({states})' if states else ''}; "
        f"{human_bytes(t['bytes'])} of entries, {human_bytes(t['disk_bytes'])} on disk; "
        f"{t['readers']} readers; {t['ipc_objects']} IPC objects; "
        f"{t['orphaned_data_files']} orphaned data files"
    )
    c = doc.get("commands")
    if c is not None:
        lines.append(
            f"commands: {c['hit']} hits, {c['miss']} misses, {c['uncached']} uncached, "
            f"{c['failed']} failed; {human_bytes(c['served_bytes'])} served, "
            f"{human_bytes(c['generated_bytes'])} generated"
        )
    return "\n".join(lines)


def stats_main(args: argparse.Namespace) -> int:
    import json  # here: every command line imports this module to build its parser

    cache_dir, root = cache_root(args.dir)
    if args.watch is None:
        doc = collect(cache_dir, root, args.stalled_after)
        print(json.dumps(doc, indent=2) if args.json else render(doc))
        return 0
    tty = sys.stdout.isatty()
    try:
        while True:
            cache_root(cache_dir)  # still a cache
            doc = collect(cache_dir, root, args.stalled_after)
            if args.json:
                print(json.dumps(doc), flush=True)
            else:
                clear = "\x1b[H\x1b[2J" if tty else ""
                print(f"{clear}{render(doc)}\n", flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def gc_main(args: argparse.Namespace) -> int:
    cache_dir, _ = cache_root(args.dir)
    cache = StreamCache(cache_dir, max_age=args.max_age, cleanup_interval=0)
    deadline = time.monotonic() + 10.0
    while not (report := cache.gc()).ran:
        if time.monotonic() > deadline:
            print(
                f"streamcache gc: another process kept the cleanup lock of {cache_dir} for "
                "10 s; nothing done",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.05)  # another process's pass: they are short
    removed = [
        _count(report.expired, "expired entry", "expired entries"),
        _count(
            report.discarded,
            "entry of a dead producer or garbage record",
            "entries of dead producers or garbage records",
        ),
        _count(report.files_removed, "orphaned data file", "orphaned data files"),
        _count(report.ipc_removed, "IPC object", "IPC objects"),
    ]
    print(f"gc {cache_dir}: removed " + ", ".join(removed))
    return 0


def invalidate_main(args: argparse.Namespace) -> int:
    cache_dir, _ = cache_root(args.dir)
    cache = StreamCache(cache_dir, cleanup_interval=0)
    what = "dropped the entry" if cache.invalidate(args.key) else "no entry"
    print(f"invalidate {cache_dir}: {what} of {args.key!r}")
    return 0
