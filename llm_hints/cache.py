"""The hints cache: one JSON file per (prompt, model), named by the sha256 of both.

Lookup goes through a list of directories, first hit wins: by default the user's dir
(~/.cache/ckptmap/hints, or $CKPTMAP_HINTS_DIR) over the packaged llm_hints/cache/ that ships recorded answers.
New answers are written to the first directory only, atomically.

An entry stores the model's answer, not the priors derived from it, so a better parser improves old entries.
Besides the exact key, an entry records the template fingerprints of both trees: a pair with the same
templates (the same architecture at another size, or read with other config numbers) can reuse it offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ckptmap.mapping import write_json_atomic
from ckptmap.llm_hints.priors import HintsWarning

ENTRY_FORMAT = "ckptmap-hints-cache/1"
PACKAGED_DIR = Path(__file__).resolve().parent / "cache"


def user_dir() -> Path:
    env = os.environ.get("CKPTMAP_HINTS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ckptmap" / "hints"


def default_dirs() -> list[Path]:
    """Lookup order when no cache_dir is given: the user's dir over the packaged one."""
    return [user_dir(), PACKAGED_DIR]


def cache_key(prompt: str, model: str) -> str:
    """sha256 over the model name and the prompt text."""
    return hashlib.sha256(f"{model}\n{prompt}".encode()).hexdigest()


@dataclass
class CacheEntry:
    """One recorded answer. `answer` is the decoded JSON object the model returned."""

    key: str
    model: str
    prompt: str
    answer: dict
    source_fingerprint: str
    target_fingerprint: str
    recorded_by: str
    created: str = ""
    path: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {
            "format": ENTRY_FORMAT,
            "key": self.key,
            "model": self.model,
            "recorded_by": self.recorded_by,
            "created": self.created,
            "source_fingerprint": self.source_fingerprint,
            "target_fingerprint": self.target_fingerprint,
            **self.extra,
            "answer": self.answer,
            "prompt": self.prompt,
        }
        return d

    @classmethod
    def from_json(cls, d: dict, path: str = "") -> "CacheEntry":
        """Raises ValueError when `d` is not a cache entry."""
        if not isinstance(d, dict) or d.get("format") != ENTRY_FORMAT:
            raise ValueError(f"not a {ENTRY_FORMAT} object")
        known = {"format", "key", "model", "recorded_by", "created", "source_fingerprint", "target_fingerprint",
                 "answer", "prompt"}
        try:
            return cls(key=d["key"], model=d["model"], prompt=d.get("prompt", ""), answer=d["answer"],
                       source_fingerprint=d.get("source_fingerprint", ""),
                       target_fingerprint=d.get("target_fingerprint", ""), recorded_by=d.get("recorded_by", ""),
                       created=d.get("created", ""), path=path,
                       extra={k: v for k, v in d.items() if k not in known})
        except KeyError as e:
            raise ValueError(f"cache entry lacks {e.args[0]!r}") from None


def read_entry(path: str | Path) -> CacheEntry | None:
    """The entry at `path`, or None with a HintsWarning when it is unreadable (a cache never breaks a solve)."""
    try:
        with open(path) as f:
            return CacheEntry.from_json(json.load(f), path=str(path))
    except (OSError, ValueError) as e:
        warnings.warn(f"{path}: unreadable hints cache entry ({e}); ignored", HintsWarning, stacklevel=2)
        return None


class HintCache:
    """Cache entries over `dirs`, first directory first; writes go to `dirs[0]`."""

    def __init__(self, dirs: list[str | Path]):
        self.dirs = [Path(d) for d in dirs]

    def get(self, key: str) -> CacheEntry | None:
        for d in self.dirs:
            path = d / f"{key}.json"
            if path.is_file():
                entry = read_entry(path)
                if entry is not None:
                    return entry
        return None

    def find_by_fingerprint(self, source_fp: str, target_fp: str, model: str | None = None
                            ) -> tuple[CacheEntry, bool] | None:
        """An entry recorded for the same two template sets: (entry, swapped). `swapped` is True when the
        entry was asked in the other direction. Entries of `model` are preferred, then the newest."""
        best: tuple[tuple, CacheEntry, bool] | None = None
        for rank_dir, d in enumerate(self.dirs):
            if not d.is_dir():
                continue
            for path in sorted(d.glob("*.json")):
                entry = read_entry(path)
                if entry is None:
                    continue
                fps = (entry.source_fingerprint, entry.target_fingerprint)
                if fps == (source_fp, target_fp):
                    swapped = False
                elif fps == (target_fp, source_fp):
                    swapped = True
                else:
                    continue
                rank = (model is not None and entry.model != model, rank_dir, swapped,
                        _neg(entry.created), path.name)
                if best is None or rank < best[0]:
                    best = (rank, entry, swapped)
        return None if best is None else (best[1], best[2])

    def put(self, entry: CacheEntry, filename: str | None = None) -> Path:
        """Write `entry` into the first directory as `<key>.json`, or as `filename` (found then only by
        fingerprint, never by key: for hand-made entries such as a deliberately wrong one)."""
        path = self.dirs[0] / (filename or f"{entry.key}.json")
        write_json_atomic(str(path), entry.to_json())
        entry.path = str(path)
        return path


def _neg(created: str) -> tuple:
    """Sort key putting later ISO timestamps first."""
    return (not created, tuple(-ord(ch) for ch in created))
