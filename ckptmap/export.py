"""Export a Mapping as a Python module in MaxText's own form (maxtext.checkpoint_conversion.utils.param_mapping).

The module defines, for MODEL:

- `MODEL_MAXTEXT_TO_HF_PARAM_MAPPING(config, maxtext_config, scan_layers=False)`: MaxText name -> HF name(s).
  Values take MaxText's forms: a str; a tuple of str (several HF tensors make one MaxText tensor); a list (one HF
  entry per slice along a stacked axis); nested lists (several stacked axes, outermost first).
- `MODEL_MAXTEXT_TO_HF_PARAM_HOOK_FN(config, maxtext_config, scan_layers=False, saving_to_hf=False)`: MaxText
  name -> hook `(tensor, target_shape) -> tensor`, called per slice. HF -> MaxText hooks come from each rule's chain
  (`op.to_code`), MaxText -> HF hooks (`saving_to_hf=True`) from its inverse. A rule with several MaxText targets
  gets one hook per target for loading and, for saving, one hook under the tuple of its MaxText names (to_huggingface
  promotes such a key into a composite entry that receives every target at once).

Loops come from the rules' grids and the numbers in the names (ckptmap.export_templates); loop lengths are written
with the HF config's keys (`config["num_hidden_layers"]`), never as numbers, whenever the config has them.

ckptmap mappings run source -> target; a MaxText module reads MaxText -> HF. The exporter takes either direction
and works on HF -> MaxText rules (reversing when the targets are the HF side).

Stacking: MaxText decides where it stacks a list from the name and the config (to_maxtext: a single list stacks on
`param_scan_axis` in a scanned model except for `MoeBlock` names, which stack on 0; nested lists stack on the
leading axes, or at `param_scan_axis` for `-local_layers` names). A rule whose stacked axes differ from that is
written as one tuple of all its HF names with a hook that stacks them itself (`_stack_leaves`), which MaxText
loads as an ordinary composite entry.
"""

from __future__ import annotations

import keyword
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Sequence

from ckptmap.errors import MappingError
from ckptmap.export_templates import (EXPERT, LAYER, Field, Template, claim_unit_dims, config_ints,
                                      count_expression, fields_of, fit_template, offset_expression,
                                      render_template, number_sequences, sequence_expression, skeleton,
                                      varying_kinds, word_kind)
from ckptmap.mapping import Mapping, Rule, Slot, write_text_atomic


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
    from ckptmap.trees.model import parse_name

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

_ELEMENTWISE = ("scale", "offset", "cast", "identity")


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
    if n < 2 or not ops or getattr(ops[0], "op_name", "") != "stack" or ops[0].n != n or ops[0].axis < 0:
        return rule
    d = len(rule.grid)
    if any(s.axes or (s.is_per_cell and s.depth != d) or (not s.is_per_cell and d) for s in rule.sources):
        return rule
    from ckptmap.transforms import Chain, Transpose

    b, rest = ops[0].axis, []
    for op in ops[1:]:
        kind = getattr(op, "op_name", "")
        if kind == "transpose":
            if b >= len(op.perm):
                return rule
            rest.append(Transpose(tuple(x - (x > b) for x in op.perm if x != b)))
            b = list(op.perm).index(b)
        elif kind in _ELEMENTWISE:
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


# ------------------------------------------------------------------------------------------------ hook sources

def _flat_ops(op) -> list:
    from ckptmap.transforms import Chain

    if isinstance(op, Chain):
        return [o for sub in op.ops for o in _flat_ops(sub)]
    return [op]


def _reshape_from_target(steps: list, i: int, shape_arg: str) -> str | None:
    """For a reshape followed only by transposes and value ops, its out shape written in terms of the hook's
    `target_shape`, so that the hook serves every model size, not only the one it was solved on."""
    perm: list[int] | None = None
    for step in steps[i + 1:]:
        kind = type(step).__name__
        if kind == "Transpose":
            p = list(step.perm)
            perm = p if perm is None else [perm[k] for k in p]
        elif not getattr(step, "is_value_op", False):
            return None
    n = len(steps[i].out_shape)
    if perm is None:
        return f"tuple({shape_arg})"
    inv = [0] * n
    for j, k in enumerate(perm):
        inv[k] = j
    return "(" + ", ".join(f"{shape_arg}[{inv[a]}]" for a in range(n)) + ("," if n == 1 else "") + ")"


def op_body(op, n_in: int, shape_arg: str | None = None) -> tuple[list[str], list[str]]:
    """(statements, output expressions) computing `op` on args x (one input) or x0, x1, ... step by step.
    With `shape_arg` (one input, one output), a trailing reshape reads its shape from that argument."""
    names = ["x"] if n_in == 1 else [f"x{i}" for i in range(n_in)]
    lines: list[str] = []
    steps = _flat_ops(op)
    for i, step in enumerate(steps):
        shaped = (_reshape_from_target(steps, i, shape_arg)
                  if shape_arg and n_in == 1 and type(step).__name__ == "Reshape" and len(names) == 1 else None)
        if shaped is not None:
            lines.append(f"x = {names[0]}.reshape({shaped})")
            names = ["x"]
            continue
        outs = step.to_code(list(names))
        if outs == names:
            continue
        new = ["x"] if len(outs) == 1 else [f"x{i}" for i in range(len(outs))]
        lines.append(f"{', '.join(new)} = {', '.join(outs)}")
        names = new
    return lines, names


