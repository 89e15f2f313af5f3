"""The command line: streamcache run, stats, gc, invalidate and demo (also python -m
streamcache). The parser and dispatch are in parser, what the commands share in
options, each command in its own module (run, stats, demo). The core never imports
it."""

from .parser import main

__all__ = ["main"]
