"""MkDocs hook for the docs site: the docstrings are written for reading in the source
and with ``help()`` (reST roles such as :class:`Config`, ``Example::`` before an indented
block); on the API reference page the roles become plain code and ``::`` a colon."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(?=<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub("", html).replace("::</p>", ":</p>")
