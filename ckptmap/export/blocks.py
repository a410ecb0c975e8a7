"""Blocks: rules with the same shape of code folded into one loop nest over the config's counts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ckptmap.export.templates import (Template, fields_of, fit_template, number_sequences, skeleton, word_kind)
from ckptmap.export.hooks import HookSet, hook_base_name, leaf_hooks, whole_hooks
from ckptmap.export.plan import ExportError, RulePlan


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
