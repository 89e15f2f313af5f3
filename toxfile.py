"""tox's inline plugin: find every installed Python 3.10 to 3.13 under pyenv.

pyenv's shims answer ``python3.12`` only when PYENV_VERSION (or a .python-version
file) lists a 3.12, so without this tox would skip every environment but the
default interpreter's. Before tox looks for interpreters, list the newest
installed patch release of each supported minor version, unless the user set
PYENV_VERSION already. Without pyenv this does nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from tox.config.cli.parser import ToxParser
from tox.plugin import impl

SUPPORTED = ("3.11", "3.10", "3.12", "3.13")  # the first is pyenv's default `python`


def pyenv_versions() -> str | None:
    """PYENV_VERSION listing the newest installed 3.10..3.13, or None."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return None
    try:
        out = subprocess.run(
            [pyenv, "versions", "--bare"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    newest: dict[str, tuple[int, str]] = {}
    for line in out.split():
        m = re.fullmatch(r"(3\.\d+)\.(\d+)", line.strip())
        if m and m.group(1) in SUPPORTED:
            patch = int(m.group(2))
            if m.group(1) not in newest or patch > newest[m.group(1)][0]:
                newest[m.group(1)] = (patch, line.strip())
    found = [newest[minor][1] for minor in SUPPORTED if minor in newest]
    return ":".join(found) or None


@impl
def tox_add_option(parser: ToxParser) -> None:
    # The earliest hook: runs before any environment looks for its interpreter.
    if not os.environ.get("PYENV_VERSION"):
        versions = pyenv_versions()
        if versions:
            os.environ["PYENV_VERSION"] = versions
