"""Plan: which direction a mapping is read in, and how each rule lays out in MaxText's list / tuple forms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ckptmap.errors import MappingError
from ckptmap.export.templates import (fields_of, fit_template)
from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.transforms import Chain, Stack, Transpose
from ckptmap.trees.model import parse_name


class ExportError(MappingError):
    """A mapping that cannot be written in MaxText's module form."""


# ------------------------------------------------------------------------------------------------ direction

def _looks_maxtext(names: Sequence[str]) -> float:
    if not names:
        return 0.0
    return sum(1 for n in names if "-" in n and "." not in n) / len(names)


def hf_to_maxtext(mapping: Mapping) -> Mapping:
    """The mapping with HF as source and MaxText as target (reversed if it was written the other way)."""
    src, tgt = _looks_maxtext(mapping.source_names()), _looks_maxtext(mapping.target_names())
    if tgt >= 0.5 > src:
        return mapping
    if src >= 0.5 > tgt:
        return mapping.reversed()
    raise ExportError(f"cannot tell which side is MaxText ('-'-joined names): {src:.0%} of the source names and "
                      f"{tgt:.0%} of the target names look like MaxText's")


def _layer_varies(hf_slot: Slot, cell_a: tuple, cell_b: tuple) -> bool:
    return parse_name(hf_slot.name_at(cell_a)).layer_index != parse_name(hf_slot.name_at(cell_b)).layer_index


def is_scanned(mapping: Mapping) -> bool:
    """Whether the MaxText side stacks layers (scan_layers=True): `meta["scan_layers"]` when present, else a
    MaxText tensor stacks a grid dim along which the HF layer index changes, else a bare `layers` token."""
    if isinstance(mapping.meta.get("scan_layers"), bool):
        return mapping.meta["scan_layers"]
    for rule in mapping.rules:
        for t in rule.targets:
            for j in range(t.depth, len(rule.grid)):
                if rule.grid[j] < 2:
                    continue
                a, b = (0,) * len(rule.grid), tuple(1 if k == j else 0 for k in range(len(rule.grid)))
                if any(s.is_per_cell and j < s.depth and _layer_varies(s, a, b) for s in rule.sources):
                    return True
    return any(tok in ("layers", "dense_layers", "moe_layers", "scanned_blocks")
               for n in mapping.target_names() for tok in n.split("-"))


# ------------------------------------------------------------------------------------------------ normal form

def lift_stacked_sources(rule: Rule) -> Rule:
    """The same rule with its source stack as a grid dim, when that is exactly equivalent.

    A solver may map the experts of a layer as n per-cell sources whose chain starts with Stack(axis, n). MaxText's
    form for that is one more list level (`[[... for layer] for expert]`), so such a rule is rewritten with grid
    `grid + (n,)`, one source slot whose names run over the new dim, and the rest of the chain per slice; the
    target gets the new dim at the axis the stack ends up on. Only done when the rest of the chain moves that axis
    predictably (transposes, elementwise ops) and the n names differ in one index; otherwise the rule is returned
    unchanged (and exported with its n names as a tuple)."""
    ops = _flat_ops(rule.chain)
    n = len(rule.sources)
    if n < 2 or not ops or not isinstance(ops[0], Stack) or ops[0].n != n or ops[0].axis < 0:
        return rule
    d = len(rule.grid)
    if any(s.axes or (s.is_per_cell and s.depth != d) or (not s.is_per_cell and d) for s in rule.sources):
        return rule
    b, rest = ops[0].axis, []
    for op in ops[1:]:
        if isinstance(op, Transpose):
            if b >= len(op.perm):
                return rule
            rest.append(Transpose(tuple(x - (x > b) for x in op.perm if x != b)))
            b = list(op.perm).index(b)
        elif op.elementwise:
            rest.append(op)
        else:
            return rule
    zero = (0,) * d
    per_source = [s.name_at(zero) for s in rule.sources]
    t = fit_template(lambda env: per_source[env["e"]], [("e", list(range(n)))])
    if t is None or sum(1 for f in fields_of(t) if f.coeffs) != 1:
        return rule

    def keys_over(prefix: tuple) -> Any:
        if len(prefix) == d:
            return [s.name_at(prefix) for s in rule.sources]
        return [keys_over(prefix + (i,)) for i in range(rule.grid[len(prefix)])]

    def with_new_axis(slot: Slot) -> Slot:
        taken, k, axis = set(slot.axes), -1, -1
        while k < b:
            axis += 1
            if axis not in taken:
                k += 1
        if slot.is_per_cell:
            return Slot(keys=slot.keys, axes=slot.axes + (axis,))
        return Slot(key=slot.key, axes=slot.axes + (axis,))

    return Rule(sources=(Slot(keys=keys_over(())),), targets=tuple(with_new_axis(t) for t in rule.targets),
                chain=Chain(tuple(rest)), grid=rule.grid + (n,), score=rule.score, explain=dict(rule.explain))


# ------------------------------------------------------------------------------------------------ MaxText's stacking

def maxtext_single_axis(key: str, ndim: int | None, scanned: bool, scan_axis: int, *, loading: bool,
                        min_ndim: int = 0) -> int | None:
    """Where MaxText stacks / slices a one-level list for `key` (loading: to_maxtext, else to_huggingface);
    None when it depends on an ndim that is unknown (and not settled by `min_ndim`, a lower bound)."""
    if not scanned:
        return 0
    if loading and ("MoEBiasVar" in key or "Tid2EidVar" in key or ("MoeBlock" in key and "scanned_blocks" not in key)):
        return 0
    if ndim is None:
        return scan_axis if min_ndim > scan_axis else None
    return scan_axis if ndim > scan_axis else 0


