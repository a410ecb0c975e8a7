"""Verify a mapping written for a target tree whose names differ from the runnable model's by the variable
collection only.

A MaxText name starts with its flax collection: `params-decoder-...` for parameters, `MoEBiasVar-decoder-...` for
DeepSeek-V3's router bias, which MaxText 0.2.5's model keeps in a collection of its own (layers/moe.py) while its
checkpoint table (param_mapping.py) and a tree written from that table call it `params-...-gate-bias`. Scanned, the
two collections also stack their layers on different axes (a `params` stack on `param_scan_axis`, the bias at axis
0: `[experts, layers]` against `[layers, experts]`).

    plan = target_renames(mapping, mapping_target_shapes, runner.param_shapes())
    mapping_for_the_model = retarget(mapping, plan)          # rules write the model's names, at its stack axes
    ... verify ...
    mapping_in_the_tree_names = retarget(final_mapping, invert(plan))

A rename is made only where it is unambiguous: the mapping's target is not in the model, exactly one model variable
that no rule writes has the same name after the collection, and its shape is the target's with the stacked (grid)
axes moved, the per-cell shape unchanged. Values are never changed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from ckptmap.mapping import Mapping, Rule, Slot


@dataclass(frozen=True)
class Rename:
    """Target `old` (stacking its grid dims at `old_axes`) is the model's `new` (stacking them at `new_axes`)."""

    old: str
    new: str
    old_axes: tuple[int, ...] = ()
    new_axes: tuple[int, ...] = ()

    def inverse(self) -> "Rename":
        return Rename(self.new, self.old, self.new_axes, self.old_axes)

    def describe(self) -> str:
        moved = f" (stacked axes {list(self.old_axes)} -> {list(self.new_axes)})" if self.old_axes != self.new_axes else ""
        return f"{self.old} -> {self.new}{moved}"


def _after_collection(name: str) -> str:
    return name.split("-", 1)[1] if "-" in name else name


def _target_axes(mapping: Mapping) -> dict[str, tuple[int, ...]]:
    """target name -> the tensor axes its rule stacks grid dims on (() for per-cell tensors)."""
    out: dict[str, tuple[int, ...]] = {}
    for rule in mapping.rules:
        for slot in rule.targets:
            for name in slot.names():
                out.setdefault(name, tuple(slot.axes))
    return out


def moved_axes(shape: tuple[int, ...], axes: tuple[int, ...], new_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The one placement of the stacked axes `axes` of `shape` in `new_shape` that keeps the grid sizes and the
    per-cell shape (what is left, in order); None when there is none or more than one."""
    shape, new_shape = tuple(shape), tuple(new_shape)
    if len(shape) != len(new_shape):
        return None
    if shape == new_shape:
        return tuple(axes)
    grid = [shape[a] for a in axes]
    cell = [d for i, d in enumerate(shape) if i not in axes]
    found = []
    for cand in itertools.permutations(range(len(new_shape)), len(axes)):
        if [new_shape[a] for a in cand] == grid and [d for i, d in enumerate(new_shape) if i not in cand] == cell:
            found.append(tuple(cand))
    return found[0] if len(found) == 1 else None


def target_renames(mapping: Mapping, target_shapes: dict[str, tuple[int, ...]],
                   model_shapes: dict[str, tuple[int, ...]]) -> list[Rename]:
    """The renames that put `mapping`'s targets (shapes `target_shapes`, the tree it was solved for) on the model's
    variables (`model_shapes`), see the module docstring."""
    written = set(mapping.target_names())
    free: dict[str, list[str]] = {}
    for name in model_shapes:
        if name not in written:
            free.setdefault(_after_collection(name), []).append(name)
    axes = _target_axes(mapping)
    out = []
    for name in sorted(written):
        if name in model_shapes or name not in target_shapes:
            continue
        candidates = free.get(_after_collection(name), [])
        if len(candidates) != 1:
            continue
        new = candidates[0]
        placed = moved_axes(tuple(target_shapes[name]), axes.get(name, ()), tuple(model_shapes[new]))
        if placed is None:
            continue
        out.append(Rename(name, new, axes.get(name, ()), placed))
    return out


def invert(renames: list[Rename]) -> list[Rename]:
    return [r.inverse() for r in renames]


def _retarget_slot(slot: Slot, by_old: dict[str, Rename]) -> Slot:
    if slot.key is not None:
        r = by_old.get(slot.key)
        if r is None or tuple(slot.axes) != r.old_axes:
            return slot
        return replace(slot, key=r.new, axes=r.new_axes)

    def walk(keys):  # per-cell (and mixed) slots: rename only where the stacked axes stay where they are
        if isinstance(keys, list):
            return [walk(k) for k in keys]
        r = by_old.get(keys)
        return r.new if r is not None and r.old_axes == r.new_axes == tuple(slot.axes) else keys

    return replace(slot, keys=walk(slot.keys))


def retarget_rule(rule: Rule, renames: list[Rename]) -> Rule:
    by_old = {r.old: r for r in renames}
    targets = tuple(_retarget_slot(s, by_old) for s in rule.targets)
    return rule if targets == tuple(rule.targets) else replace(rule, targets=targets)


def retarget(mapping: Mapping, renames: list[Rename]) -> Mapping:
    """`mapping` with its rules writing the renamed targets (sources, chains and everything else unchanged)."""
    if not renames:
        return mapping
    return replace(mapping, rules=[retarget_rule(r, renames) for r in mapping.rules], meta=dict(mapping.meta))


class Retargeted:
    """A SolveResult-like view (`mapping`, `alternatives`) whose rules write the renamed targets."""

    def __init__(self, solved, renames: list[Rename]):
        mapping = solved.mapping if hasattr(solved, "mapping") else solved
        self.mapping = retarget(mapping, renames)
        alternatives = dict(getattr(solved, "alternatives", None) or {})
        self.alternatives = {i: [retarget_rule(r, renames) for r in rules] for i, rules in alternatives.items()}
