"""Head-grouped layouts of a fused tensor whose name lists finer roles than the other side's parts.

One side may fuse `qkvz` where the other holds `qkv` and `z`: the fused axis then need not be the contiguous
concat [qkv | z]. It may be grouped per head group, G rounds of [q_g | k_g | v_g | z_g] (Megatron's fused QKV per
query group; Qwen3-Next's gated-delta-net projections per key head). Shapes cannot tell these layouts apart, so
they are offered as ranked alternatives (dearer than the contiguous one) for verify to decide.

A part holding several roles (`qkv`) is cut into role sizes that config dims can explain (head count x head dim);
G is a head count that divides every role, and each per-group block is whole heads (a multiple of a head dim,
or, for per-head scalars such as gates of shape [heads], any count of heads).
"""

from __future__ import annotations

import itertools

from ckptmap.transforms.combinators import Chain, Parallel
from ckptmap.transforms.factor import nesting_rank
from ckptmap.transforms.fusion import Concat, Split, interleave_rounds
from ckptmap.transforms.structural import Identity

MAX_VARIANTS = 4


def roles_held(part_concept: str, fused_concepts: list[str]) -> int:
    """How many of the fused name's single-letter roles one part's distinguishing concept holds: `qkv` in
    `qkvz` holds 3; a concept that is one role (or not a packed word at all) holds 1."""
    if len(part_concept) < 2:
        return 1
    for word in fused_concepts:
        if len(word) > len(part_concept) and len(word) <= 5 and part_concept in word:
            return len(part_concept)
    return 1


def head_counts(dims: dict[str, int]) -> list[int]:
    return sorted({v for k, v in dims.items() if nesting_rank(k) == 2 and v > 1})


def head_sizes(dims: dict[str, int]) -> list[int]:
    return sorted({v for k, v in dims.items() if nesting_rank(k) == 4 and v > 1})


def role_sizes(total: int, n_roles: int, dims: dict[str, int]) -> list[tuple[int, ...]]:
    """Ways to cut `total` into `n_roles` sizes that are each head count x head dim, monotone along the part
    (q = k <= v, or q >= k = v), most equal first."""
    products = sorted({h * d for h in head_counts(dims) for d in head_sizes(dims)})
    out = []
    for combo in itertools.product(products, repeat=n_roles):
        if sum(combo) != total:
            continue
        if list(combo) != sorted(combo) and list(combo) != sorted(combo, reverse=True):
            continue
        out.append(combo)
    return sorted(out, key=lambda c: (len(set(c)), c))


def _head_structured(size: int, dims: dict[str, int]) -> bool:
    """Whether a part of this size is whole heads: head count x head dim, or one scalar per head."""
    return size in head_counts(dims) or any(size == h * d for h in head_counts(dims) for d in head_sizes(dims))


def _block_ok(size: int, groups: int, dims: dict[str, int]) -> bool:
    block = size // groups
    if any(block % d == 0 for d in head_sizes(dims)):
        return True
    # Per-head scalars (a gate per value head): a block is a count of heads.
    return size in head_counts(dims)


