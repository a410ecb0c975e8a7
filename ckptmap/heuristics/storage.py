"""Storage convention carried across one module's projections (square matrices read off their siblings).

A square torch weight `[heads*head_dim, hidden]` fits a heads-first kernel `[heads, hidden, head_dim]` two ways
with the same cost: a reshape that keeps the torch axes where they are, or one that moves the input axis.
Shapes cannot tell them apart; the module's non-square siblings can. `k_proj [kv_heads*head_dim, hidden]` into
`[kv_heads, hidden, head_dim]` has one reading only, and the square `q_proj` beside it is stored the same way.

A chain's *storage signature* says where it sends each source axis: for each source axis, the target axis that a
unit step along it lands on (reshapes row-major, transposes by their permutation). Siblings are operands of one
module (the same concepts once their role words are removed, heuristics.roles) whose source shapes and target
shapes differ from each other in at most one axis each (q/k/v: the head count), so projections that run the
other way (o: heads x head_dim -> hidden) are not compared with them.
"""

from __future__ import annotations

import math

from ckptmap.heuristics.weights import WEIGHTS

# Concepts that name a projection's role inside its module (attention's q/k/v/o, an MLP's gate/up/down); what
# is left names the module.
MODULE_ROLES = frozenset({"query", "key", "value", "out", "qkv", "kv", "wi_0", "wi_1", "wi", "wo", "gate",
                          "weight", "bias"})


def _row_major(index: tuple[int, ...], shape: tuple[int, ...], new_shape: tuple[int, ...]) -> tuple[int, ...]:
    flat = 0
    for i, d in zip(index, shape):
        flat = flat * d + i
    out = []
    for d in reversed(new_shape):
        out.append(flat % d)
        flat //= d
    return tuple(reversed(out))


def locate(chain, shape: tuple[int, ...], index: tuple[int, ...]) -> tuple[int, ...] | None:
    """Where element `index` of an array of `shape` ends up after `chain`; None when the chain is not a pure
    layout map (reshapes, transposes, expand/squeeze) of one array."""
    steps = chain.sub_ops if chain.sub_ops else (chain,)
    for op in steps:
        if op.is_value_op or (op.sub_ops and op is not chain):
            return None
        try:
            out_shapes = op.shape((shape,))
        except Exception:
            return None
        if len(out_shapes) != 1:
            return None
        new_shape = tuple(out_shapes[0])
        perm = op.axis_perm
        if perm is not None:
            index, shape = tuple(index[p] for p in perm), new_shape
        elif math.prod(new_shape) == math.prod(shape):
            index, shape = _row_major(index, shape, new_shape), new_shape
        else:
            return None
    return index


def signature(chain, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """For each source axis (of size > 1), the target axis a unit step along it lands on; None when
    `locate` cannot follow the chain."""
    origin = locate(chain, shape, (0,) * len(shape))
    if origin is None:
        return None
    out = []
    for axis, d in enumerate(shape):
        if d == 1:
            continue
        step = locate(chain, shape, tuple(1 if a == axis else 0 for a in range(len(shape))))
        moved = [k for k, (x, y) in enumerate(zip(origin, step)) if x != y]
        if len(moved) != 1:
            return None
        out.append(moved[0])
    return tuple(out)


def _near(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and sum(1 for x, y in zip(a, b) if x != y) <= 1


def _module(cs: tuple[str, ...]) -> frozenset[str]:
    return frozenset(c for c in cs if c not in MODULE_ROLES)


def _agreed(found: set[tuple[int, ...]]) -> tuple[int | None, ...]:
    """Per source axis, the target axis every signature in `found` sends it to, or None where they differ."""
    n = len(next(iter(found)))
    return tuple(next(iter(vals)) if len(vals) == 1 else None for vals in (set(f[a] for f in found)
                                                                          for a in range(n)))


def apply_sibling_storage(cands, src_ops, tgt_ops) -> None:
    """Carry a module's storage convention to the pairs whose shapes leave it open. For a (source, target)
    pair, a source axis is *forced* when every 1 -> 1 candidate between them sends it to one target axis (k_proj's
    input axis goes to the kernel's hidden axis whichever way its head axis is split). A pair whose candidates
    disagree on an axis that its siblings' pairs all force alike takes their answer: candidates that agree gain
    WEIGHTS.sibling_storage, the others lose it (recorded as the part "sibling_storage")."""
    by_pair: dict[tuple[int, int], list] = {}
    for c in cands:
        if len(c.sources) == 1 and len(c.targets) == 1 and len(src_ops[c.sources[0]].shape) >= 2:
            by_pair.setdefault((c.sources[0], c.targets[0]), []).append(c)
    sigs: dict[tuple[int, int], dict] = {}
    for (i, j), cs in by_pair.items():
        found = {id(c): signature(c.chain, src_ops[i].shape) for c in cs}
        if None not in found.values() and len({len(f) for f in found.values()}) == 1:
            sigs[(i, j)] = found
    agreed = {p: _agreed(set(f.values())) for p, f in sigs.items()}
    for (i, j), found in sigs.items():
        own = agreed[(i, j)]
        if None not in own:
            continue
        s, t = src_ops[i], tgt_ops[j]
        siblings = [agreed[(i2, j2)] for (i2, j2) in sigs
                    if i2 != i and j2 != j and len(agreed[(i2, j2)]) == len(own)
                    and _near(src_ops[i2].shape, s.shape) and _near(tgt_ops[j2].shape, t.shape)
                    and _module(src_ops[i2].role_concepts) == _module(s.role_concepts)
                    and _module(tgt_ops[j2].role_concepts) == _module(t.role_concepts)]
        want = {}
        for a in range(len(own)):
            vals = {sib[a] for sib in siblings if sib[a] is not None}
            if own[a] is None and len(vals) == 1:
                want[a] = vals.pop()
        if not want:
            continue
        for c in by_pair[(i, j)]:
            sig = found[id(c)]
            ok = all(sig[a] == v for a, v in want.items())
            bonus = WEIGHTS.sibling_storage if ok else -WEIGHTS.sibling_storage
            c.score += bonus
            c.parts["sibling_storage"] = bonus
