"""Shape search: every chain up to a small length that maps source shape(s) onto target shape(s), cheapest first.

- 1 -> 1, same size: layout maps (factor.axis_maps) rendered as reshape/transpose chains (render.render);
- 1 -> 1, one axis differs: pad or truncate it (vocab 256 <-> 320), then a layout map;
- 1 -> n: split a fused axis (contiguous, or interleaved in rounds) or unstack it (or a run of neighbouring axes,
  for nested stacks such as layers x experts), then a 1 -> 1 chain per part;
- n -> 1: the inverse of 1 -> n (concat / stack);
- n -> n: a 1 -> 1 chain per pair, side by side.

Where shapes cannot tell chains apart (square matrices, equal head counts, interleaved vs contiguous) all of
them are returned, ranked by cost. Results are memoised on (shapes, dims); enumeration is capped.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

from ckptmap.transforms.base import Op, Shape, Shapes, as_shapes, numel
from ckptmap.transforms.combinators import Chain, Parallel, op_length
from ckptmap.transforms.factor import DimsKey, nesting_rank, axis_maps, dims_key
from ckptmap.transforms.fusion import Split, Unstack
from ckptmap.transforms.render import render
from ckptmap.transforms.structural import Pad, Reshape, Truncate

PAD_MAX_RATIO = 1.5     # pad/truncate only an axis this close in size, unless dims name one side as the vocab
VOCAB_PAD_MAX_RATIO = 4.0  # even a vocabulary is padded by a fraction of itself, never 2 rows into 256
PART_ALTERNATIVES = 8   # per-part chains kept when combining the parts of a split
MIXED_PENALTY = 1.5     # per part laid out unlike the other parts of the same fused tensor


def search_chains(src_shapes, tgt_shapes, dims: dict[str, int] | None = None, max_len: int = 4,
                  limit: int = 64) -> list[Chain]:
    """Chains mapping arrays of `src_shapes` to arrays of `tgt_shapes`, cheapest first (at most `limit`).

    `dims` are config numbers (heads, kv_heads, head_dim, hidden, mlp, experts, vocab, ...) used to split merged
    axes the usual way. `max_len` bounds the primitive ops on any path of a chain. A single shape may be passed
    bare: `search_chains((4096, 4096), (4096, 32, 128), dims)`.
    """
    return list(_search(as_shapes(src_shapes), as_shapes(tgt_shapes), dims_key(dims), max_len, limit))


def clear_cache() -> None:
    """Forget memoised results (for benchmarks measuring cold searches)."""
    for fn in (_search, one_to_one, _layout_chains):
        fn.cache_clear()


@lru_cache(maxsize=65536)
def _search(src: Shapes, tgt: Shapes, dkey: DimsKey, max_len: int, limit: int) -> tuple[Chain, ...]:
    if not src or not tgt:
        return ()
    if len(src) == 1 and len(tgt) == 1:
        found = one_to_one(src[0], tgt[0], dkey)
    elif len(src) == 1:
        found = one_to_many(src[0], tgt, dkey, limit)
    elif len(tgt) == 1:
        found = tuple(c.inverse() for c in one_to_many(tgt[0], src, dkey, limit))
    elif len(src) == len(tgt):
        pairs = _side_by_side([one_to_one(s, t, dkey) for s, t in zip(src, tgt)], list(zip(src, tgt)), limit)
        found = tuple(Chain((par,), mixed) for par, mixed in pairs)
    else:
        found = ()
    return _ranked((c for c in found if op_length(c) <= max_len), limit)


def _ranked(chains, limit: int) -> tuple[Chain, ...]:
    unique: dict[Chain, Chain] = {}
    for c in chains:
        if c not in unique or c.cost < unique[c].cost:
            unique[c] = c
    return tuple(sorted(unique.values(), key=lambda c: (round(c.cost, 9), c.describe()))[:limit])


@lru_cache(maxsize=65536)
def _layout_chains(src: Shape, tgt: Shape, dkey: DimsKey) -> tuple[Chain, ...]:
    """1 -> 1 chains for equal element counts."""
    if numel(src) != numel(tgt):
        return ()
    if src == tgt and numel(src) == 1:
        return (Chain(()),)
    return _ranked((render(src, tgt, m) for m in axis_maps(src, tgt, dkey)), 10 ** 6)


def _pad_allowed(have: int, want: int, dkey: DimsKey) -> bool:
    vocab = {v for k, v in dkey if "vocab" in k}
    if vocab:
        return bool(vocab & {have, want}) and max(have, want) <= VOCAB_PAD_MAX_RATIO * min(have, want)
    return max(have, want) <= PAD_MAX_RATIO * min(have, want)


@lru_cache(maxsize=65536)
def one_to_one(src: Shape, tgt: Shape, dkey: DimsKey = ()) -> tuple[Chain, ...]:
    """All 1 -> 1 chains src -> tgt, cheapest first: layout maps, or pad/truncate of one axis then a layout map."""
    if numel(src) == numel(tgt):
        return _layout_chains(src, tgt, dkey)
    found: list[Chain] = []
    if 0 in src or 0 in tgt:
        return ()
    for b, have in enumerate(src):
        for want in set(tgt):
            if want == have or numel(src) // have * want != numel(tgt) or not _pad_allowed(have, want, dkey):
                continue
            fix: Op = Pad(b, 0, want - have) if want > have else Truncate(b, 0, want, have)
            padded = src[:b] + (want,) + src[b + 1:]
            found.extend(Chain((fix,) + c.ops, c.prior) for c in _layout_chains(padded, tgt, dkey))
    return _ranked(found, 10 ** 6)


def _interleave_rounds(parts: tuple[int, ...], tgts: Shapes, dkey: DimsKey) -> list[int]:
    """Round counts R worth trying for an interleaved layout of `parts`: R = gcd (block 1) when the parts are
    equal (gate/up), and R = a head count that is an axis of the targets, with blocks whole heads (qkv fused
    per kv group)."""
    g = 0
    for p in parts:
        g = math.gcd(g, p)
    rounds = {g} if g > 1 and len(set(parts)) == 1 else set()
    target_axes = {d for t in tgts for d in t}
    head_dims = [v for name, v in dkey if nesting_rank(name) == 4]
    for name, v in dkey:
        if nesting_rank(name) == 2 and v in target_axes and 1 < v < g and g % v == 0:
            blocks = [p // v for p in parts]
            if not head_dims or all(any(b % hd == 0 for hd in head_dims) for b in blocks):
                rounds.add(v)
    return sorted(rounds, reverse=True)


def _natural(part: int, tgt: Shape) -> bool:
    """Whether a part of this size can be whole axes of its target: one axis or a run of neighbouring ones."""
    axes = [d for d in tgt if d != 1]
    for i in range(len(axes)):
        prod = 1
        for d in axes[i:]:
            prod *= d
            if prod == part:
                return True
            if prod > part:
                break
    return part == 1


def _nested_unstacks(src: Shape, tgts: Shapes) -> list[tuple[Op, Shapes]]:
    """(reshape + unstack, part shapes) where 2-3 neighbouring axes together count the parts (layers x experts,
    blocks x local layers): the parts are read in row-major order of those axes."""
    n, out = len(tgts), []
    if len({numel(t) for t in tgts}) != 1 or numel(tgts[0]) * n != numel(src):
        return out
    for start in range(len(src)):
        for stop in range(start + 2, min(start + 3, len(src)) + 1):
            if numel(src[start:stop]) == n and all(d > 1 for d in src[start:stop]):
                merged = src[:start] + (n,) + src[stop:]
                part = src[:start] + src[stop:]
                out.append((Chain((Reshape(src, merged), Unstack(start, n))), (part,) * n))
    return out


def _split_ops(src: Shape, tgts: Shapes, dkey: DimsKey) -> list[tuple[Op, Shapes]]:
    """(split op, part shapes) for every axis of src that can be cut into len(tgts) parts of the right sizes,
    and for every run of neighbouring axes that together hold one part each."""
    if 0 in src or any(0 in t for t in tgts):
        return []
    total, out = numel(src), _nested_unstacks(src, tgts)
    for axis, size in enumerate(src):
        rest = total // size
        if any(numel(t) % rest for t in tgts):
            continue
        parts = tuple(numel(t) // rest for t in tgts)
        if sum(parts) != size or not all(_natural(p, t) for p, t in zip(parts, tgts)):
            continue
        if all(p == 1 for p in parts):
            out.append((Unstack(axis, len(parts)), (src[:axis] + src[axis + 1:],) * len(parts)))
            continue
        shapes = tuple(src[:axis] + (p,) + src[axis + 1:] for p in parts)
        out.append((Split(axis, parts), shapes))
        for r in _interleave_rounds(parts, tgts, dkey):
            blocks = tuple(p // r for p in parts)
            block = blocks[0] if len(set(blocks)) == 1 else blocks
            out.append((Split(axis, parts, True, block), shapes))
    return out


def _kinds(op) -> tuple[str, ...]:
    return tuple(o.op_name for o in op.ops) if isinstance(op, Chain) else (op.op_name,)


def _side_by_side(per_part: list[tuple[Chain, ...]], keys: list, limit: int) -> list[Parallel]:
    """Parallel combinations of per-part chains, cheapest first. Parts with the same (source, target) shapes
    choose alike; parts whose chains differ in kind from the others' (one transposed, the rest not) pay
    MIXED_PENALTY each, since the parts of a fused tensor share their layout."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    group_list = list(groups.values())
    options = [per_part[g[0]][:PART_ALTERNATIVES] for g in group_list]
    if any(not o for o in options):
        return []
    combos = []
    for pick in itertools.product(*options):
        branches: list = [None] * len(keys)
        for g, chain in zip(group_list, pick):
            for i in g:
                branches[i] = chain
        kinds = [_kinds(b) for b in branches]
        common = max(set(kinds), key=kinds.count)
        mixed = sum(1 for k in kinds if k != common) * MIXED_PENALTY
        combos.append((sum(b.cost for b in branches) + mixed, mixed, Parallel(tuple(branches))))
    combos.sort(key=lambda c: c[0])
    return [(par, mixed) for _, mixed, par in combos[:limit]]


def one_to_many(src: Shape, tgts: Shapes, dkey: DimsKey, limit: int = 64) -> tuple[Chain, ...]:
    """1 -> n chains: a split (or unstack) of one source axis, then a 1 -> 1 chain per part."""
    found: list[Chain] = []
    for split, shapes in _split_ops(src, tgts, dkey):
        per_part = [one_to_one(s, t, dkey) for s, t in zip(shapes, tgts)]
        for par, mixed in _side_by_side(per_part, list(zip(shapes, tgts)), limit):
            if all(not b.ops for b in par.branches):
                found.append(Chain((split,), mixed))
            else:
                found.append(Chain((split, par), mixed))
    return _ranked(found, limit)
