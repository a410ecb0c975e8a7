"""The hints cache: one JSON file per (prompt, model), named by the sha256 of both.

Lookup goes through a list of directories, first hit wins: by default the user's dir
(~/.cache/ckptmap/hints, or $CKPTMAP_HINTS_DIR) over the packaged ckptmap/llm_hints/cache/ that ships recorded answers.
New answers are written to the first directory only, atomically.

An entry stores the model's answer, not the priors derived from it, so a better parser improves old entries.
Besides the exact key, an entry records both trees' template sets and their fingerprints: a pair with the
same templates (the same architecture at another size, or read with other config numbers), or nearly the same
(a reader that adds or drops a buffer), can reuse it offline; items naming absent templates are dropped.
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
from ckptmap.llm_hints.templates import fingerprint

ENTRY_FORMAT = "ckptmap-hints-cache/1"
# Below this template overlap a recorded answer is for another architecture, not a differently read one.
MIN_SIMILARITY = 0.85
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
    source_templates: list[str] = field(default_factory=list)
    target_templates: list[str] = field(default_factory=list)
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
            "source_templates": self.source_templates,
            "target_templates": self.target_templates,
            "prompt": self.prompt,
        }
        return d

    @classmethod
    def from_json(cls, d: dict, path: str = "") -> "CacheEntry":
        """Raises ValueError when `d` is not a cache entry."""
        if not isinstance(d, dict) or d.get("format") != ENTRY_FORMAT:
            raise ValueError(f"not a {ENTRY_FORMAT} object")
        known = {"format", "key", "model", "recorded_by", "created", "source_fingerprint", "target_fingerprint",
                 "answer", "prompt", "source_templates", "target_templates"}
        try:
            return cls(key=d["key"], model=d["model"], prompt=d.get("prompt", ""), answer=d["answer"],
                       source_fingerprint=d.get("source_fingerprint", ""),
                       target_fingerprint=d.get("target_fingerprint", ""), recorded_by=d.get("recorded_by", ""),
                       created=d.get("created", ""), path=path,
                       source_templates=list(d.get("source_templates", [])),
                       target_templates=list(d.get("target_templates", [])),
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

    def _entries(self):
        for rank_dir, d in enumerate(self.dirs):
            if not d.is_dir():
                continue
            for path in sorted(d.glob("*.json")):
                entry = read_entry(path)
                if entry is not None:
                    yield rank_dir, path, entry

    def entries(self) -> list[CacheEntry]:
        """Every readable entry, first directory first (e.g. to list which pairs have recorded hints)."""
        return [entry for _, _, entry in self._entries()]

    def find_similar(self, src_templates: frozenset[str], tgt_templates: frozenset[str], model: str | None = None,
                     min_similarity: float = MIN_SIMILARITY) -> "Match | None":
        """The entry recorded for the most similar pair of template sets, in either direction.

        Similarity is 1 for equal fingerprints, else the smaller of the two sides' Jaccard indices (an entry
        recorded before template lists were stored can only match exactly). Ties prefer entries of `model`,
        the earlier directory, the same direction, then the newest.
        """
        src_fp, tgt_fp = fingerprint(src_templates), fingerprint(tgt_templates)
        best: tuple[tuple, Match] | None = None
        for rank_dir, path, entry in self._entries():
            for swapped, (s_t, t_t, s_fp, t_fp) in enumerate([
                    (src_templates, tgt_templates, src_fp, tgt_fp),
                    (tgt_templates, src_templates, tgt_fp, src_fp)]):
                if (entry.source_fingerprint, entry.target_fingerprint) == (s_fp, t_fp):
                    sim = 1.0
                elif entry.source_templates and entry.target_templates:
                    sim = min(_jaccard(s_t, entry.source_templates), _jaccard(t_t, entry.target_templates))
                else:
                    continue
                if sim < min_similarity:
                    continue
                rank = (-sim, model is not None and entry.model != model, rank_dir, swapped,
                        _neg(entry.created), path.name)
                if best is None or rank < best[0]:
                    best = (rank, Match(entry, bool(swapped), sim))
        return None if best is None else best[1]

    def put(self, entry: CacheEntry, filename: str | None = None) -> Path:
        """Write `entry` into the first directory as `<key>.json`, or as `filename` (found then only by
        fingerprint, never by key: for hand-made entries such as a deliberately wrong one)."""
        path = self.dirs[0] / (filename or f"{entry.key}.json")
        write_json_atomic(str(path), entry.to_json())
        entry.path = str(path)
        return path


@dataclass(frozen=True)
class Match:
    """A cache entry found by its templates; `swapped` when it was asked in the other direction."""

    entry: CacheEntry
    swapped: bool
    similarity: float


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a or b else 1.0


def _neg(created: str) -> tuple:
    """Sort key putting later ISO timestamps first."""
    return (not created, tuple(-ord(ch) for ch in created))
