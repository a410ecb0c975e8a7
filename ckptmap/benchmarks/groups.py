"""Repeated tensors grouped by name template, and the cheapest way to lay one group onto another.

The offline baselines work on groups, not single tensors, so that a scanned MaxText tensor (layers stacked on
an axis) can take all the HF layers of one template at once. A group is every tensor of one template whose
indices form a full grid (`model.layers.{i}.mlp.experts.{j}.w1.weight` -> grid (layers, experts)); a template
whose members do not form a full grid of one shape falls apart into single tensors.

`place(src, tgt, dims)` aligns the leading grid dims of both groups (layer i to layer i) and stacks any
remaining source grid dims into target tensor axes of the same size, choosing the axes and the per-cell chain
(from `ckptmap.transforms.search_chains`) with the lowest chain cost. It returns a Rule, or None when the
element counts or grids cannot fit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ckptmap.mapping import Rule, Slot
from ckptmap.transforms import search_chains
from ckptmap.trees import ParamInfo, ParamTree, merge_dims
from ckptmap.trees.model import EXPERT_WORDS, LAYER_WORDS


@dataclass(frozen=True)
class Group:
    """Tensors of one template: `keys` nested over `grid` (a plain name when grid == ()), all of `shape`."""

    template: str
    keys: Any
    grid: tuple[int, ...]
    shape: tuple[int, ...]
    words: tuple[str, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.grid) * math.prod(self.shape)

    def names(self) -> list[str]:
        def flat(k: Any) -> list[str]:
            return [n for sub in k for n in flat(sub)] if isinstance(k, list) else [k]
        return flat(self.keys)


def _nest(members: dict[tuple[int, ...], str], axes_values: list[list[int]]) -> Any:
    def build(prefix: tuple[int, ...], level: int) -> Any:
        if level == len(axes_values):
            return members[prefix]
        return [build(prefix + (v,), level + 1) for v in axes_values[level]]
    return build((), 0)


def _is_grid_index(collection: str) -> bool:
    c = collection.lower()
    return c in LAYER_WORDS or c in EXPERT_WORDS or "layer" in c or "expert" in c


def _split(info: ParamInfo) -> tuple[str, tuple[int, ...], tuple[str, ...]]:
    """(group key, grid indices, name words): only layer / expert indices are grid dims; `wi_0`, `MoeBlock_0`
    stay part of the name."""
    tokens = list(info.parsed.tokens)
    grid = []
    for it in info.parsed.indices:
        if _is_grid_index(it.collection):
            grid.append(it.index)
            tokens[it.pos] = "{i}" if tokens[it.pos].isdigit() else f"{it.collection}_{{i}}"
    words = tuple(t for t in tokens if t != "{i}")
    return ".".join(tokens), tuple(grid), words


def group_tree(tree: ParamTree) -> list[Group]:
    """The tree's tensors as template groups, in the tree's order of first appearance."""
    by_key: dict[str, list[tuple[tuple[int, ...], ParamInfo, tuple[str, ...]]]] = {}
    for p in tree:
        key, grid, words = _split(p)
        by_key.setdefault(key, []).append((grid, p, words))
    out: list[Group] = []
    for key, members in by_key.items():
        indices = [m[0] for m in members]
        shapes = {m[1].shape for m in members}
        if len(members) > 1 and len(shapes) == 1 and len({len(ix) for ix in indices}) == 1:
            k = len(indices[0])
            values = [sorted({ix[d] for ix in indices}) for d in range(k)]
            if math.prod(len(v) for v in values) == len(members) == len(set(indices)):
                names = {ix: m[1].name for ix, m in zip(indices, members)}
                out.append(Group(key, _nest(names, values), tuple(len(v) for v in values),
                                 members[0][1].shape, members[0][2]))
                continue
        for _, p, words in members:
            out.append(Group(p.name, p.name, (), p.shape, words))
    return out


@lru_cache(maxsize=100_000)
def _cheapest_chain(src_shape: tuple[int, ...], cell_shape: tuple[int, ...], dims_items: tuple) -> Any:
    try:
        chains = search_chains((src_shape,), (cell_shape,), dict(dims_items), limit=1)
    except Exception:  # a shape pair the search cannot handle is simply not a candidate
        return None
    return chains[0] if chains else None


def _stack_placements(tgt_shape: tuple[int, ...], stacked: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Target axes (one per stacked grid dim, in order) whose sizes match, and the cell shape left."""
    return [axes for axes in itertools.permutations(range(len(tgt_shape)), len(stacked))
            if all(tgt_shape[a] == n for a, n in zip(axes, stacked))]


def place(src: Group, tgt: Group, dims: dict[str, int]) -> tuple[Rule, float] | None:
    """The cheapest Rule moving `src` onto `tgt` (and its chain cost), or None if they cannot fit."""
    if src.numel != tgt.numel:
        return None
    lead = len(tgt.grid)
    if src.grid[:lead] != tgt.grid:
        return None
    stacked = src.grid[lead:]
    dims_items = tuple(sorted(dims.items()))
    best: tuple[Any, tuple[int, ...]] | None = None
    for axes in _stack_placements(tgt.shape, stacked):
        cell = tuple(n for i, n in enumerate(tgt.shape) if i not in axes)
        chain = _cheapest_chain(src.shape, cell, dims_items)
        if chain is not None and (best is None or chain.cost < best[0].cost):
            best = (chain, axes)
    if best is None:
        return None
    chain, axes = best
    source = Slot.per_cell(src.keys) if src.grid else Slot.single(src.keys)
    if lead and axes:
        target = Slot.mixed(tgt.keys, axes)
    elif lead:
        target = Slot.per_cell(tgt.keys)
    elif axes:
        target = Slot.stacked(tgt.keys, axes)
    else:
        target = Slot.single(tgt.keys)
    return Rule(sources=(source,), targets=(target,), chain=chain, grid=src.grid), float(chain.cost)


def tree_dims(src: ParamTree, tgt: ParamTree) -> dict[str, int]:
    """Config numbers from both trees' readers (ckptmap.trees.merge_dims)."""
    return dict(merge_dims(src.meta.get("dims") or {}, tgt.meta.get("dims") or {}))