def is_identity(op, n_in: int) -> bool:
    lines, outs = op_body(op, n_in)
    return not lines and len(outs) == n_in


@dataclass
class HookSet:
    """Generated hook functions, deduplicated by their body. Functions get provisional ids while rules are
    planned; `final_names` then names each after the one MaxText parameter that uses it, or after its ops when
    several parameters share it (`transpose`), with `_to_maxtext` / `_to_hf` unless it serves both directions."""

    functions: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)  # id -> (params, doc, body)
    by_body: dict[str, str] = field(default_factory=dict)
    users: dict[str, set[str]] = field(default_factory=dict)  # id -> parameter bases
    directions: dict[str, set[str]] = field(default_factory=dict)  # id -> {"to_maxtext", "to_hf", "cell", ...}
    ops: dict[str, str] = field(default_factory=dict)  # id -> op-kind name
    helpers: set[str] = field(default_factory=set)

    def add(self, base: str, direction: str, ops: str, params: str, doc: str, body: list[str]) -> str:
        key = params + "\n" + "\n".join(body)
        fid = self.by_body.get(key)
        if fid is None:
            fid = f"__hook{len(self.functions)}__"
            self.functions[fid] = (params, doc, body)
            self.by_body[key] = fid
            self.ops[fid] = ops
        self.users.setdefault(fid, set()).add(base)
        self.directions.setdefault(fid, set()).add(direction)
        return fid

    def final_names(self) -> dict[str, str]:
        names: dict[str, str] = {}
        taken: set[str] = set()
        for fid in self.functions:
            users, dirs = self.users[fid], self.directions[fid]
            stem = next(iter(users)) if len(users) == 1 else self.ops[fid]
            suffix = "" if len(dirs) > 1 else "_" + next(iter(dirs))
            name, k = stem + suffix, 2
            while name in taken or keyword.iskeyword(name):
                name, k = f"{stem}{suffix}_{k}", k + 1
            taken.add(name)
            names[fid] = name
        return names

    def sources(self, names: dict[str, str]) -> list[str]:
        out = []
        for fid, (params, doc, body) in self.functions.items():
            if {"to_maxtext", "to_hf"} <= self.directions[fid]:
                doc = "HF -> MaxText and MaxText -> HF (its own inverse): " + doc.split(": ", 1)[-1]
            text = [f"def {names[fid]}({params}):", f'    """{doc}"""'] + [f"    {line}" for line in body]
            out.append(rename_ids("\n".join(text), names))
        return out


_HOOK_ID = re.compile(r"__hook\d+__")


def rename_ids(text: str, names: dict[str, str]) -> str:
    return _HOOK_ID.sub(lambda m: names[m.group(0)], text)


def ops_name(op) -> str:
    """`transpose_reshape` for Chain(transpose, reshape): what a shared hook is called."""
    kinds = []
    for o in _flat_ops(op):
        k = getattr(o, "op_name", "") or type(o).__name__.lower()
        if k and k != "identity" and (not kinds or kinds[-1] != k):
            kinds.append(k)
    return _ident("_".join(kinds) or "identity")


def _ident(text: str) -> str:
    out = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_").lower()
    if not out or out[0].isdigit() or keyword.iskeyword(out):
        out = "p_" + out
    return out


def hook_base_name(mt_key: str) -> str:
    """`params-decoder-layers_3-self_attention-query-kernel` -> `self_attention_query_kernel`."""
    parts = [p for p in mt_key.split("-") if p not in ("params", "decoder")]
    parts = [p for p in parts if not re.fullmatch(r"(\w*layers?|scanned_blocks|layer)(_\d+)?", p)] or parts
    return _ident("_".join(parts[-4:]))


def _unpack(n: int, arg: str) -> list[str]:
    if n == 1:
        return []
    return [f"{', '.join(f'x{i}' for i in range(n))} = {arg}"]


def _describe(op) -> str:
    return op.describe().replace('"""', "'''").replace("\\", "\\\\")


def _cell_function(hooks: HookSet, base: str, direction: str, op, n_in: int, doc: str) -> str:
    """`def f(x0, x1): ...; return (outs,)`: the chain for one cell, used by the looping hooks."""
    lines, outs = op_body(op, n_in)
    args = "x" if n_in == 1 else ", ".join(f"x{i}" for i in range(n_in))
    return hooks.add(base, direction, ops_name(op), args, doc, lines + [f"return ({', '.join(outs)},)"])


