"""Turn a layout map (factor.AxisMap) into the most conventional chain of reshapes and one transpose.

Three forms are tried and the cheapest kept: transpose the source's own axes then reshape (`x.T.reshape(...)`,
MaxText's usual kernel hook); reshape into the target's axes then transpose; and the general
reshape -> transpose of merged factor groups -> reshape.
"""

from __future__ import annotations

from ckptmap.transforms.base import Op, Shape
from ckptmap.transforms.combinators import Chain
from ckptmap.transforms.factor import AxisMap
from ckptmap.transforms.structural import Reshape, Transpose


def _ops(*ops: Op | None) -> list[Op]:
    out = []
    for op in ops:
        if op is None:
            continue
        if isinstance(op, Transpose) and op.perm == tuple(range(len(op.perm))):
            continue
        if isinstance(op, Reshape) and op.in_shape == op.out_shape:
            continue
        out.append(op)
    return out


def _reshape(a: Shape, b: Shape) -> Reshape | None:
    return None if a == b else Reshape(a, b)


def _place_ones(order: list[int], sizes: Shape, ones: list[int], tgt: Shape) -> list[int] | None:
    """Interleave the size-1 axes `ones` into `order` so the permuted shape equals tgt exactly, if possible."""
    if len(ones) != sum(1 for d in tgt if d == 1) or [sizes[i] for i in order] != [d for d in tgt if d != 1]:
        return None
    it_main, it_ones = iter(order), iter(ones)
    return [next(it_ones) if d == 1 else next(it_main) for d in tgt]


def _transpose_source_axes(src: Shape, tgt: Shape, m: AxisMap) -> list[Op] | None:
    position = {k: p for p, k in enumerate(m.order)}
    first: dict[int, int] = {}
    for k, axis in enumerate(m.factor_axis):
        if axis not in first:
            first[axis] = k
        elif position[k] != position[first[axis]] + (k - first[axis]):
            return None
    axes = sorted(first, key=lambda a: position[first[a]])
    ones = [i for i, d in enumerate(src) if d == 1]
    perm = _place_ones(axes, src, ones, tgt) or axes + ones
    moved = tuple(src[i] for i in perm)
    return _ops(Transpose(tuple(perm)), _reshape(moved, tgt))


def _reshape_into_target_axes(src: Shape, tgt: Shape, m: AxisMap) -> list[Op] | None:
    start: dict[int, int] = {}
    for p, axis in enumerate(m.target_axis):
        if axis not in start:
            start[axis] = p
        elif m.order[p] != m.order[start[axis]] + (p - start[axis]):
            return None
    axes = sorted(start, key=lambda a: m.order[start[a]])
    ones = [j for j, d in enumerate(tgt) if d == 1]
    inter = tuple(tgt[j] for j in axes) + (1,) * len(ones)
    slot = {a: i for i, a in enumerate(axes)}
    ones_at = iter(range(len(axes), len(inter)))
    perm = tuple(next(ones_at) if d == 1 else slot[j] for j, d in enumerate(tgt))
    return _ops(_reshape(src, inter), Transpose(perm))


def _general(src: Shape, tgt: Shape, m: AxisMap) -> list[Op]:
    sizes, perm = m.canonical()
    moved = tuple(sizes[p] for p in perm)
    return _ops(_reshape(src, sizes), Transpose(perm), _reshape(moved, tgt))


def render(src: Shape, tgt: Shape, m: AxisMap) -> Chain:
    """The cheapest conventional chain that moves elements as `m` says (src -> tgt)."""
    if list(m.order) == sorted(m.order):
        return Chain(tuple(_ops(_reshape(src, tgt))), m.prior)
    best: list[Op] | None = None
    for form in (_transpose_source_axes, _reshape_into_target_axes, _general):
        ops = form(src, tgt, m)
        if ops is not None and (best is None or sum(o.cost for o in ops) < sum(o.cost for o in best) - 1e-9):
            best = ops
    return Chain(tuple(best), m.prior)
