"""Hook code: numpy source for each rule's per-slice hooks (from the ops' `to_code`), both directions."""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field

from ckptmap.export.plan import RulePlan, _flat_ops
from ckptmap.transforms import Reshape, Transpose


# ------------------------------------------------------------------------------------------------ hook sources

def _reshape_from_target(steps: list, i: int, shape_arg: str) -> str | None:
    """For a reshape followed only by transposes and value ops, its out shape written in terms of the hook's
    `target_shape`, so that the hook serves every model size, not only the one it was solved on."""
    perm: list[int] | None = None
    for step in steps[i + 1:]:
        if isinstance(step, Transpose):
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
                  if shape_arg and n_in == 1 and isinstance(step, Reshape) and len(names) == 1 else None)
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