def leaf_hooks(plan: RulePlan, hooks: HookSet, base: str) -> tuple[list[str | None], str | None]:
    """(loading hook per MaxText target or None for identity, saving hook or None): each takes one leaf (the HF
    tensors of one MaxText slice / one MaxText slice or the list of them) and `target_shape`."""
    rule = plan.rule
    n_src, n_tgt = len(rule.sources), len(rule.targets)
    chain, inverse = rule.chain, rule.chain.inverse()
    fwd_ops, inv_ops = ops_name(chain), ops_name(inverse)
    load: list[str | None] = []
    if not plan.inner:
        lines, outs = op_body(chain, n_src, "target_shape" if n_src == n_tgt == 1 else None)
        for j in range(n_tgt):
            if is_identity(chain, n_src) and n_src == n_tgt == 1:
                load.append(None)
                continue
            which = f" (output {j})" if n_tgt > 1 else ""
            arg = "x" if n_src == 1 else "xs"
            load.append(hooks.add(base + (f"_{j}" if n_tgt > 1 else ""), "to_maxtext",
                                  fwd_ops + (f"_{j}" if n_tgt > 1 else ""), f"{arg}, target_shape",
                                  f"HF -> MaxText{which}: {_describe(chain)}",
                                  _unpack(n_src, "xs") + lines + [f"return {outs[j]}"]))
        if is_identity(inverse, n_tgt) and n_src == n_tgt == 1:
            save = None
        else:
            lines, outs = op_body(inverse, n_tgt, "target_shape" if n_src == n_tgt == 1 else None)
            arg = "x" if n_tgt == 1 else "xs"
            ret = outs[0] if n_src == 1 else f"({', '.join(outs)})"
            save = hooks.add(base, "to_hf", inv_ops, f"{arg}, target_shape", f"MaxText -> HF: {_describe(inverse)}",
                             _unpack(n_tgt, "xs") + lines + [f"return {ret}"])
        return load, save
    if is_identity(chain, n_src) and n_src == n_tgt == 1:
        return [None], None
    hooks.helpers.add("_map_cells")
    fwd = _cell_function(hooks, base, "cell_to_maxtext", chain, n_src, f"One cell, HF -> MaxText: {_describe(chain)}")
    inv = _cell_function(hooks, base, "cell_to_hf", inverse, n_tgt, f"One cell, MaxText -> HF: {_describe(inverse)}")
    hooks.ops[fwd], hooks.ops[inv] = fwd_ops, inv_ops
    src_axes = tuple(plan.src_inner_axes)
    mt_axes = tuple(plan.mt_inner_axes)
    for j in range(n_tgt):
        which = f" (output {j})" if n_tgt > 1 else ""
        arrays = "(x,)" if n_src == 1 else "tuple(xs)"
        arg = "x" if n_src == 1 else "xs"
        load.append(hooks.add(base + (f"_{j}" if n_tgt > 1 else ""), "per_cell_to_maxtext", fwd_ops,
                              f"{arg}, target_shape",
                              f"HF -> MaxText{which}, cell by cell along the axes both sides stack",
                              [f"return _map_cells({fwd}, {arrays}, {src_axes!r}, {mt_axes!r})[{j}]"]))
    arrays = "(x,)" if n_tgt == 1 else "tuple(xs)"
    arg = "x" if n_tgt == 1 else "xs"
    pick = "[0]" if n_src == 1 else ""
    save = hooks.add(base, "per_cell_to_hf", inv_ops, f"{arg}, target_shape",
                     "MaxText -> HF, cell by cell along the axes both sides stack",
                     [f"return _map_cells({inv}, {arrays}, {mt_axes!r}, {src_axes!r}){pick}"])
    return load, save


def whole_hooks(plan: RulePlan, hooks: HookSet, base: str, load: list[str | None],
                save: str | None) -> tuple[list[str], str]:
    """Hooks that take every HF tensor of a MaxText tensor at once and stack the slices on the rule's own axes."""
    hooks.helpers.update({"_stack_leaves", "_unstack_leaves"})
    n_src, n_tgt = len(plan.rule.sources), len(plan.rule.targets)
    axes = plan.mt_stack_axes
    fwd_ops, inv_ops = ops_name(plan.rule.chain), ops_name(plan.rule.chain.inverse())
    out = []
    for j, leaf in enumerate(load):
        out.append(hooks.add(base + (f"_{j}" if n_tgt > 1 else ""), "stacked_to_maxtext", fwd_ops,
                             "xs, target_shape",
                             f"HF -> MaxText: every slice's HF tensors at once, stacked on axes {axes}",
                             [f"return _stack_leaves({leaf}, xs, {n_src}, {axes!r}, target_shape)"]))
    arg = "x" if n_tgt == 1 else "xs"
    saved = hooks.add(base, "stacked_to_hf", inv_ops, f"{arg}, target_shape",
                      f"MaxText -> HF: sliced on axes {axes}, every slice's HF tensors in one tuple",
                      [f"return _unstack_leaves({save}, {arg}, {n_src}, {axes!r})"])
    return out, saved