def maxtext_multi_axes(key: str, depth: int, scan_axis: int) -> tuple[int, ...]:
    """Where MaxText puts the stacked axes of a `depth`-level nested list for `key`, outermost level first."""
    if "-local_layers" in key:
        nested = (scan_axis, scan_axis + 1)
        return nested if depth == 2 else (0,) + nested
    return tuple(range(depth))


# ------------------------------------------------------------------------------------------------ rule plans

@dataclass
class RulePlan:
    """How one HF -> MaxText rule is written. Grid dims split into `entry` (one MaxText entry each: MaxText names
    vary), `stack` (MaxText list levels, outermost first), `inner` (stacked on both sides: the hook loops)."""

    rule: Rule
    index: int
    whole: bool
    entry: list[int]
    stack: list[int]
    inner: list[int]
    src_inner_axes: list[tuple[int, ...] | None]  # per HF slot; None: the same tensor for every cell
    mt_inner_axes: list[tuple[int, ...]]  # per MaxText slot, axes in one MaxText slice (stack axes removed)
    mt_stack_axes: tuple[int, ...]  # the MaxText axes of `stack`, in `stack` order
    why_whole: str = ""


def _slot_depth(slot: Slot) -> int | None:
    """Leading grid dims that pick a tensor name; None for a single tensor read whole by every cell."""
    if slot.is_per_cell:
        return slot.depth
    return 0 if slot.axes else None


def plan_rule(rule: Rule, index: int, *, scanned: bool, scan_axis: int,
              target_shapes: dict[str, tuple[int, ...]] | None) -> RulePlan:
    """How `rule` (HF -> MaxText) is written: which grid dims are MaxText entries, list levels or hook loops,
    and whether MaxText's list stacking matches the rule's axes (else the tuple form). ExportError when no
    MaxText form holds it."""
    d = len(rule.grid)
    src_depths = [_slot_depth(s) for s in rule.sources]
    named = {x for x in src_depths if x is not None}
    if len(named) > 1:
        raise ExportError(f"rule {index}: its HF tensors index the grid differently ({sorted(named)} leading "
                          f"name dims)", key=rule.targets[0].name_at((0,) * d))
    h = named.pop() if named else d
    mt_depths = {_slot_depth(t) for t in rule.targets}
    if None in mt_depths and d:
        raise ExportError(f"rule {index}: a MaxText tensor is written whole by every cell of a {rule.grid} grid",
                          key=rule.targets[0].key)
    mt_depths.discard(None)
    if len(mt_depths) > 1:
        raise ExportError(f"rule {index}: its MaxText tensors index the grid differently",
                          key=rule.targets[0].name_at((0,) * d))
    m = mt_depths.pop() if mt_depths else 0
    if m > h:
        raise ExportError(f"rule {index}: MaxText names vary along grid dims that the HF side stacks in one tensor; "
                          f"MaxText's module form cannot slice an HF tensor per MaxText entry",
                          key=rule.targets[0].name_at((0,) * d))
    entry, stack, inner = list(range(m)), list(range(m, h)), list(range(h, d))
    src_inner = [None if dep is None else tuple(s.axes) for s, dep in zip(rule.sources, src_depths)]
    stack_axes_per_target = {tuple(t.axes[j - m] for j in stack) for t in rule.targets}
    full_inner = [tuple(t.axes[j - m] for j in inner) for t in rule.targets]

    if len(stack_axes_per_target) > 1:
        raise ExportError(f"rule {index}: its MaxText tensors stack the grid on different axes "
                          f"{sorted(stack_axes_per_target)}", key=rule.targets[0].name_at((0,) * d))
    stack_axes = stack_axes_per_target.pop()
    plan = RulePlan(rule, index, False, entry, stack, inner, src_inner, [], stack_axes)
    plan.mt_inner_axes = [tuple(a - sum(1 for s in stack_axes if s < a) for a in axes) for axes in full_inner]
    if not stack:
        return plan
    for t in rule.targets:
        key = t.name_at((0,) * d)
        shape = (target_shapes or {}).get(key)
        if len(stack) == 1:
            lowest = max(stack_axes + tuple(a for axes in full_inner for a in axes)) + 1
            want = [maxtext_single_axis(key, len(shape) if shape else None, scanned, scan_axis, loading=loading,
                                        min_ndim=lowest) for loading in (True, False)]
            if any(w != stack_axes[0] for w in want):
                plan.whole = True
                said = ["an axis that depends on the tensor's rank" if w is None else f"axis {w}" for w in want]
                plan.why_whole = (f"layers stacked on axis {stack_axes[0]}; MaxText's list form would stack on "
                                  f"{said[0]} when loading and {said[1]} when saving, so one tuple of all slices")
                return plan
        else:
            want_axes = maxtext_multi_axes(key, len(stack), scan_axis)
            if sorted(want_axes) != sorted(stack_axes) or len(set(stack_axes)) != len(stack_axes):
                plan.whole = True
                plan.why_whole = f"MaxText would stack its nested lists on axes {want_axes}, not {stack_axes}"
                return plan
            order = [stack[stack_axes.index(a)] for a in want_axes]
            plan.stack = order
            plan.mt_stack_axes = tuple(want_axes)
    return plan


def _flat_ops(op) -> list:
    if isinstance(op, Chain):
        return [o for sub in op.ops for o in _flat_ops(sub)]
    return [op]
