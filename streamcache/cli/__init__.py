"""The command line: streamcache run, git-pack-objects-hook, stats, gc, invalidate and
demo (also python -m streamcache). The entry point is in dispatch, the parser in
parser, what the commands share in options, each command in its own module (run, hook,
stats, demo). The core never imports it."""

from .dispatch import main

__all__ = ["main"]