HELPERS = {
    "_map_cells": '''
def _map_cells(cell_fn, arrays, in_axes, out_axes):
    """Apply `cell_fn` to every cell of the axes both checkpoints stack: arrays[i] holds them at in_axes[i] (None:
    the same array for every cell), output j gets them at out_axes[j]."""
    sizes = next(tuple(a.shape[ax] for ax in axes) for a, axes in zip(arrays, in_axes) if axes is not None)
    outs = None
    for cell in itertools.product(*(range(n) for n in sizes)):
        args = tuple(a if axes is None else a[_at(a.ndim, axes, cell)] for a, axes in zip(arrays, in_axes))
        results = cell_fn(*args)
        if outs is None:
            outs = [None if axes is None else np.empty(_with_axes(r.shape, axes, sizes), dtype=r.dtype)
                    for r, axes in zip(results, out_axes)]
            for k, axes in enumerate(out_axes):
                if axes is None:
                    outs[k] = results[k]
        for out, r, axes in zip(outs, results, out_axes):
            if axes is not None:
                out[_at(out.ndim, axes, cell)] = r
    return tuple(outs)
''',
    "_stack_leaves": '''
def _stack_leaves(leaf_hook, arrays, per_leaf, axes, target_shape):
    """HF tensors of every slice (C order over the stacked axes, `per_leaf` tensors each) -> the MaxText tensor
    with the slices stacked at `axes` (the rule's own axes, which MaxText's list forms cannot express)."""
    sizes = tuple(target_shape[a] for a in axes)
    slice_shape = tuple(n for k, n in enumerate(target_shape) if k not in axes)
    out = None
    for k, cell in enumerate(itertools.product(*(range(n) for n in sizes))):
        leaf = arrays[k * per_leaf:(k + 1) * per_leaf]
        leaf = leaf[0] if per_leaf == 1 else tuple(leaf)
        part = leaf if leaf_hook is None else leaf_hook(leaf, slice_shape)
        if out is None:
            out = np.empty(target_shape, dtype=part.dtype)
        out[_at(out.ndim, axes, cell)] = part
    return out
''',
    "_unstack_leaves": '''
def _unstack_leaves(leaf_hook, stacked, per_leaf, axes):
    """The inverse of _stack_leaves: slice the MaxText tensor(s) at `axes`, one flat tuple of HF tensors."""
    first = stacked[0] if isinstance(stacked, (list, tuple)) else stacked
    sizes = tuple(first.shape[a] for a in axes)
    out = []
    for cell in itertools.product(*(range(n) for n in sizes)):
        if isinstance(stacked, (list, tuple)):
            part = [x[_at(x.ndim, axes, cell)] for x in stacked]
        else:
            part = stacked[_at(stacked.ndim, axes, cell)]
        leaf = part if leaf_hook is None else leaf_hook(part, None)
        out.extend(leaf if per_leaf > 1 else [leaf])
    return tuple(out)
''',
}

_COMMON_HELPERS = '''
def _at(ndim, axes, cell):
    """Index picking `cell` at `axes` of an ndim-d array, everything else whole."""
    index = [slice(None)] * ndim
    for axis, i in zip(axes, cell):
        index[axis] = i
    return tuple(index)


def _with_axes(shape, axes, sizes):
    """`shape` with `sizes` inserted at `axes` (ascending)."""
    shape = list(shape)
    for axis, n in sorted(zip(axes, sizes)):
        shape.insert(axis, n)
    return tuple(shape)
'''


# ------------------------------------------------------------------------------------------------ blocks of code

@dataclass
class Block:
    """One or several rules written as one loop nest: an optional group var over rules, then the entry dims."""

    plans: list[RulePlan]
    mt_templates: list[Template]  # per MaxText slot, over group + entry vars
    hf_templates: list[Template]  # per HF slot, over group + entry + stack vars
    loop_vars: list[tuple[str, list[int]]]  # (var, the values it takes): group var first, then entry vars
    stack_vars: list[tuple[str, list[int]]]  # MaxText list levels, outermost first
    load_hooks: list[str | None]
    save_hook: str | None
    comment: str = ""


def _dim_var(j: int) -> str:
    return f"d{j}"


def _fit_block(plans: list[RulePlan]) -> Block | None:
    """Templates shared by `plans` (rules differing only in their numbers), or None when they are not affine.

    A grid dim normally loops over range(n); when the names along it skip some indices (the linear-attention
    layers of a hybrid model: 0, 1, 2, 4, 5, 6) it loops over that index sequence instead."""
    p0 = plans[0]
    grid = p0.rule.grid
    group = [("g", list(range(len(plans))))] if len(plans) > 1 else []
    dims = [j for j in p0.entry + p0.stack]
    values = {j: list(range(grid[j])) for j in dims}
    attempt = _fit_with(plans, group, values)
    if attempt is not None:
        return attempt
    for j in dims:
        along = [tuple(i if k == j else 0 for k in range(len(grid))) for i in range(grid[j])]
        for seq in number_sequences([p0.rule.targets[0].name_at(c) for c in along]) + \
                number_sequences([p0.rule.sources[0].name_at(c) for c in along]):
            if seq == values[j] or len(seq) != grid[j]:
                continue
            attempt = _fit_with(plans, group, {**values, j: seq})
            if attempt is not None:
                return attempt
    return None


