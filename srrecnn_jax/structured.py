"""JSON and TOML text parsed with one kind of error.

Python's parsers recurse once per level of nesting: ``[[[[...]]]]`` a hundred thousand
levels deep (a damaged or hostile model ``config.json``, manifest line or settings file)
ends in ``RecursionError``, which no caller expects. Here it is a ``ValueError`` like any
other malformed text, so every reader reports it as one line naming its file.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any


def parse_json(text: str) -> Any:
    """``json.loads(text)``; nesting too deep to parse is a ``ValueError``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def parse_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``; nesting too deep to parse is a ``ValueError``."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None
