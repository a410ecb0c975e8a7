"""Candidate finishes for mapping rules: the value ops shapes cannot decide, and the structural choices the solver
left open. Generated from general priors on names and shapes, never per model; verify's search scores them by KL.

Priors (each only proposes; the forward pass decides):
- a target that looks like a query or key projection may need a RoPE layout permutation on its head_dim axis;
- a query projection may carry the attention scale (1/sqrt(head_dim), sqrt(head_dim), or through
  query_pre_attn_scalar);
- a norm scale (a 1-D per-cell tensor named like a norm) may be stored with a +1 or -1 offset;
- an embedding may be stored pre-scaled by sqrt(hidden) (also rounded to bf16) or its inverse;
- a square 2-D target may be transposed (shapes cannot tell);
- two rules of one stage with the same shapes may have their sources swapped (gate vs up);
- the solver's ranked alternatives for a rule (interleaved vs contiguous splits, other sources).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

from ckptmap.mapping import Rule
from ckptmap.transforms import (Chain, Identity, Offset, Parallel, Reshape, RopePermute, Scale, Transpose,
                                has_value_ops)
from ckptmap.transforms.base import TransformError
from ckptmap.transforms.value import ROPE_MODES
from ckptmap.trees.model import parse_name
from ckptmap.verify.weights import tensor_role

QUERY_WORDS = frozenset({"q", "query", "wq", "q_proj", "q_b_proj", "wq_b", "q_a_proj", "wq_a"})
KEY_WORDS = frozenset({"k", "key", "wk", "k_proj"})


@dataclass(frozen=True)
class ValueOption:
    """One value op for one target of a rule: `kind` is "rope", "scale" or "offset"; `key` groups equal choices
    across rules (the same RoPE mode on q and k, the same norm offset everywhere)."""

    kind: str
    op: object
    label: str
    key: str


@dataclass(frozen=True)
class RuleChoice:
    """How one rule is finished: a structural rule (as given, stripped, an alternative, transposed, swapped)
    plus, per target, the chosen value option for each kind."""

    structural: Rule
    structure: str = "as given"
    values: tuple[tuple[tuple[str, ValueOption], ...], ...] = ()

    def value_of(self, j: int, kind: str) -> ValueOption | None:
        if j >= len(self.values):
            return None
        return dict(self.values[j]).get(kind)

    def with_value(self, j: int, kind: str, option: ValueOption | None) -> "RuleChoice":
        n = len(self.structural.targets)
        vals = [dict(self.values[i]) if i < len(self.values) else {} for i in range(n)]
        if option is None:
            vals[j].pop(kind, None)
        else:
            vals[j][kind] = option
        return replace(self, values=tuple(tuple(sorted(v.items())) for v in vals))

    def value_labels(self) -> list[str]:
        return [f"{opt.label}" for vs in self.values for _, opt in vs]

    def describe(self) -> str:
        parts = [] if self.structure == "as given" else [self.structure]
        for j, vs in enumerate(self.values):
            for _, opt in vs:
                parts.append(opt.label if len(self.values) == 1 else f"{opt.label} on output {j}")
        return ", ".join(parts) or "as given"

    def rule(self) -> Rule:
        """The finished rule: the structural chain, then each target's value ops (rope before scale/offset)."""
        per_target = []
        for j in range(len(self.structural.targets)):
            ops = [opt.op for kind in ("rope", "scale", "offset")
                   if (opt := self.value_of(j, kind)) is not None]
            per_target.append(Chain(tuple(ops)))
        if not any(c.ops for c in per_target):
            return self.structural
        if len(per_target) == 1:
            chain = Chain((self.structural.chain, per_target[0]))
        else:
            chain = Chain((self.structural.chain,
                           Parallel(tuple(c if c.ops else Identity() for c in per_target))))
        explain = dict(self.structural.explain, verify=self.describe())
        return replace(self.structural, chain=chain, explain=explain)


def strip_value_ops(op):
    """`op` without its value ops (they keep shapes, so what is left is the structural part)."""
    if isinstance(op, Chain):
        return Chain(tuple(strip_value_ops(o) for o in op.ops if not (o.is_value_op and not isinstance(o, Chain))))
    if isinstance(op, Parallel):
        return Parallel(tuple(Identity() if (b.is_value_op and not isinstance(b, (Chain, Parallel)))
                              else strip_value_ops(b) for b in op.branches))
    return op


def _last_word(name: str) -> set[str]:
    """The words of a name's module part (its last two non-generic words), for role tests."""
    words = [w.lower() for w in parse_name(name).words
             if w.lower() not in ("weight", "kernel", "bias", "scale", "params", "w")]
    tail = words[-1:] if words else []
    return {*tail, *(p for w in tail for p in w.split("_") if p)}


def rope_on_axis(shape: tuple[int, ...], axis: int, head_dim: int, mode: str):
    """An op permuting the RoPE layout inside each head_dim block of `axis` of a `shape` array."""
    n = shape[axis] // head_dim
    if axis == len(shape) - 1 and n == 1:
        return RopePermute(mode)
    split = shape[:axis] + (n, head_dim) + shape[axis + 1:]
    d_axis = axis + 1
    perm = tuple(i for i in range(len(split)) if i != d_axis) + (d_axis,)
    inv = tuple(int(i) for i in np.argsort(perm))
    ops = [Reshape(tuple(shape), split)] if split != shape else []
    ops += [Transpose(perm), RopePermute(mode), Transpose(inv)]
    if split != shape:
        ops.append(Reshape(split, tuple(shape)))
    return Chain(tuple(ops))