def _fit_with(plans: list[RulePlan], group: list, values: dict[int, list[int]]) -> Block | None:
    p0 = plans[0]
    grid = p0.rule.grid
    entry = [(_dim_var(j), values[j]) for j in p0.entry]
    stack = [(_dim_var(j), values[j]) for j in p0.stack]
    index_of = {j: {v: i for i, v in enumerate(values[j])} for j in values}

    def cell_of(env: dict[str, int]) -> tuple:
        cell = [0] * len(grid)
        for j in p0.entry + p0.stack:
            cell[j] = index_of[j][env[_dim_var(j)]] if _dim_var(j) in env else 0
        return tuple(cell)

    def plan_of(env: dict[str, int]) -> RulePlan:
        return plans[env.get("g", 0)]

    mt_t, hf_t = [], []
    for k in range(len(p0.rule.targets)):
        t = fit_template(lambda env, k=k: plan_of(env).rule.targets[k].name_at(cell_of(env)), group + entry)
        if t is None:
            return None
        mt_t.append(t)
    for k in range(len(p0.rule.sources)):
        t = fit_template(lambda env, k=k: plan_of(env).rule.sources[k].name_at(cell_of(env)), group + entry + stack)
        if t is None:
            return None
        hf_t.append(t)
    # rules are only looped over when what changes between them is a layer / expert index, never a number that
    # is part of a word (w1 / w3, wi_0 / wi_1)
    if group and any(word_kind(f.word) is None and any(v == "g" for v, _ in f.coeffs)
                     for t in mt_t + hf_t for f in fields_of(t)):
        return None
    return Block(plans, mt_t, hf_t, group + entry, stack, [], None)


def _signature(plan: RulePlan, hook_names: tuple) -> tuple:
    r = plan.rule
    zero = (0,) * len(r.grid)
    return (plan.whole, r.grid, tuple(plan.entry), tuple(plan.stack), tuple(plan.inner), plan.mt_stack_axes,
            hook_names, tuple(skeleton(t.name_at(zero)) for t in r.targets),
            tuple(skeleton(s.name_at(zero)) for s in r.sources))


def _natural_key(plan: RulePlan) -> tuple:
    zero = (0,) * len(plan.rule.grid)
    return tuple(int(x) for x in re.findall(r"\d+", plan.rule.targets[0].name_at(zero)))


def build_blocks(plans: list[RulePlan], hooks: HookSet) -> list[Block]:
    """Rules grouped into loop nests: rules alike up to their numbers share one loop over a group var."""
    per_plan = []
    for plan in plans:
        zero = (0,) * len(plan.rule.grid)
        base = hook_base_name(plan.rule.targets[0].name_at(zero))
        load, save = leaf_hooks(plan, hooks, base)
        if plan.whole:
            load, save = whole_hooks(plan, hooks, base, load, save)
        per_plan.append((plan, tuple(load), save))
    groups: dict[tuple, list] = {}
    order: list[tuple] = []
    for plan, load, save in per_plan:
        sig = _signature(plan, (load, save))
        if sig not in groups:
            groups[sig] = []
            order.append(sig)
        groups[sig].append((plan, load, save))
    blocks = []
    for sig in order:
        members = sorted(groups[sig], key=lambda m: _natural_key(m[0]))
        block = _fit_block([m[0] for m in members]) if len(members) > 1 else None
        chunks = [members] if block is not None else [[m] for m in members]
        for chunk in chunks:
            b = block if block is not None else _fit_block([chunk[0][0]])
            if b is None:
                raise ExportError(f"rule {chunk[0][0].index}: its tensor names do not follow one pattern",
                                  key=chunk[0][0].rule.targets[0].name_at((0,) * len(chunk[0][0].rule.grid)))
            b.load_hooks, b.save_hook = list(chunk[0][1]), chunk[0][2]
            if chunk[0][0].whole:
                b.comment = chunk[0][0].why_whole
            blocks.append(b)
    blocks.sort(key=lambda b: min(p.index for p in b.plans))
    return blocks


# ------------------------------------------------------------------------------------------------ rendering

@dataclass
class Naming:
    """Loop variable names and loop lengths as source text, shared across one exported branch."""

    ints: dict[str, int]
    known_offsets: dict[int, str] = field(default_factory=dict)

    config: dict = field(default_factory=dict)

    def count(self, value: int, kind: str | None, *, compound: bool = True) -> str:
        expr = count_expression(value, kind, self.ints, compound=compound) if self.ints else None
        if expr is None:
            return str(value)
        if kind == LAYER:
            self.known_offsets.setdefault(value, expr)
        return expr

    def iterable(self, values: list[int], kind: str | None, *, compound: bool = True) -> str:
        """`range(<count>)` for 0..n-1, else the index sequence (from a per-layer config list, or literally)."""
        if values == list(range(len(values))):
            return f"range({self.count(len(values), kind, compound=compound)})"
        if values == list(range(values[0], values[-1] + 1)):
            return f"range({values[0]}, {values[-1] + 1})"
        return sequence_expression(values, self.config) or repr(tuple(values))


