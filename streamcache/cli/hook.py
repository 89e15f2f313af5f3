"""streamcache git-pack-objects-hook: a pack-objects cache for stock git servers.

``git upload-pack`` runs ``HOOK git pack-objects ARGS...`` (``uploadpack.packObjectsHook``)
with the client's want/have request on stdin and expects the pack on stdout. The hook
reads stdin to its end, keys the request by what determines the pack (the
repository's real path, GIT_PROTOCOL, the arguments without ``--progress``, stdin),
and shares one pack-objects run among every concurrent identical request, as Gitaly's
pack-objects cache does; the run goes through :mod:`streamcache.cli.detached`, so no
client going away takes it down for the others, and every client sees its progress.
A request it does not recognise runs as it is, and a cache it cannot use never fails
a fetch: pack-objects then runs uncached."""

from __future__ import annotations

import argparse
import os
import struct
import sys

from .detached import Options, buffer_stdin, deliver
from .options import default_dir

PROG = "streamcache git-pack-objects-hook"

# Part of every key: a new format of the entries or of the key gives new keys.
FORMAT = b"streamcache git-pack-objects-hook 1"
DEFAULT_MAX_AGE = 300.0  # Gitaly's defaults
DEFAULT_MIN_OCCURRENCES = 1

DESCRIPTION = """\
A pack-objects cache for git servers: configure it as git's pack-objects hook,

  git config --system uploadpack.packObjectsHook \\
      'streamcache git-pack-objects-hook --dir /var/cache/git-pack'

and concurrent identical fetches of a repository share one git pack-objects run,
every client streaming the pack (and its progress) as it is produced; identical
fetches within --max-age read the stored pack.

- git reads uploadpack.packObjectsHook only from protected config: the system or
  the global config (GIT_CONFIG_GLOBAL, an absolute path) or 'git -c', never a
  repository's own.
- The key: the repository's real path, GIT_PROTOCOL, pack-objects' arguments
  (without --progress) and the request git gives on stdin.
- Only a pack-objects run that exits 0 is stored; every client exits with its status.
- Arguments other than 'git [--shallow-file ""] pack-objects ... --stdout ...' run
  as they are, uncached; so does every request when the cache cannot be used.
- 'streamcache stats --dir D' shows the entries and the counters (hits, misses,
  bytes served and generated).
"""


def cacheable(argv: list[str]) -> bool:
    """``git [--shallow-file ""] pack-objects FLAGS...`` with ``--stdout``, as git
    2.39's upload-pack gives them (only options, no other global option)."""
    rest = argv[1:]
    if not argv or argv[0] != "git":
        return False
    if rest[:2] == ["--shallow-file", ""]:
        rest = rest[2:]
    if not rest or rest[0] != "pack-objects":
        return False
    flags = rest[1:]
    return "--stdout" in flags and all(f.startswith("--") for f in flags)


def key_of(repo: str, protocol: str, argv: list[str], stdin_digest: bytes) -> str:
    """sha256 over length-prefixed parts: the format, the repository's real path,
    GIT_PROTOCOL, each argument but --progress, and the digest of stdin."""
    import hashlib

    parts = [FORMAT, repo.encode(), protocol.encode()]
    parts += [a.encode() for a in argv if a != "--progress"]
    parts.append(stdin_digest)
    h = hashlib.sha256()
    for part in parts:
        h.update(struct.pack(">Q", len(part)))
        h.update(part)
    return f"git-pack-objects {h.hexdigest()}"


def main(args: argparse.Namespace) -> int:
    argv: list[str] = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        args.parser.error("needs the command git gives: git pack-objects ARGS...")
    if not cacheable(argv):
        sys.stdout.flush()
        try:
            os.execvp(argv[0], argv)  # as it is: stdin, stdout and stderr untouched
        except OSError as exc:
            print(f"{PROG}: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
            return 127 if isinstance(exc, FileNotFoundError) else 126
    cache_dir = os.path.abspath(args.dir if args.dir is not None else default_dir())
    stdin_fd, digest = buffer_stdin(cache_dir)
    try:
        repo = os.path.realpath(os.environ.get("GIT_DIR") or ".")
        key = key_of(repo, os.environ.get("GIT_PROTOCOL", ""), argv, digest)
        opts = Options(
            PROG,
            cache_dir,
            args.max_age,
            min_occurrences=args.min_occurrences,
            max_bytes=args.max_bytes,
        )
        return deliver(opts, key, argv, stdin_fd)
    finally:
        os.close(stdin_fd)
