"""Candidate finishes for mapping rules: the value ops shapes cannot decide, and the structural choices the solver
left open. Generated from general priors on names and shapes, never per model; verify's search scores them by KL.

Priors (each only proposes; the forward pass decides). The value ops are the kinds registered in
transforms.value_kinds; this module decides which roles a target has (`target_roles`):
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

from ckptmap.mapping import Rule
from ckptmap.transforms import Chain, Identity, Pad, Parallel, Transpose, Truncate, has_value_ops
from ckptmap.transforms.value_kinds import VALUE_SLOTS, ValueOption, value_options_for_roles
from ckptmap.trees.model import parse_name
from ckptmap.verify.weights import tensor_role

QUERY_WORDS = frozenset({"q", "query", "wq", "q_proj", "q_b_proj", "wq_b", "q_a_proj", "wq_a"})
KEY_WORDS = frozenset({"k", "key", "wk", "k_proj"})


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
        """The finished rule: the structural chain, then each target's value ops in VALUE_SLOTS order."""
        per_target = []
        for j in range(len(self.structural.targets)):
            ops = [opt.op for kind in VALUE_SLOTS if (opt := self.value_of(j, kind)) is not None]
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


def target_roles(target: str, sources: list[str], cell_shape: tuple[int, ...]) -> set[str]:
    """The roles ("query", "key", "norm", "embedding") a target's name, its sources' names and its shape suggest."""
    role_words = _last_word(target) | set().union(*(_last_word(s) for s in sources)) if sources else _last_word(target)
    role = tensor_role(target, cell_shape)
    src_roles = {tensor_role(s, cell_shape) for s in sources}
    roles = set()
    if role_words & QUERY_WORDS:
        roles.add("query")
    if role_words & KEY_WORDS:
        roles.add("key")
    if role == "norm" or (len(cell_shape) == 1 and "norm" in src_roles):
        roles.add("norm")
    if role == "embedding" or "embedding" in src_roles:
        roles.add("embedding")
    return roles


def value_options(target: str, sources: list[str], cell_shape: tuple[int, ...], dims: dict) -> dict[str, list[ValueOption]]:
    """Slot -> value options (besides none) for one target of a rule: those of every registered value kind
    (transforms.value_kinds) whose roles the target's names and shape suggest."""
    return value_options_for_roles(target_roles(target, sources, cell_shape), cell_shape, dims)


def structural_variants(rule: Rule, alternatives: list[Rule], target_shapes: list[tuple[int, ...]]) -> list[tuple[str, Rule]]:
    """(label, rule) for every structural choice of one rule, the given one first."""
    out = [("as given", rule)]
    if has_value_ops(rule.chain):
        out.append(("without its value ops", replace(rule, chain=strip_value_ops(rule.chain))))
    for k, alt in enumerate(alternatives):
        out.append((f"solver alternative {k + 1}: {alt.chain.describe()}", alt))
    for label, chain in offset_variants(rule.chain):
        out.append((label, replace(rule, chain=chain)))
    for j, shape in enumerate(target_shapes):
        if len(shape) == 2 and shape[0] == shape[1]:
            branches = tuple(Transpose((1, 0)) if i == j else Identity() for i in range(len(target_shapes)))
            extra = branches[0] if len(branches) == 1 else Parallel(branches)
            out.append((f"transposed output {j}" if len(target_shapes) > 1 else "transposed",
                        replace(rule, chain=Chain((rule.chain, extra)))))
    return out


def offset_variants(chain) -> list[tuple[str, object]]:
    """The same chain with each cut or pad of an axis moved to the other end: a table whose target drops its first
    rows (a position table behind a padding offset, RoBERTa's 2) rather than its last, or gains them in front.
    Shapes cannot tell the ends apart; the forward pass can."""
    steps = list(chain.ops) if isinstance(chain, Chain) else [chain]
    out = []
    for k, op in enumerate(steps):
        moved = None
        if isinstance(op, Truncate) and op.start == 0 and op.orig is not None and op.stop is not None \
                and 0 < op.stop < op.orig:
            moved = (f"offset: drop the first {op.orig - op.stop} rows of axis {op.axis}",
                     Truncate(op.axis, op.orig - op.stop, None, op.orig))
        elif isinstance(op, Pad) and op.before == 0 and op.after > 0:
            moved = (f"offset: pad {op.after} rows in front of axis {op.axis}", Pad(op.axis, op.after, 0, op.value))
        if moved is not None:
            label, new = moved
            out.append((label, Chain(tuple(steps[:k] + [new] + steps[k + 1:]))))
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
