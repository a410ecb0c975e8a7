"""Layout maps between two shapes of equal size: which refinements into common factors, and which bijections.

A layout map reads the source as a tensor of refined factors (each source axis split into ordered factors),
transposes those factors, and reads the result as the target. Every factor is a whole axis on at least one side,
so a merged axis H*D splits only into [H, D] (or [D, H]) where the other side has H and D axes, never into
meaningless pieces. Config dims rank the orders: heads before head_dim, experts before both, layers first.
Pure functions; the search memoises the callers.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from ckptmap.transforms.base import Shape

DimsKey = tuple[tuple[str, int], ...]
MAX_PRODUCT = 4096          # cap on factorisation combinations tried per side
MAX_BIJECTIONS = 24         # cap on assignments of equal-sized factors per refinement pair
ORDER_PENALTY = 1.5         # a merged axis factored against the usual nesting (head_dim before heads, ...)
REGROUP_PENALTY = 1.0       # per axis piece a map cuts or glues beyond the fewest any map of these shapes needs


@dataclass(frozen=True)
class AxisMap:
    """source (refined into `factors`, source order) -> target, as a permutation of factors.

    `factor_axis[k]`: the source axis factor k comes from. `order[p]`: the source factor at target position p.
    `target_axis[p]`: the target axis position p belongs to. Size-1 axes are left out of all three.
    """

    factors: tuple[int, ...]
    factor_axis: tuple[int, ...]
    order: tuple[int, ...]
    target_axis: tuple[int, ...]
    prior: float = 0.0

    def groups(self) -> list[tuple[int, int]]:
        """Maximal runs (first source factor, length) that stay together and in order, in target order."""
        runs: list[list[int]] = []
        for p, k in enumerate(self.order):
            if runs and k == runs[-1][0] + runs[-1][1]:
                runs[-1][1] += 1
            else:
                runs.append([k, 1])
        return [(k, n) for k, n in runs]

    def canonical(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(group sizes in source order, group permutation): equal for two maps iff they move elements alike."""
        runs = self.groups()
        by_source = sorted(range(len(runs)), key=lambda r: runs[r][0])
        sizes = []
        for r in by_source:
            k, n = runs[r]
            size = 1
            for f in self.factors[k:k + n]:
                size *= f
            sizes.append(size)
        position = {r: i for i, r in enumerate(by_source)}
        return tuple(sizes), tuple(position[r] for r in range(len(runs)))


def dims_key(dims: dict | None) -> DimsKey:
    """A hashable, sorted view of the integer dims above 1 (the only ones that can name an axis)."""
    if not dims:
        return ()
    return tuple(sorted((str(k), int(v)) for k, v in dims.items()
                        if isinstance(v, int) and not isinstance(v, bool) and v > 1))


def nesting_rank(name: str) -> int | None:
    """Usual nesting of named dims in a merged axis, outermost first."""
    if "layer" in name:
        return 0
    if "expert" in name:
        return 1
    if name.endswith("heads") or name.endswith("groups"):  # head groups (grouped output projection) nest like heads
        return 2
    if name == "q_per_kv":
        return 3
    if "head_dim" in name or name.endswith("lora_rank"):  # a low-rank width nests inside heads / groups
        return 4
    return None