def group_counts(fine: tuple[int, ...], dims: dict[str, int]) -> list[int]:
    """Head counts G that split every role into G equal blocks of whole heads (G = 1 is the contiguous layout,
    not listed)."""
    return [g for g in head_counts(dims)
            if all(s % g == 0 and s // g >= 1 for s in fine) and all(_block_ok(s, g, dims) for s in fine)]


def grouped_splits(split: Split, held: tuple[int, ...], dims: dict[str, int]) -> list[Chain]:
    """1 -> n chains equivalent in shape to the contiguous `split` (its parts holding `held` roles each) that
    read the fused axis as G head groups of all roles. Each is: an interleaved split into the roles, then a
    concat of the roles a part holds."""
    if split.interleave or len(held) != len(split.sizes):
        return []
    cuts = [role_sizes(size, n, dims) if n > 1 else [(size,)] for size, n in zip(split.sizes, held)]
    out: list[Chain] = []
    for pick in itertools.product(*cuts):
        fine = tuple(s for part in pick for s in part)
        if max(held) == 1 and not all(_head_structured(s, dims) for s in fine):
            continue  # parts that are not whole heads (gate/up of an MLP) are not grouped by heads
        for g in group_counts(fine, dims):
            out.append(Chain(_grouped_cut(split.axis, pick, tuple(s // g for s in fine))))
            if len(out) >= MAX_VARIANTS:
                return out
    return out


def _grouped_cut(axis: int, runs: tuple[tuple[int, ...], ...], blocks: tuple[int, ...]) -> tuple:
    """Ops cutting `axis` into the fine parts of `runs` (all parts, in order), read as rounds of `blocks` (one
    block per fine part), then concatenating each run back into one part where a run holds several."""
    fine = tuple(s for run in runs for s in run)
    cut = Split(axis, fine, True, blocks[0] if len(set(blocks)) == 1 else blocks)
    if all(len(run) == 1 for run in runs):
        return (cut,)
    return cut, Parallel(tuple(Concat(axis, run) if len(run) > 1 else Identity() for run in runs))


def _leading_split(chain) -> Split | None:
    """The split a 1 -> n chain starts with, or None."""
    if isinstance(chain, Chain) and chain.ops and isinstance(chain.ops[0], Split):
        return chain.ops[0]
    return None


def grouped_chains(chain: Chain, held: tuple[int, ...], dims: dict[str, int]) -> list[Chain]:
    """For a 1 -> n chain that starts with a contiguous split, the same chain with the split read per head
    group (see grouped_splits); [] when the chain does not start with a split."""
    split = _leading_split(chain)
    if split is None:
        return []
    return [Chain((g,) + chain.ops[1:], chain.prior) for g in grouped_splits(split, held, dims)]


def split_layout(chain) -> tuple[int, int, tuple[int, ...]] | None:
    """(axis, rounds, per-round blocks) of the split a 1 -> n chain starts with, or None."""
    split = _leading_split(chain)
    if split is None:
        return None
    if not split.interleave:
        return split.axis, 1, tuple(split.sizes)
    rounds, blocks = interleave_rounds(split.sizes, split.block)
    return split.axis, rounds, tuple(blocks)


def _runs(coarse: tuple[int, ...], fine: tuple[int, ...]) -> list[tuple[int, ...]] | None:
    """`fine` cut into runs of neighbours whose sums are `coarse`, in order; None when it cannot be."""
    runs, i = [], 0
    for c in coarse:
        run: list[int] = []
        while sum(run) < c and i < len(fine):
            run.append(fine[i])
            i += 1
        if sum(run) != c:
            return None
        runs.append(tuple(run))
    return runs if i == len(fine) else None


def agrees_with_code(chain, layout: dict) -> int:
    """+1 when a 1 -> n chain cuts the fused axis as the model's code does (`layout`: axis, rounds, blocks, as
    read by the code-layout tracers; its parts may be finer than the chain's), -1 when it cuts that axis
    otherwise, 0 when the chain starts with no split or splits another axis."""
    got = split_layout(chain)
    if got is None or got[0] != layout["axis"]:
        return 0
    axis, rounds, blocks = got
    return 1 if rounds == layout["rounds"] and _runs(blocks, tuple(layout["blocks"])) is not None else -1


def code_splits(chain, layout: dict) -> list[Chain]:
    """The chain with its first (contiguous) split replaced by the cut the code makes (`layout`), when the code's
    parts, taken in runs of neighbours, make the chain's parts: an interleaved split into the code's parts, then
    a concat of each run. [] when that cannot be."""
    got = split_layout(chain)
    if got is None or got[0] != layout["axis"] or got[1] != 1:
        return []
    split = chain.ops[0]
    rounds, blocks = int(layout["rounds"]), tuple(int(b) for b in layout["blocks"])
    runs = _runs(tuple(split.sizes), tuple(rounds * b for b in blocks))
    if rounds == 1 or runs is None:
        return []
    return [Chain(_grouped_cut(split.axis, tuple(runs), blocks) + chain.ops[1:], chain.prior)]