def _rename(template: Template, names: dict[str, str], naming: Naming, kinds: dict[str, str]) -> Template:
    out = []
    for p in template:
        if isinstance(p, Field):
            coeffs = tuple((names[v], c) for v, c in p.coeffs)
            layer_coeff = any(kinds.get(v) == LAYER for v, _ in p.coeffs)
            off = naming.ints and layer_coeff and offset_expression(p.offset, LAYER, naming.ints,
                                                                    naming.known_offsets) or None
            p = Field(offset=p.offset, coeffs=coeffs, word=p.word, offset_expr=off)
        out.append(p)
    return tuple(out)


def _value_source(block: Block, names: dict[str, str], iterables: dict[str, str], hf: list[Template]) -> str:
    leaves = [render_template(t) for t in hf]
    leaf = leaves[0] if len(leaves) == 1 else "(" + ", ".join(leaves) + ")"
    if block.plans[0].whole:
        loops = " ".join(f"for {names[v]} in {iterables[v]}" for v, _ in block.stack_vars)
        if len(leaves) == 1:
            return f"tuple({leaf} {loops})" if loops else f"({leaf},)"
        return f"tuple(name {loops} for name in {leaf})" if loops else leaf
    expr = leaf
    for v, _ in reversed(block.stack_vars):
        expr = f"[{expr} for {names[v]} in {iterables[v]}]"
    return expr


@dataclass
class RenderedBlock:
    head: list[str]  # loop headers (without indentation), outermost first
    mapping: list[str]  # body statements (without indentation)
    hooks: list[str]
    comment: str = ""


def _implicit_layer(block: Block) -> int | None:
    """The layer index of a rule without a grid whose every name carries one (`dense_layers_0` from
    `model.layers.0`), else None: such a rule is one layer of a run whose length the config gives."""
    firsts = []
    for t in block.mt_templates + block.hf_templates:
        hits = [f for f in fields_of(t) if not f.coeffs and word_kind(f.word) == LAYER]
        if not hits:
            return None
        firsts.append(hits[0].offset)
    return firsts[0] if firsts[0] == 0 else None


def render_block(block: Block, naming: Naming) -> RenderedBlock:
    """Loop headers and the PARAM_MAPPING / HOOK_FN statements of one block (unindented)."""
    if not block.loop_vars and not block.stack_vars:
        layer = _implicit_layer(block)
        if layer is not None:  # one tensor of an indexed layer (the only dense layer): still a loop over layers
            block.loop_vars = [("u", [layer])]
    all_vars = block.loop_vars + block.stack_vars
    kinds = varying_kinds(block.hf_templates + block.mt_templates)
    unit = [(v, vals[0]) for v, vals in all_vars if len(vals) == 1 and v not in kinds]
    if unit:
        templates = claim_unit_dims(block.hf_templates + block.mt_templates, unit, kinds)
        block.hf_templates = templates[:len(block.hf_templates)]
        block.mt_templates = templates[len(block.hf_templates):]
    names: dict[str, str] = {}
    used: set[str] = set()
    for v, _ in all_vars:
        base = "k" if v == "g" else {LAYER: "i", EXPERT: "e"}.get(kinds.get(v, ""), "j")
        name, n = base, 2
        while name in used:
            name, n = f"{base}{n}", n + 1
        names[v] = name
        used.add(name)
    # a loop over grouped rules runs over the members of a repeating block (layers_0, layers_1 of a scanned
    # pair): its length is a config key only when one names it, never a coincidental ratio of two
    iterables = {v: naming.iterable(vals, kinds.get(v), compound=(v != "g")) for v, vals in all_vars}
    mt = [_rename(t, names, naming, kinds) for t in block.mt_templates]
    hf = [_rename(t, names, naming, kinds) for t in block.hf_templates]
    head = [f"for {names[v]} in {iterables[v]}:" for v, _ in block.loop_vars]
    value = _value_source(block, names, iterables, hf)
    keys = [render_template(t) for t in mt]
    if len(keys) == 1:
        body = [f"mapping[{keys[0]}] = {value}"]
    else:
        body = [f"value = {value}"] + [f"mapping[{k}] = value" for k in keys]
    load, save = block.load_hooks, block.save_hook
    hook_lines: list[str] = []
    if any(h is not None for h in load) or save is not None:
        if len(keys) == 1:
            hook_lines.append(f"hooks[{keys[0]}] = {save}" if load[0] == save
                              else f"hooks[{keys[0]}] = hook({load[0]}, {save})")
        else:
            hook_lines += ["if saving_to_hf:", f"    hooks[({', '.join(keys)})] = {save}", "else:"]
            hook_lines += [f"    hooks[{k}] = {h}" for k, h in zip(keys, load)]
    return RenderedBlock(head, body, hook_lines, block.comment)


