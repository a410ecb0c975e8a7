"""Layer alignment: which source layer instance corresponds to which target layer instance.

Source slots are taken in their natural order (root, then level indices). Target slots can sit in several
sibling collections (`dense_layers` then `moe_layers`; `layers_{j}` inside a scanned `layers`; `local_layers`
and `global_layer` inside `scanned_blocks`; a `layers_remainder` stack after the main one) whose relative
order the names do not say. Every order of siblings is tried and the one whose per-layer parameter
signatures agree best with the source's is kept; ties keep the order of first appearance.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, replace

from ckptmap.heuristics.names import name_similarity
from ckptmap.heuristics.structure import Slot, TreeStructure
from ckptmap.heuristics.weights import WEIGHTS
from ckptmap.trees.model import name_tokens

END = "\x00end"
MAX_ORDERINGS = 5040
# A prior on sibling order when signatures cannot tell: words that usually name earlier layers of a cycle
# (sliding-window before global attention, dense before MoE) sort first. Only a tie-breaker.
EARLY_WORDS = ("local", "sliding", "swa", "first", "dense", "even", "linear")
LATE_WORDS = ("global", "full", "last", "moe", "odd", "remainder")


def _position_prior(name: str) -> int:
    low = name.lower()
    if any(w in low for w in EARLY_WORDS):
        return -1
    if any(w in low for w in LATE_WORDS):
        return 1
    return 0


def slot_distance(a: Slot, b: Slot) -> float:
    """0 when two layer instances hold the same multiset of parameter sizes; grows as they differ."""
    sa, sb = a.signature(), b.signature()
    ta, tb = sum(sa), sum(sb)
    total = abs(ta - tb) / max(ta, tb, 1)
    ca, cb = Counter(sa), Counter(sb)
    common = sum((ca & cb).values())
    multiset = 1.0 - common / max(len(sa), len(sb), 1)
    return total + WEIGHTS.align_multiset * multiset


def stack_groups(struct: TreeStructure) -> list[list[str]]:
    """Cluster roots where one is a prefix of another (`params-decoder` and `params-decoder-layers_remainder`)."""
    roots = sorted(struct.roots(), key=len)
    groups: list[list[str]] = []
    for r in roots:
        for g in groups:
            if r.startswith(g[0]) and (len(r) == len(g[0]) or not r[len(g[0])].isalnum()):
                g.append(r)
                break
        else:
            groups.append([r])
    return groups


def _choice_points(slots: list[Slot], roots: list[str]) -> list[tuple[tuple, list[str]]]:
    """Each place where sibling names need an order: (point key, names in first-appearance order)."""
    points: dict[tuple, list[str]] = {}
    for s in slots:
        names = s.level_names
        for i in range(len(names) + 1):
            key = (s.root, names[:i])
            name = names[i] if i < len(names) else END
            opts = points.setdefault(key, [])
            if name not in opts:
                opts.append(name)
    out = [(("roots",), sorted(roots, key=lambda r: (_position_prior(r[len(roots[0]):]), roots.index(r))))] \
        if len(roots) > 1 else []
    out += [(k, sorted(v, key=lambda n: (_position_prior(n), v.index(n)))) for k, v in points.items() if len(v) > 1]
    return out


def _ordered(slots: list[Slot], ranks: dict[tuple, dict[str, int]]) -> list[Slot]:
    root_rank = ranks.get(("roots",), {})

    def key(s: Slot):
        parts = [root_rank.get(s.root, 0)]
        names = s.level_names
        for i in range(len(names) + 1):
            point = ranks.get((s.root, names[:i]), {})
            if i < len(names):
                parts.append((point.get(names[i], 0), s.coord[i][1]))
            else:
                parts.append((point.get(END, 0), 0))
        return tuple(parts)

    return sorted(slots, key=key)


def orderings(slots: list[Slot], roots: list[str]):
    """Yield candidate total orders of `slots`, the first-appearance order first."""
    points = _choice_points(slots, roots)
    perms_per_point = [list(itertools.permutations(opts)) for _, opts in points]
    for n, combo in enumerate(itertools.product(*perms_per_point)):
        if n >= MAX_ORDERINGS:
            return
        ranks = {pk: {name: i for i, name in enumerate(order)} for (pk, _), order in zip(points, combo)}
        yield _ordered(slots, ranks)


@dataclass
class Alignment:
    """Pairs of aligned (source slot, target slot), and the slots left without a partner."""

    pairs: list[tuple[Slot, Slot]]
    unaligned_source: list[Slot]
    unaligned_target: list[Slot]
    notes: list[str]


def _group_slots(struct: TreeStructure, group: list[str]) -> list[Slot]:
    return [s for s in struct.slots.values() if s.root in group]


def _subwords(token: str) -> list[str]:
    return [w for w in token.split("_") if w]


def split_slot(slot: Slot, k: int) -> list[Slot] | None:
    """Split one layer instance that packs k source layers (gemma2's `mlp_local` / `mlp_global` in one MaxText
    layer) into k sub-instances, by k marker words that each name exactly one share of its parameters and
    leave identical names once removed. None when no such markers exist."""
    locals_ = sorted(slot.locals())
    if len(locals_) < k or len(locals_) % k:
        return None
    counts: Counter = Counter()
    for loc in locals_:
        words = {w for tok in name_tokens(loc) for w in _subwords(tok)}
        counts.update(words)
    share = len(locals_) // k
    cands = [w for w, c in counts.items() if c == share and not w.isdigit()]
    for markers in itertools.combinations(cands, k):
        residual: dict[str, set[str]] = {}
        owner: dict[str, str] = {}
        ok = True
        for loc in locals_:
            hits = [m for m in markers if m in {w for tok in name_tokens(loc) for w in _subwords(tok)}]
            if len(hits) != 1:
                ok = False
                break
            m = hits[0]
            toks = []
            for tok in name_tokens(loc):
                ws = _subwords(tok)
                if m in ws:
                    ws = [w for w in ws if w != m]
                toks.append("_".join(ws))
            res = "-".join(t for t in toks if t)
            residual.setdefault(m, set()).add(res)
            owner[loc] = (m, res)
        if not ok or len({frozenset(v) for v in residual.values()}) != 1:
            continue
        subs = {m: Slot(root=slot.root, coord=slot.coord + ((m, 0),)) for m in markers}
        for u in slot.units:
            m, res = owner[u.local]
            subs[m].units.append(replace(u, local=res, coord=slot.coord + ((m, 0),)))
        return [subs[m] for m in markers]
    return None


def _maybe_split(src_slots: list[Slot], tgt_slots: list[Slot]) -> list[Slot]:
    """When the target has k times fewer layer instances than the source, try to split each into k."""
    if not tgt_slots or len(src_slots) <= len(tgt_slots) or len(src_slots) % len(tgt_slots):
        return tgt_slots
    k = len(src_slots) // len(tgt_slots)
    out: list[Slot] = []
    for s in tgt_slots:
        parts = split_slot(s, k)
        if parts is None:
            return tgt_slots
        out.extend(parts)
    return out


def align(src: TreeStructure, tgt: TreeStructure) -> Alignment:
    """Pair stack groups of both trees, then order and pair their layer instances."""
    src_groups = [(g, _group_slots(src, g)) for g in stack_groups(src)]
    tgt_groups = [(g, _group_slots(tgt, g)) for g in stack_groups(tgt)]
    src_groups = [(g, next(orderings(sl, g))) for g, sl in src_groups]

    # Pair groups: equal layer counts first, then signature agreement, then root-name similarity.
    candidates = []
    for i, (sg, ss) in enumerate(src_groups):
        for j, (tg, ts) in enumerate(tgt_groups):
            ts = _maybe_split(ss, ts)
            tgt_groups[j] = (tg, ts)
            count_gap = abs(len(ss) - len(ts)) / max(len(ss), len(ts))
            sig = sum(min(slot_distance(a, b) for b in ts) for a in ss[:4]) / min(len(ss), 4)
            name = name_similarity(sg[0], tg[0])
            candidates.append((count_gap + sig - WEIGHTS.align_name * name, i, j))
    candidates.sort()
    used_s, used_t = set(), set()
    pairs: list[tuple[Slot, Slot]] = []
    notes: list[str] = []
    for cost, i, j in candidates:
        if i in used_s or j in used_t or cost > WEIGHTS.align_max_cost:
            continue
        used_s.add(i)
        used_t.add(j)
        sg, ss = src_groups[i]
        tg, ts = tgt_groups[j]
        best, best_cost = None, None
        for order in orderings(ts, tg):
            c = sum(slot_distance(a, b) for a, b in zip(ss, order))
            if best_cost is None or c < best_cost - 1e-9:
                best, best_cost = order, c
            if best_cost == 0:
                break
        assert best is not None
        n = min(len(ss), len(best))
        pairs.extend(zip(ss[:n], best[:n]))
        if len(ss) != len(best):
            notes.append(f"stack {sg[0]!r} has {len(ss)} layers but {tg[0]!r} has {len(best)}")
        notes.append(f"stack {sg[0]!r} -> {', '.join(repr(r) for r in tg)}: {n} layers aligned"
                     + (f" (signature mismatch {best_cost:.2f})" if best_cost else ""))
    paired_src = {id(a) for a, _ in pairs}
    paired_tgt = {id(b) for _, b in pairs}
    return Alignment(
        pairs=pairs,
        unaligned_source=[s for _, sl in src_groups for s in sl if id(s) not in paired_src],
        unaligned_target=[s for _, sl in tgt_groups for s in sl if id(s) not in paired_tgt],
        notes=notes,
    )
