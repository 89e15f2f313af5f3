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

import os
import struct
import sys
from collections.abc import Callable

from ipc.digest import sha256

from .detached import Options, buffer_stdin, deliver
from .options import default_dir, nonnegative_int, positive_duration, size

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    import argparse

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
    parts = [FORMAT, repo.encode(), protocol.encode()]
    parts += [a.encode() for a in argv if a != "--progress"]
    parts.append(stdin_digest)
    h = sha256()
    for part in parts:
        h.update(struct.pack(">Q", len(part)))
        h.update(part)
    return f"git-pack-objects {h.hexdigest()}"


class Request:
    """What a command line asks the hook: the command git gave, and the options."""

    def __init__(
        self,
        argv: list[str],
        cache_dir: str | None = None,
        max_age: float = DEFAULT_MAX_AGE,
        min_occurrences: int = DEFAULT_MIN_OCCURRENCES,
        max_bytes: int | None = None,
    ) -> None:
        self.argv = argv
        self.cache_dir = cache_dir
        self.max_age = max_age
        self.min_occurrences = min_occurrences
        self.max_bytes = max_bytes

    def fields(self) -> tuple[object, ...]:
        return (self.argv, self.cache_dir, self.max_age, self.min_occurrences, self.max_bytes)


def main(args: argparse.Namespace) -> int:
    """The hook, as the parser read its command line."""
    return serve(request_of(args))


def request_of(args: argparse.Namespace) -> Request:
    """The Request of a command line the parser read."""
    argv: list[str] = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        args.parser.error("needs the command git gives: git pack-objects ARGS...")
    return Request(argv, args.dir, args.max_age, args.min_occurrences, args.max_bytes)


# The options of a plain command line, as :func:`quick` reads them: the parser's
# conversions (the same functions), and the attribute of Request each sets.
_QUICK: dict[str, tuple[Callable[[str], object], str]] = {
    "--dir": (os.path.expanduser, "cache_dir"),
    "--max-age": (positive_duration, "max_age"),
    "--min-occurrences": (nonnegative_int, "min_occurrences"),
    "--max-bytes": (size, "max_bytes"),
}


def quick(words: list[str]) -> Request | None:
    """A plain command line (the words after the command's name) read without argparse,
    which costs more than a cache hit: the options above, each as ``--name VALUE`` or
    ``--name=VALUE`` with a value the parser accepts, then the command git gives,
    starting with a word that is not an option. Anything else (help, an abbreviated or
    unknown option, a bad value, ``--``) gives None, and the parser reads it: the same
    way for what both accept, with its messages for the rest."""
    request = Request([])
    i = 0
    while i < len(words) and words[i].startswith("-"):
        name, has_value, value = words[i].partition("=")
        if name not in _QUICK:
            return None
        if not has_value:
            i += 1
            if i == len(words) or words[i].startswith("-"):
                return None
            value = words[i]
        convert, attribute = _QUICK[name]
        try:
            setattr(request, attribute, convert(value))
        except Exception:  # the parser's ArgumentTypeError: it reports it
            return None
        i += 1
    request.argv = words[i:]
    return request if request.argv else None


def serve(request: Request) -> int:
    """Run or share the command git gave; its exit status."""
    argv = request.argv
    if not cacheable(argv):
        sys.stdout.flush()
        try:
            os.execvp(argv[0], argv)  # as it is: stdin, stdout and stderr untouched
        except OSError as exc:
            print(f"{PROG}: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
            return 127 if isinstance(exc, FileNotFoundError) else 126
    cache_dir = os.path.abspath(
        request.cache_dir if request.cache_dir is not None else default_dir()
    )
    stdin_fd, digest = buffer_stdin(cache_dir)
    try:
        repo = os.path.realpath(os.environ.get("GIT_DIR") or ".")
        key = key_of(repo, os.environ.get("GIT_PROTOCOL", ""), argv, digest)
        opts = Options(
            PROG,
            cache_dir,
            request.max_age,
            min_occurrences=request.min_occurrences,
            max_bytes=request.max_bytes,
        )
        return deliver(opts, key, argv, stdin_fd)
    finally:
        os.close(stdin_fd)