def _top_level(text: str):
    """Yield the index of every character outside brackets and string literals."""
    depth, quote = 0, ""
    for k, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            yield k


def _last_top_level_for(text: str) -> int:
    """Index of the last ` for ` outside any bracket, or -1."""
    return max((k for k in _top_level(text) if text.startswith(" for ", k)), default=-1)


def _wrap(line: str, limit: int = 118) -> list[str]:
    """Break an over-long assignment after its `=`, and a long comprehension before its last `for`."""
    if len(line) <= limit or " = " not in line:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    head, rest = line.split(" = ", 1)
    if rest.startswith("[") and rest.endswith("]"):
        opener, inner, closer = "[", rest[1:-1], "]"
    elif rest.startswith("tuple(") and rest.endswith(")"):
        opener, inner, closer = "tuple(", rest[6:-1], ")"
    elif rest.startswith("hook(") and rest.endswith(")"):
        opener, inner, closer = "hook(", rest[5:-1], ")"
    else:
        opener, inner, closer = "(", rest, ")"
    body = [inner]
    cut = _last_top_level_for(inner)
    if len(indent) + 4 + len(inner) > limit and cut > 0:
        body = [inner[:cut], inner[cut + 1:]]
    return [f"{head} = {opener}"] + [f"{indent}    {b}" for b in body] + [f"{indent}{closer}"]


def _wrap_tuple_key(line: str, limit: int = 118) -> list[str] | None:
    m = re.match(r"^(\s*)hooks\[\((.*)\)\] = (.*)$", line)
    if not m or len(line) <= limit:
        return None
    indent, keys, rhs = m.groups()
    parts, start = [], 0
    for k in _top_level(keys):
        if keys[k] == ",":
            parts.append(keys[start:k].strip())
            start = k + 1
    parts.append(keys[start:].strip())
    return [f"{indent}hooks[("] + [f"{indent}    {p}," for p in parts if p] + [f"{indent})] = {rhs}"]


def _emit(blocks: list[RenderedBlock], part: str, indent: str, rename=lambda line: line) -> list[str]:
    """Statements of consecutive blocks that share their loop headers go under one loop nest."""
    out: list[str] = []
    previous_head: list[str] | None = None
    for b in blocks:
        lines = getattr(b, part)
        if not lines:
            continue
        pad = indent + "    " * len(b.head)
        if b.head != previous_head or not b.head or (b.comment and part == "mapping"):
            if b.comment and part == "mapping":
                out += [f"{indent}# {c}" for c in textwrap.wrap(b.comment, 116 - len(indent))]
            out += [f"{indent}{'    ' * k}{h}" for k, h in enumerate(b.head)]
        for line in lines:
            line = rename(pad + line)
            out += _wrap_tuple_key(line) or _wrap(line)
        previous_head = b.head
    return out


def model_prefix(model_name: str) -> str:
    """`llama3.1-8b` -> `LLAMA3_1_8B`."""
    prefix = re.sub(r"[^0-9A-Za-z]+", "_", model_name).strip("_").upper()
    return prefix if prefix and not prefix[0].isdigit() else "M_" + prefix


