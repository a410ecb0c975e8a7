"""The mapping data model: which source tensors make each target tensor, and how.

A Mapping is a list of Rules. A Rule moves a *grid* of cells: the grid is the repeated structure (layers,
experts, layers x experts); `grid == ()` is a single cell. In each cell, the rule's `chain` (an op from
ckptmap.transforms, tuple of arrays -> tuple of arrays) turns the cell's source arrays into the cell's
target arrays. A Slot says where a cell's array lives:

- per-cell: `keys` is a nested list with the grid's shape, one tensor name per cell
  (HF's `model.layers.{i}.mlp.up_proj.weight`);
- stacked: one tensor `key` whose `axes` hold the grid dimensions, grid dim j at tensor axis `axes[j]`
  (MaxText's scanned `params-decoder-layers-mlp-wi_1-kernel`, layers at axis 1);
- mixed: `keys` nested over the *leading* grid dims and `axes` for the remaining ones (MaxText's unscanned
  `params-decoder-layers_{l}-...-wi_0` [experts, E, F]: one tensor per layer l, experts stacked at axis 0).

Because a Rule only says "cells of these slots map to cells of those slots through chain", the reverse
mapping is derived by swapping the slots and inverting the chain; nothing is solved twice.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ckptmap.atomic import default_mode, write_json_atomic, write_text_atomic  # noqa: F401 - re-exported
from ckptmap.errors import MappingError
from ckptmap.mapping_record import check_document, swap_sides
from ckptmap.transforms import op_from_json
from ckptmap.trees.jsonio import load_json_strict

FORMAT_VERSION = 1


def _nested_get(keys: Any, index: tuple[int, ...]) -> str:
    for i in index:
        keys = keys[i]
    return keys


def _nested_shape(keys: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(keys, list):
        shape.append(len(keys))
        if not keys:
            break
        keys = keys[0]
    return tuple(shape)


def _flatten(keys: Any) -> list[str]:
    if isinstance(keys, list):
        return [k for sub in keys for k in _flatten(sub)]
    return [keys]


@dataclass(frozen=True)
class Slot:
    """Where one operand of a rule lives: per-cell tensors (`keys`), one stacked tensor (`key`, `axes`), or
    tensors per leading grid dims (`keys`) each stacking the trailing grid dims at `axes`."""

    key: str | None = None
    axes: tuple[int, ...] = ()
    keys: Any = None  # nested list of str over the leading grid dims

    @classmethod
    def single(cls, key: str) -> "Slot":
        return cls(key=key)

    @classmethod
    def per_cell(cls, keys: Any) -> "Slot":
        return cls(keys=keys)

    @classmethod
    def stacked(cls, key: str, axes: Sequence[int]) -> "Slot":
        return cls(key=key, axes=tuple(axes))

    @classmethod
    def mixed(cls, keys: Any, axes: Sequence[int]) -> "Slot":
        return cls(keys=keys, axes=tuple(axes))

    @property
    def depth(self) -> int:
        """How many leading grid dims pick a tensor name (the rest index into it at `axes`)."""
        return len(_nested_shape(self.keys)) if self.is_per_cell else 0

    @property
    def is_per_cell(self) -> bool:
        return self.keys is not None

    def names(self) -> list[str]:
        """Every tensor name this slot touches."""
        return _flatten(self.keys) if self.is_per_cell else [self.key]

    def name_at(self, cell: tuple[int, ...]) -> str:
        return _nested_get(self.keys, cell[:self.depth]) if self.is_per_cell else self.key

    def to_json(self) -> dict:
        if self.is_per_cell:
            d0: dict = {"keys": self.keys}
            if self.axes:
                d0["axes"] = list(self.axes)
            return d0
        d: dict = {"key": self.key}
        if self.axes:
            d["axes"] = list(self.axes)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Slot":
        if "keys" in d:
            return cls(keys=d["keys"], axes=tuple(d.get("axes", ())))
        if "key" not in d:
            raise MappingError(f"a slot needs 'key' or 'keys', got {sorted(d)}")
        return cls(key=d["key"], axes=tuple(d.get("axes", ())))


@dataclass(frozen=True)
class Rule:
    """Cells of `sources` -> cells of `targets` through `chain`, over `grid`.

    `chain` is a ckptmap.transforms op taking len(sources) arrays and giving len(targets) arrays, for one cell.
    `score` and `explain` record why the solver chose it (for `--explain` and reports).
    """

    sources: tuple[Slot, ...]
    targets: tuple[Slot, ...]
    chain: Any  # ckptmap.transforms Op
    grid: tuple[int, ...] = ()
    score: float = 0.0
    explain: dict = field(default_factory=dict, compare=False, hash=False)

    def cells(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.grid))

    def source_names(self) -> list[str]:
        return [n for s in self.sources for n in s.names()]

    def target_names(self) -> list[str]:
        return [n for s in self.targets for n in s.names()]

    def reversed(self) -> "Rule":
        """The same correspondence read the other way: slots swapped, chain inverted."""
        return Rule(sources=self.targets, targets=self.sources, chain=self.chain.inverse(), grid=self.grid,
                    score=self.score, explain=dict(self.explain))

    def to_json(self) -> dict:
        d: dict = {
            "sources": [s.to_json() for s in self.sources],
            "targets": [t.to_json() for t in self.targets],
            "chain": self.chain.to_json(),
        }
        if self.grid:
            d["grid"] = list(self.grid)
        if self.score:
            d["score"] = round(float(self.score), 6)
        if self.explain:
            d["explain"] = self.explain
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Rule":
        try:
            return cls(
                sources=tuple(Slot.from_json(s) for s in d["sources"]),
                targets=tuple(Slot.from_json(t) for t in d["targets"]),
                chain=op_from_json(d["chain"]),
                grid=tuple(d.get("grid", ())),
                score=float(d.get("score", 0.0)),
                explain=dict(d.get("explain", {})),
            )
        except KeyError as e:
            raise MappingError(f"a rule lacks the field {e.args[0]!r}") from None


@dataclass
class Mapping:
    """A full source -> target mapping, plus what could not be mapped.

    `unmapped_targets`: target names no rule produces. `unused_sources`: source names no rule reads,
    each with the reason (e.g. "tied to model.embed_tokens.weight", "rotary buffer").
    """

    rules: list[Rule]
    source: str = ""
    target: str = ""
    unmapped_targets: list[str] = field(default_factory=list)
    unused_sources: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def reversed_rules(self) -> list[tuple[int, Rule]]:
        """(index in self.rules, reversed rule) for every rule the reverse mapping keeps. A source read by
        several rules (tied weights) is written back once, by the first rule that reads it."""
        seen: set[str] = set()
        out = []
        for i, r in enumerate(self.rules):
            names = r.source_names()
            if not names:
                continue  # a target filled with a constant (transforms.Fill): nothing to write back
            if all(n in seen for n in names):
                continue
            seen.update(names)
            out.append((i, r.reversed()))
        return out

    def reversed(self) -> "Mapping":
        """target -> source, derived rule by rule (see reversed_rules)."""
        rules = [r for _, r in self.reversed_rules()]
        filled = {t: "filled with a constant by the forward mapping" for r in self.rules if not r.sources
                  for t in r.target_names()}
        return Mapping(rules=rules, source=self.target, target=self.source,
                       unmapped_targets=sorted(self.unused_sources),
                       unused_sources={**{t: "not produced by the forward mapping" for t in self.unmapped_targets},
                                       **filled},
                       meta=dict(swap_sides(self.meta), reversed=not self.meta.get("reversed", False)))

    def target_names(self) -> list[str]:
        return [n for r in self.rules for n in r.target_names()]

    def source_names(self) -> list[str]:
        return [n for r in self.rules for n in r.source_names()]

    def rule_for_target(self, name: str) -> Rule | None:
        for r in self.rules:
            if name in r.target_names():
                return r
        return None

    def to_json(self) -> dict:
        return {
            "format": "ckptmap.mapping",
            "version": FORMAT_VERSION,
            "source": self.source,
            "target": self.target,
            "meta": self.meta,
            "rules": [r.to_json() for r in self.rules],
            "unmapped_targets": list(self.unmapped_targets),
            "unused_sources": dict(self.unused_sources),
        }

    @classmethod
    def from_json(cls, d: dict, *, file: str | None = None) -> "Mapping":
        check_document(d, file)  # every field of the JSON document has its type, before any is read
        if d.get("format") != "ckptmap.mapping":
            raise MappingError("not a ckptmap mapping (missing \"format\": \"ckptmap.mapping\")", file=file)
        if d.get("version") != FORMAT_VERSION:
            raise MappingError(f"mapping format version {d.get('version')!r}, expected {FORMAT_VERSION}", file=file)
        try:
            rules = [Rule.from_json(r) for r in d.get("rules", [])]
        except MappingError as e:
            raise MappingError(e.message, file=file, key=e.key) from None
        return cls(rules=rules, source=d.get("source", ""), target=d.get("target", ""),
                   unmapped_targets=list(d.get("unmapped_targets", [])),
                   unused_sources=dict(d.get("unused_sources", {})), meta=dict(d.get("meta", {})))

    def save(self, path: str) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "Mapping":
        return cls.from_json(load_json_strict(path, MappingError), file=path)
