"""One module, one source: a target module's kernel, bias and scale come from one source module.

Leaves of one module (`dense/kernel`, `dense/bias`; `norm/scale`, `norm/bias`) are read from the leaves of one
source module (`fc.weight`, `fc.bias`). A bias says little by its shape (every [hidden] vector fits every
[hidden] bias), a kernel says much more; so the module's *anchor* leaf (its highest-rank tensor, a norm's scale
among vectors) decides which source module the others follow.
"""

from __future__ import annotations

from ckptmap.heuristics.weights import WEIGHTS
from ckptmap.trees.model import name_tokens

LEAVES = frozenset({"weight", "kernel", "scale", "bias", "embedding", "gamma", "beta", "w", "b"})
_SCALE_LEAVES = ("weight", "kernel", "scale", "gamma", "w", "embedding")


def split_leaf(local: str) -> tuple[str, str] | None:
    """(module, leaf) of a name ending in a framework leaf (`attn/query/kernel` -> (`attn/query`, `kernel`));
    None for a raw parameter (no leaf: `experts.gate_up_proj`)."""
    tokens = name_tokens(local)
    if len(tokens) < 2 or tokens[-1].lower() not in LEAVES:
        return None
    return local[:len(local) - len(tokens[-1]) - 1], tokens[-1].lower()


def _anchor(members: list[int], tgt_ops) -> int:
    return max(members, key=lambda j: (len(tgt_ops[j].shape), split_leaf(tgt_ops[j].local)[1] in _SCALE_LEAVES,
                                       -j))


def apply_module_coherence(cands, src_ops, tgt_ops) -> None:
    """For each target module with several leaves: its anchor's best 1 -> 1 candidate names a source module;
    the module's other leaves' candidates from that source module gain WEIGHTS.module_coherence (recorded as
    the part "module_coherence"). Nothing changes where the anchor's best candidate is tied."""
    modules: dict[str, list[int]] = {}
    for j, op in enumerate(tgt_ops):
        split = split_leaf(op.local)
        if split is not None:
            modules.setdefault(split[0], []).append(j)
    by_target: dict[int, list] = {}
    for c in cands:
        if len(c.sources) == 1 and len(c.targets) == 1:
            by_target.setdefault(c.targets[0], []).append(c)
    for members in modules.values():
        if len(members) < 2:
            continue
        anchor = _anchor(members, tgt_ops)
        ranked = sorted(by_target.get(anchor, []), key=lambda c: -c.score)
        if not ranked or (len(ranked) > 1 and ranked[1].score > ranked[0].score - 1e-9
                          and ranked[1].sources != ranked[0].sources):
            continue
        source = split_leaf(src_ops[ranked[0].sources[0]].local)
        if source is None:
            continue
        for j in members:
            if j == anchor:
                continue
            for c in by_target.get(j, []):
                other = split_leaf(src_ops[c.sources[0]].local)
                if other is not None and other[0] == source[0]:
                    c.score += WEIGHTS.module_coherence
                    c.parts["module_coherence"] = WEIGHTS.module_coherence