def render_module(branches: dict[bool, list[Block]], hooks: HookSet, model_name: str, config: dict,
                  provenance: list[str], scan_axis: int) -> str:
    ints = config_ints(config)
    prefix = model_prefix(model_name)
    map_fn, hook_fn = f"{prefix}_MAXTEXT_TO_HF_PARAM_MAPPING", f"{prefix}_MAXTEXT_TO_HF_PARAM_HOOK_FN"
    names = hooks.final_names()
    map_body: dict[bool, list[str]] = {}
    hook_body: dict[bool, list[str]] = {}
    indent = "        " if len(branches) > 1 else "    "
    for scanned, blocks in branches.items():
        naming = Naming(ints, config=config)
        rendered = [render_block(b, naming) for b in blocks]
        map_body[scanned] = _emit(rendered, "mapping", indent)
        hook_body[scanned] = _emit(rendered, "hooks", indent, lambda line: rename_ids(line, names))

    def branch_code(bodies: dict[bool, list[str]]) -> list[str]:
        if len(bodies) == 1:
            only = next(iter(bodies))
            return [f"    if {'not ' if only else ''}scan_layers:",
                    f"        raise ValueError(\"exported from a scan_layers={only} tree only; export the "
                    f"scan_layers={not only} mapping too\")", *bodies[only]]
        return ["    if scan_layers:", *(bodies[True] or ["        pass"]),
                "    else:", *(bodies[False] or ["        pass"])]

    scan_check = []
    if True in branches:
        scan_check = [f"    if scan_layers and getattr(maxtext_config, \"param_scan_axis\", {scan_axis}) != "
                      f"{scan_axis}:",
                      f"        raise ValueError(\"exported for param_scan_axis={scan_axis}\")"]
    out = [f'"""MaxText <-> HF parameter names and hooks for {model_name}, in the form of MaxText\'s',
           "checkpoint_conversion/utils/param_mapping.py. Written by `ckptmap` from solved mappings; regenerate",
           "rather than edit. Exported from:"]
    out += [f"  {p}" for p in provenance]
    out += ["",
            f"{map_fn}(config, maxtext_config, scan_layers=False):",
            "    MaxText name -> HF name(s).",
            f"{hook_fn}(config, maxtext_config, scan_layers=False, saving_to_hf=False):",
            "    MaxText name -> hook(tensor, target_shape), applied per slice: HF -> MaxText, or MaxText -> HF",
            "    when saving_to_hf.",
            "`config` is the HF config as a dict.",
            '"""', ""]
    hook_sources = hooks.sources(names)
    if hooks.helpers:
        out += ["import itertools", ""]
    if any(re.search(r"bfloat16|float8", src) for src in hook_sources):
        out += ["import ml_dtypes  # noqa: F401 (lets numpy read the dtype names 'bfloat16', 'float8_*')"]
    out += ["import numpy as np", "", ""]
    if hooks.helpers:
        out += [_COMMON_HELPERS.strip("\n"), "", ""]
        for h in sorted(hooks.helpers):
            out += [HELPERS[h].strip("\n"), "", ""]
    for src in hook_sources:
        out += [src, "", ""]
    out += [f"def {map_fn}(config, maxtext_config, scan_layers=False):",
            f'    """MaxText parameter name -> HF parameter name(s) for {model_name}."""',
            *scan_check,
            "    mapping = {}",
            *branch_code(map_body),
            "    return mapping", "", "",
            f"def {hook_fn}(config, maxtext_config, scan_layers=False, saving_to_hf=False):",
            f'    """MaxText parameter name -> hook for {model_name}: HF -> MaxText, or MaxText -> HF when',
            '    saving_to_hf."""',
            "",
            "    def hook(to_maxtext, to_hf):",
            '        """The hook for this direction (None: the tensor passes unchanged)."""',
            "        return to_hf if saving_to_hf else to_maxtext",
            "",
            "    hooks = {}",
            *branch_code(hook_body),
            "    return hooks", "", "",
            f"PARAM_MAPPING = {{{json_str(model_name)}: {map_fn}}}",
            f"HOOK_FNS = {{{json_str(model_name)}: {hook_fn}}}", ""]
    return "\n".join(out)


def json_str(text: str) -> str:
    import json

    return json.dumps(text)


# ------------------------------------------------------------------------------------------------ entry point

def export_maxtext_module(mapping: Mapping | Sequence[Mapping], path: str | None, model_name: str, *,
                          hf_config: dict | None = None,
                          target_shapes: dict[str, Sequence[int]] | None = None) -> str:
    """Write (and return) a Python module in MaxText's param_mapping form for `mapping`.

    `mapping`: one Mapping, or one per scan setting (scanned and unscanned MaxText trees); either direction
    (HF -> MaxText or MaxText -> HF). `model_name`: MaxText's model name (`llama3.1-8b`), the function prefix.
    `hf_config`: the HF config dict the functions will receive, used to spell loop lengths as config keys (without
    it they are numbers). `target_shapes`: MaxText name -> shape, which decides a few stacking cases (per-layer
    scalars); without it those rules are written in the always-valid tuple form. `path=None` only returns the text.
    Raises ExportError (a CkptmapError) for a rule MaxText's form cannot express.
    """
    mappings = [mapping] if isinstance(mapping, Mapping) else list(mapping)
    if not mappings:
        raise ExportError("nothing to export: no mapping given")
    shapes = {k: tuple(v) for k, v in (target_shapes or {}).items()}
    hooks = HookSet()
    branches: dict[bool, list[Block]] = {}
    provenance = []
    scan_axis = 1
    for m in mappings:
        m = hf_to_maxtext(m)
        scanned = is_scanned(m)
        if scanned in branches:
            raise ExportError(f"two mappings for scan_layers={scanned}; give at most one scanned and one unscanned")
        scan_axis = int(m.meta.get("param_scan_axis", 1))
        # a target filled with a constant (no HF tensor) is left to MaxText's own init: no PARAM_MAPPING entry
        plans = [plan_rule(lift_stacked_sources(r), i, scanned=scanned, scan_axis=scan_axis, target_shapes=shapes)
                 for i, r in enumerate(m.rules) if r.sources]
        branches[scanned] = build_blocks(plans, hooks)
        provenance.append(f"{m.source or 'HF'} -> {m.target or 'MaxText'}, scan_layers={scanned}")
    text = render_module(dict(sorted(branches.items(), reverse=True)), hooks, model_name, hf_config or {},
                         provenance, scan_axis)
    compile(text, path or "<export>", "exec")
    if path is not None:
        write_text_atomic(path, text)
    return text


def load_exported(path: str) -> dict[str, Any]:
    """Import an exported module from its file (tests, users): its namespace."""
    import runpy

    return runpy.run_path(path)


__all__ = ["export_maxtext_module", "ExportError", "hf_to_maxtext", "is_scanned", "load_exported", "plan_rule"]