@lru_cache(maxsize=256)
def size_ranks(dkey: DimsKey) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """For each size a config dim names (heads // kv_heads included), the nesting ranks of its names."""
    dims = dict(dkey)
    if "heads" in dims and "kv_heads" in dims and dims["heads"] % dims["kv_heads"] == 0:
        dims.setdefault("q_per_kv", dims["heads"] // dims["kv_heads"])
    ranks: dict[int, set[int]] = {}
    for name, v in dims.items():
        r = nesting_rank(name)
        if r is not None and v > 1:
            ranks.setdefault(v, set()).add(r)
    return tuple(sorted((v, tuple(sorted(r))) for v, r in ranks.items()))


def _order_penalty(factors: tuple[int, ...], ranks: dict[int, tuple[int, ...]]) -> float:
    pen = 0.0
    for a, b in zip(factors, factors[1:]):
        if a in ranks and b in ranks and min(ranks[a]) > max(ranks[b]):
            pen += ORDER_PENALTY
    return pen


@lru_cache(maxsize=65536)
def factorizations(n: int, other: tuple[int, ...],
                   ranks: tuple[tuple[int, tuple[int, ...]], ...]) -> tuple[tuple[tuple[int, ...], float], ...]:
    """Ordered ways to split an axis of size n into 1-3 factors, each the size of a whole axis of the other shape.

    (A piece of a split axis must be a whole axis on the other side: nobody writes a layout whose axis is a
    piece of one axis times a piece of another.) Returns (factors, convention penalty) pairs, unsplit first.
    """
    rank_of = dict(ranks)
    sizes = set(other)
    out: dict[tuple[int, ...], float] = {(n,): 0.0}
    divisors = sorted(a for a in sizes if 1 < a < n and n % a == 0)
    for a in divisors:
        if n // a in sizes:
            out.setdefault((a, n // a), _order_penalty((a, n // a), rank_of))
        for c in divisors:
            if (n // a) % c == 0 and n // (a * c) in sizes and n // (a * c) > 1:
                for perm in itertools.permutations((a, c, n // (a * c))):
                    out.setdefault(perm, _order_penalty(perm, rank_of))
    return tuple(out.items())


def _bijections(src_flat: tuple[int, ...], tgt_flat: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every assignment of source factors to target positions with equal sizes (capped)."""
    by_size: dict[int, list[int]] = {}
    for k, f in enumerate(src_flat):
        by_size.setdefault(f, []).append(k)
    slots: dict[int, list[int]] = {}
    for p, f in enumerate(tgt_flat):
        slots.setdefault(f, []).append(p)
    choices = []
    for f, positions in slots.items():
        choices.append((positions, list(itertools.islice(itertools.permutations(by_size[f]), MAX_BIJECTIONS))))
    out = []
    for pick in itertools.islice(itertools.product(*(c[1] for c in choices)), MAX_BIJECTIONS):
        order = [0] * len(tgt_flat)
        for (positions, _), ks in zip(choices, pick):
            for p, k in zip(positions, ks):
                order[p] = k
        out.append(tuple(order))
    return out


def _combos(opts: list[tuple]) -> itertools.islice:
    return itertools.islice(itertools.product(*opts), MAX_PRODUCT)


def axis_maps(src: Shape, tgt: Shape, dkey: DimsKey = ()) -> list[AxisMap]:
    """All layout maps src -> tgt (same element count), one per distinct element movement, each with the
    lowest convention penalty found."""
    src_axes = [i for i, d in enumerate(src) if d != 1]
    tgt_axes = [j for j, d in enumerate(tgt) if d != 1]
    ranks = size_ranks(dkey)
    src_sizes = tuple(sorted({src[i] for i in src_axes}))
    tgt_sizes = tuple(sorted({tgt[j] for j in tgt_axes}))
    src_opts = [factorizations(src[i], tgt_sizes, ranks) for i in src_axes]
    tgt_opts = [factorizations(tgt[j], src_sizes, ranks) for j in tgt_axes]

    tgt_by_key: dict[tuple[int, ...], list[tuple]] = {}
    for combo in _combos(tgt_opts):
        flat = tuple(f for fac, _ in combo for f in fac)
        tgt_by_key.setdefault(tuple(sorted(flat)), []).append(combo)

    found: list[tuple[AxisMap, int]] = []
    for scombo in _combos(src_opts):
        sflat = tuple(f for fac, _ in scombo for f in fac)
        matches = tgt_by_key.get(tuple(sorted(sflat)))
        if not matches:
            continue
        factor_axis = tuple(i for i, (fac, _) in zip(src_axes, scombo) for _ in fac)
        spen = sum(p for _, p in scombo)
        src_pieces = Counter(f for fac, _ in scombo if len(fac) > 1 for f in fac)
        src_whole_sizes = Counter(fac[0] for fac, _ in scombo if len(fac) == 1)
        for tcombo in matches:
            if src_pieces - Counter(fac[0] for fac, _ in tcombo if len(fac) == 1):
                continue
            if Counter(f for fac, _ in tcombo if len(fac) > 1 for f in fac) - src_whole_sizes:
                continue
            tflat = tuple(f for fac, _ in tcombo for f in fac)
            target_axis = tuple(j for j, (fac, _) in zip(tgt_axes, tcombo) for _ in fac)
            prior = spen + sum(p for _, p in tcombo)
            src_whole = tuple(len(fac) == 1 for fac, _ in scombo for _ in fac)
            tgt_whole = tuple(len(fac) == 1 for fac, _ in tcombo for _ in fac)
            for order in _bijections(sflat, tflat):
                # every factor must be a whole axis on one side at least: a target axis made of a piece of one
                # source axis and anything else is not a layout anyone writes
                if not all(src_whole[k] or tgt_whole[p] for p, k in enumerate(order)):
                    continue
                pieces = len(sflat) - len(src_axes) + len(tflat) - len(tgt_axes)
                found.append((AxisMap(sflat, factor_axis, order, target_axis, prior), pieces))
    # A map that cuts axes into pieces and glues pieces of different axes together where fewer cuts would do
    # regroups axes across their boundaries ([32, 3, 2, 16, 16] -> [2, 16, 16, 3, 32] read as 32 = 2 x 16 and
    # 2 x 16 = 32): the plain permutation of whole axes is the reading anyone writes, so the extra pieces cost.
    fewest = min((p for _, p in found), default=0)
    best: dict[tuple, AxisMap] = {}
    for amap, pieces in found:
        if pieces > fewest:
            amap = AxisMap(amap.factors, amap.factor_axis, amap.order, amap.target_axis,
                           amap.prior + REGROUP_PENALTY * (pieces - fewest))
        key = amap.canonical()
        old = best.get(key)
        if old is None or amap.prior < old.prior:
            best[key] = amap
    return list(best.values())
