"""Strict JSON loading for tree and config files: every problem becomes a TreeError naming the file (and key).

Duplicate object keys are an error here (plain `json.load` keeps the last one silently), because a tree file
with two entries for one name is ambiguous.
"""

from __future__ import annotations

import json
from typing import Any

from ckptmap.errors import CkptmapError, TreeError, reading


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_json_strict(path: str, error: type[CkptmapError] = TreeError) -> Any:
    """Parse `path` as JSON; missing file, unreadable file, invalid JSON and duplicated keys raise `error`
    (TreeError by default; a mapping file raises MappingError, a verify config VerifyError)."""
    with reading(path, error, "a JSON file"), open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text (byte {e.start}): is this really a JSON file?", file=path) from None
    return loads_strict(text, path, error=error)


def loads_strict(text: str, file: str, what: str = "JSON", error: type[CkptmapError] = TreeError) -> Any:
    """Parse JSON text read from `file`; invalid JSON and duplicated keys raise `error` naming it."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise error(f"duplicated name in {what}", file=file, key=e.key) from None
    except json.JSONDecodeError as e:
        raise error(f"invalid {what} at line {e.lineno} column {e.colno}: {e.msg}", file=file) from None
    except RecursionError:
        raise error(f"{what} nested too deeply", file=file) from None