def _rope_axes(shape: tuple[int, ...], dims: dict) -> list[int]:
    hd = dims.get("head_dim")
    if not hd or hd % 2:
        return []
    exact = [a for a, d in enumerate(shape) if d == hd]
    if exact:
        return exact[-1:]
    heads = {dims.get("heads"), dims.get("kv_heads")} - {None}
    return [a for a, d in enumerate(shape) if any(d == h * hd for h in heads)]


def _scale(expr: str, dims: dict, round_dtype: str | None = None):
    try:
        return Scale.from_expr(expr, dims, round_dtype)
    except TransformError:
        return None


def value_options(target: str, sources: list[str], cell_shape: tuple[int, ...], dims: dict) -> dict[str, list[ValueOption]]:
    """Kind -> value options (besides none) for one target of a rule, from the roles its names and shape suggest."""
    role_words = _last_word(target) | set().union(*(_last_word(s) for s in sources)) if sources else _last_word(target)
    out: dict[str, list[ValueOption]] = {}
    is_query = bool(role_words & QUERY_WORDS)
    is_key = bool(role_words & KEY_WORDS)
    role = tensor_role(target, cell_shape)
    src_roles = {tensor_role(s, cell_shape) for s in sources}
    if (is_query or is_key) and len(cell_shape) >= 2:
        opts = []
        for axis in _rope_axes(cell_shape, dims):
            for mode in ROPE_MODES:
                opts.append(ValueOption("rope", rope_on_axis(cell_shape, axis, dims["head_dim"], mode),
                                        f"rope {mode} on axis {axis}", f"rope:{mode}:{axis}"))
        if opts:
            out["rope"] = opts
    if is_query and len(cell_shape) >= 2:
        exprs = ["1/sqrt(head_dim)", "sqrt(head_dim)"]
        qpas = dims.get("query_pre_attn_scalar")
        if qpas and qpas != dims.get("head_dim"):
            exprs += ["1/sqrt(query_pre_attn_scalar)", "sqrt(query_pre_attn_scalar)"]
        opts = [ValueOption("scale", op, f"scale {e}", f"scale:{e}") for e in exprs if (op := _scale(e, dims))]
        if opts:
            out["scale"] = opts
    if role == "norm" or (len(cell_shape) == 1 and "norm" in src_roles):
        out["offset"] = [ValueOption("offset", Offset(v), f"offset {v:+g}", f"offset:{v:+g}") for v in (1.0, -1.0)]
    if (role == "embedding" or "embedding" in src_roles) and len(cell_shape) == 2:
        opts = []
        for expr in ("sqrt(hidden)", "1/sqrt(hidden)"):
            for rd in (None, "bfloat16"):
                op = _scale(expr, dims, rd)
                if op is not None:
                    label = f"scale {expr}" + (" (bf16)" if rd else "")
                    opts.append(ValueOption("scale", op, label, f"scale:{expr}:{rd}"))
        if opts:
            out["scale"] = opts
    return out


def structural_variants(rule: Rule, alternatives: list[Rule], target_shapes: list[tuple[int, ...]]) -> list[tuple[str, Rule]]:
    """(label, rule) for every structural choice of one rule, the given one first."""
    out = [("as given", rule)]
    if has_value_ops(rule.chain):
        out.append(("without its value ops", replace(rule, chain=strip_value_ops(rule.chain))))
    for k, alt in enumerate(alternatives):
        out.append((f"solver alternative {k + 1}: {alt.chain.describe()}", alt))
    for j, shape in enumerate(target_shapes):
        if len(shape) == 2 and shape[0] == shape[1]:
            branches = tuple(Transpose((1, 0)) if i == j else Identity() for i in range(len(target_shapes)))
            extra = branches[0] if len(branches) == 1 else Parallel(branches)
            out.append((f"transposed output {j}" if len(target_shapes) > 1 else "transposed",
                        replace(rule, chain=Chain((rule.chain, extra)))))
    return out


@dataclass
class RuleSpace:
    """Everything verify may choose for one rule: structural variants and per-target value options."""

    index: int
    variants: list[tuple[str, Rule]]
    options: list[dict[str, list[ValueOption]]]  # per target
    template: tuple = ()
    cell_shapes: tuple = field(default=())

    def value_choices(self) -> list[tuple[tuple[int, str], ...]]:
        """Every combination of (target, kind) -> option index (-1 = none), as tuples of ((j, kind), k)."""
        slots = [(j, kind, len(opts)) for j, kinds in enumerate(self.options) for kind, opts in kinds.items()]
        combos = []
        for pick in itertools.product(*[range(-1, n) for _, _, n in slots]):
            combos.append(tuple(((j, kind), k) for (j, kind, _), k in zip(slots, pick)))
        return combos

    def choice(self, variant: int, combo) -> RuleChoice:
        label, rule = self.variants[variant]
        c = RuleChoice(structural=rule, structure=label,
                       values=tuple(() for _ in rule.targets))
        for (j, kind), k in combo:
            if k >= 0:
                c = c.with_value(j, kind, self.options[j][kind][k])
        return c
