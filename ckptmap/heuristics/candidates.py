"""Candidate edges for one local problem (one layer template, or the globals) and their scores.

An *operand* is what one side offers the matcher: one unit, or a group of per-expert units with the same
local template (`mlp.experts.{e}.gate_proj.weight`), offered stacked as [n_experts, ...].
A *candidate* says: these source operands -> these target operands through this chain, with a score that is
the sum of explainable parts (name similarity, layout prior, chain cost, LLM prior).
Three shapes of candidate are generated: 1 -> 1, 1 -> n (a fused source split into targets) and n -> 1
(several sources concatenated into one target).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Callable

from ckptmap.heuristics.layout import has_transpose, layout_score
from ckptmap.heuristics.names import (concept_similarity, concepts, name_similarity, packed_word_only, part_rank,
                                      split_subwords)
from ckptmap.heuristics.roles import refine_roles
from ckptmap.heuristics.regroup import agrees_with_code, code_splits, grouped_chains, roles_held
from ckptmap.heuristics.structure import Unit
from ckptmap.heuristics.weights import WEIGHTS
from ckptmap.transforms.base import numel
from ckptmap.trees.model import name_tokens

# Score weights: one documented object (heuristics.weights); the short names below are read from it.
W_NAME = WEIGHTS.name
W_LAYOUT = WEIGHTS.layout
W_COST = WEIGHTS.cost
W_PRIOR = WEIGHTS.prior
W_ORDINAL = WEIGHTS.ordinal
W_EXPERT_STACK = WEIGHTS.expert_stack
W_CODE = WEIGHTS.code
MIN_PART_SIMILARITY = WEIGHTS.min_part_similarity
BASE = WEIGHTS.base
W_UNNAMED_SPLIT = WEIGHTS.unnamed_split
# Search limits (how many alternatives are generated, not how they score).
MAX_CHAINS = 6
MAX_GROUP_PARTNERS = 6
MAX_FAMILY = 4


@dataclass
class Operand:
    """A local operand: `units` (several when per-expert tensors are offered stacked at axis 0)."""

    local: str
    shape: tuple[int, ...]
    units: list[Unit]
    concepts: tuple[str, ...] = ()  # its name's concepts read beside its siblings (heuristics.roles); () = unread

    @property
    def role_concepts(self) -> tuple[str, ...]:
        """The concepts name scoring compares: the in-context reading when made, else names.concepts."""
        return self.concepts or concepts(self.local)

    @property
    def stacked_experts(self) -> int:
        return len(self.units) if len(self.units) > 1 else 0

    @property
    def numel(self) -> int:
        return numel(self.shape)


def operands(units: list[Unit]) -> list[Operand]:
    """Group units by local name; per-expert units become one operand [n_experts, *shape]."""
    by_local: dict[str, list[Unit]] = {}
    for u in units:
        by_local.setdefault(u.local, []).append(u)
    out = []
    for local, us in by_local.items():
        if len(us) > 1 and all(u.expert is not None for u in us) and len({u.shape for u in us}) == 1:
            us = sorted(us, key=lambda u: u.expert)
            out.append(Operand(local, (len(us),) + us[0].shape, us))
        else:
            for u in us:
                out.append(Operand(u.local if len(us) == 1 else u.tensor, u.shape, [u]))
    read = refine_roles([op.local for op in out])
    for op in out:
        op.concepts = read[op.local]
    return out


@dataclass
class Candidate:
    sources: tuple[int, ...]
    targets: tuple[int, ...]
    chain: object
    score: float
    parts: dict = field(default_factory=dict)


@dataclass
class Context:
    """What scoring needs besides the operands."""

    search: Callable  # (src_shapes, tgt_shapes, dims) -> list of chains
    dims: dict
    src_layout: str
    tgt_layout: str
    prior: Callable[[str, str], float] | None = None
    # Fused-axis layouts read off each model's code (tensor name -> {"axis", "rounds", "blocks"}, stored axes).
    src_code_layouts: dict = field(default_factory=dict)
    tgt_code_layouts: dict = field(default_factory=dict)


_DIGITS = re.compile(r"(\d+)$")
_LEAVES = {"weight", "kernel", "scale", "bias", "embedding", "w", "b"}


def numbers(local: str) -> tuple[int, ...]:
    """The numbers written into a name: `layer_norm2` -> (2,), `merger_list.1.linear_fc1.weight` -> (1, 1)."""
    out = []
    for tok in name_tokens(local):
        m = _DIGITS.search(tok)
        if m and tok != "{e}":
            out.append(int(m.group(1)))
    return tuple(out)


def ordinal_ranks(ops: list[Operand]) -> dict[int, int]:
    """For operands that differ from a sibling only by numbers (LayerNorm_0 / LayerNorm_1), their rank among
    those siblings: numbering may start at 0 or 1, but ranks compare across frameworks."""
    groups: dict[tuple, list[tuple[tuple, int]]] = {}
    for i, op in enumerate(ops):
        key = (tuple(sorted(set(concepts(op.local)))), op.shape)
        groups.setdefault(key, []).append((numbers(op.local), i))
    out = {}
    for members in groups.values():
        if len(members) < 2 or len({o for o, _ in members}) < len(members):
            continue
        for rank, (_, i) in enumerate(sorted(members)):
            out[i] = rank
    return out


def constant_numbers(ops: list[Operand]) -> tuple[int, ...] | None:
    """The numbers every numbered operand of one side carries alike (KerasHub's `mixtral_sparse_moe_block_1/...`
    in layer 1): they name the layer's module, not a part of it, so they say nothing about which part maps
    where. None when the numbered operands differ (or fewer than two carry numbers)."""
    found = {numbers(op.local) for op in ops} - {()}
    numbered = sum(1 for op in ops if numbers(op.local))
    return next(iter(found)) if len(found) == 1 and numbered > 1 else None


def ordinal_term(s: Operand, t: Operand, s_rank: int | None, t_rank: int | None,
                 s_constant: tuple[int, ...] | None = None, t_constant: tuple[int, ...] | None = None) -> float:
    """Agreement of the numbers in two names: the same explicit numbers, or the same rank among siblings.
    A side's constant numbers (constant_numbers) are left out."""
    ns, nt = numbers(s.local), numbers(t.local)
    ns = () if ns == s_constant else ns
    nt = () if nt == t_constant else nt
    n = min(len(ns), len(nt))
    if n and ns[-n:] == nt[-n:]:
        # The same numbers, read from the end; agreeing on more of them is stronger evidence.
        return W_ORDINAL * (1.0 + WEIGHTS.ordinal_per_number * (n - 1))
    if s_rank is not None and t_rank is not None:
        return W_ORDINAL / 2 if s_rank == t_rank else -W_ORDINAL / 2
    return 0.0


def raw_overlap(a: str, b: str) -> float:
    """Jaccard of literal lower-case tokens (digits kept), leaves ignored: exact spellings shared by both."""
    ta = {t.lower() for t in name_tokens(a) if t and t.lower() not in _LEAVES}
    tb = {t.lower() for t in name_tokens(b) if t and t.lower() not in _LEAVES}
    if not ta or not tb:
        return 0.0
    return len(ta & tb) / len(ta | tb)


def _score(ctx: Context, srcs: list[Operand], tgts: list[Operand], chain, extra_name: float | None = None,
           ordinal: float = 0.0):
    if extra_name is None:
        sims = [concept_similarity(s.role_concepts, t.role_concepts)
                + WEIGHTS.raw_overlap * raw_overlap(s.local, t.local) for s in srcs for t in tgts]
        name = sum(sims) / len(sims)
    else:
        name = extra_name
    layout = layout_score(chain, srcs[0].local, srcs[0].units[0].shape, ctx.src_layout, ctx.tgt_layout)
    cost = float(getattr(chain, "cost", 0.0))
    prior = 0.0
    if ctx.prior is not None:
        pv = [ctx.prior(s.units[0].tensor, t.units[0].tensor) for s in srcs for t in tgts]
        prior = sum(pv) / len(pv)
    parts = {"name": round(name, 4), "layout": layout, "chain_cost": round(cost, 4), "prior": round(prior, 4)}
    if ordinal:
        parts["ordinal"] = ordinal
    score = BASE + W_NAME * name + W_LAYOUT * layout - W_COST * cost + W_PRIOR * prior + ordinal
    if any(op.stacked_experts for op in srcs):
        score -= W_EXPERT_STACK
        parts["expert_stack"] = -W_EXPERT_STACK
    # A candidate covering several targets stands for that many 1 -> 1 edges in the objective.
    score *= max(len(tgts), 1)
    return score, parts


def _plausible_parts(fused: Operand, parts: list[Operand]) -> bool:
    """Parts of one fused tensor play different roles, and the fused name names each role:
    `qkv_proj` has query, key and value; `gate_up_proj` has wi_0 and wi_1."""
    sets = [frozenset(packed_word_only(concepts(o.local))) for o in parts]
    if len(set(sets)) != len(sets):
        return False
    shared = frozenset.intersection(*sets)
    fused_concepts = list(concepts(fused.local))
    return all((st - shared) and all(_role_position(c, fused_concepts) is not None for c in st - shared)
               for st in sets)


def _role_position(concept: str, fused_concepts: list[str]) -> tuple[int, int] | None:
    """Where a part's role appears in the fused name: as a concept (`wi_0` in gate_up), or as letters of a
    short packed word (`qkv` and `z` in `qkvz`, `b` and `a` in `ba`)."""
    if concept in fused_concepts:
        return (fused_concepts.index(concept), 0)
    if len(concept) <= 3:
        for i, word in enumerate(fused_concepts):
            if 1 < len(word) <= 5 and concept in word and concept != word:
                return (i, word.index(concept))
    return None


def _chains(ctx: Context, src_shapes, tgt_shapes):
    try:
        return list(ctx.search(tuple(src_shapes), tuple(tgt_shapes), ctx.dims))[:MAX_CHAINS]
    except ValueError:
        return []


def _split_order(src: Operand, tgts: list[Operand]) -> list[Operand]:
    """Order split parts as the fused name lists them (qkv: q, k, v; gate_up: gate, up), else by name."""
    src_concepts = list(concepts(src.local))
    shared = frozenset.intersection(*[frozenset(concepts(t.local)) for t in tgts])

    def key(t: Operand):
        positions = [p for c in concepts(t.local) if c not in shared
                     for p in [_role_position(c, src_concepts)] if p is not None]
        return (min(positions) if positions else (99, 0), t.local)

    return sorted(tgts, key=key)


def generate(ctx: Context, src_ops: list[Operand], tgt_ops: list[Operand]) -> list[Candidate]:
    """Every plausible candidate between two operand lists, scored."""
    cands: list[Candidate] = []
    s_rank, t_rank = ordinal_ranks(src_ops), ordinal_ranks(tgt_ops)
    s_const, t_const = constant_numbers(src_ops), constant_numbers(tgt_ops)
    for j, t in enumerate(tgt_ops):
        for i, s in enumerate(src_ops):
            if s.numel != t.numel and not _pad_compatible(s.shape, t.shape):
                continue
            ordinal = ordinal_term(s, t, s_rank.get(i), t_rank.get(j), s_const, t_const)
            for chain in _chains(ctx, [s.shape], [t.shape]):
                score, parts = _score(ctx, [s], [t], chain, ordinal=ordinal)
                cands.append(Candidate((i,), (j,), chain, score, parts))
    # 1 -> n: a fused source split into several targets; n -> 1: several sources concatenated into one target.
    for i, s in enumerate(src_ops):
        for idx in _fused_groups(s, tgt_ops):
            cands += _fused_candidates(ctx, i, s, idx, tgt_ops, split=True, named=True)
    for j, t in enumerate(tgt_ops):
        for idx in _fused_groups(t, src_ops):
            cands += _fused_candidates(ctx, j, t, idx, src_ops, split=False, named=True)
    # The same through role families: a packed tensor whose name does not list its parts, against siblings that
    # differ in one role word (pre_alpha / post_alpha / res_alpha) and add up to it.
    named = {(c.sources, c.targets) for c in cands}
    tgt_families, src_families = role_families(tgt_ops), role_families(src_ops)
    for i, s in enumerate(src_ops):
        for idx in _family_groups(s, tgt_ops, tgt_families):
            if ((i,), idx) not in named:
                cands += _fused_candidates(ctx, i, s, idx, tgt_ops, split=True, named=False)
    for j, t in enumerate(tgt_ops):
        for idx in _family_groups(t, src_ops, src_families):
            if (idx, (j,)) not in named:
                cands += _fused_candidates(ctx, j, t, idx, src_ops, split=False, named=False)
    return cands


def _fused_candidates(ctx: Context, k: int, fused: Operand, idx: tuple[int, ...], others: list[Operand], *,
                      split: bool, named: bool) -> list[Candidate]:
    """Candidates between operand `k` (`fused`) and the parts `idx` of the other side (`others`): fused -> parts
    when `split`, else parts -> fused. Each stands for len(idx) edges. A group the fused name names gets a small
    bonus; a role family it does not name pays W_UNNAMED_SPLIT per edge."""
    parts = [others[p] for p in idx]
    out = []
    for chain, code in _fused_chains(ctx, fused, parts, split=split):
        if split:
            score, parts_score = _score(ctx, [fused], parts, chain)
        else:
            score, parts_score = _score(ctx, parts, [fused], chain)
            score *= len(idx)
        if named:
            score = score + _code_term(code, len(idx), parts_score) + WEIGHTS.named_split_bonus
        else:
            score += _code_term(code, len(idx), parts_score) - W_UNNAMED_SPLIT * len(idx)
            parts_score["unnamed_split"] = -W_UNNAMED_SPLIT
        sources, targets = ((k,), idx) if split else (idx, (k,))
        out.append(Candidate(sources, targets, chain, score, parts_score))
    return out


def _words(local: str) -> list[str]:
    return [w for tok in name_tokens(local) if tok for w in split_subwords(tok)]


def role_families(ops: list[Operand]) -> list[tuple[int, ...]]:
    """Groups of 2..MAX_FAMILY operands whose names differ in exactly one word, at the same place
    (`mhc_attention-pre_alpha`, `-post_alpha`, `-res_alpha`): the parts of one packed quantity, one per role.
    Each group is ordered by the usual packing order of its roles (names.PART_ORDER), else by name."""
    words = [_words(op.local) for op in ops]
    by_key: dict[tuple, list[tuple[str, int]]] = {}
    for k, ws in enumerate(words):
        for pos, w in enumerate(ws):
            if w.isdigit():
                continue
            key = (len(ws), pos, tuple(ws[:pos]), tuple(ws[pos + 1:]))
            by_key.setdefault(key, []).append((w, k))
    out = []
    for members in by_key.values():
        if not 2 <= len(members) <= MAX_FAMILY or len({w for w, _ in members}) != len(members):
            continue
        members.sort(key=lambda m: (part_rank(m[0]) or (99, 0), m[0]))
        out.append(tuple(k for _, k in members))
    return out


def _family_groups(fused: Operand, others: list[Operand], families: list[tuple[int, ...]]):
    """Role families of `others` (`families`, from role_families) whose sizes add up to `fused` and whose names
    are close enough to its name."""
    for idx in families:
        members = [others[k] for k in idx]
        if sum(o.numel for o in members) != fused.numel or any(o.numel >= fused.numel for o in members):
            continue
        if sum(name_similarity(fused.local, o.local) for o in members) / len(members) < MIN_PART_SIMILARITY:
            continue
        yield idx


def _code_term(agreement: int, edges: int, parts: dict) -> float:
    if not agreement:
        return 0.0
    parts["code_layout"] = agreement
    return W_CODE * agreement * edges


def operand_layout(op: Operand, layouts: dict) -> dict | None:
    """The code layout of an operand's tensor, its axis moved to the operand's coordinates (stacked layer axes
    removed, a leading expert axis when per-expert tensors are offered stacked); None when none is known."""
    unit = op.units[0]
    layout = layouts.get(unit.tensor)
    if not layout or layout["axis"] in unit.stacked_axes:
        return None
    axis = layout["axis"] - sum(1 for a in unit.stacked_axes if a < layout["axis"]) + (1 if op.stacked_experts else 0)
    return dict(layout, axis=axis)


def _fused_chains(ctx: Context, fused: Operand, parts: list[Operand], split: bool) -> list[tuple[object, int]]:
    """(chain, agreement with the code's layout) between a fused operand and its parts (fused -> parts when
    `split`, else parts -> fused): the shape search's chains, the head-grouped readings of its contiguous ones
    (heuristics.regroup, dearer), and the cut the model's code makes when a tracer read it."""
    if split:
        found = _chains(ctx, [fused.shape], [p.shape for p in parts])
        as_split = list(found)
    else:
        found = _chains(ctx, [p.shape for p in parts], [fused.shape])
        as_split = [c.inverse() for c in found]
    layout = operand_layout(fused, ctx.src_code_layouts if split else ctx.tgt_code_layouts)
    shared = frozenset.intersection(*[frozenset(concepts(p.local)) for p in parts])
    fused_concepts = list(concepts(fused.local))
    held = tuple(max((roles_held(c, fused_concepts) for c in concepts(p.local) if c not in shared), default=1)
                 for p in parts)
    out = list(zip(found, as_split))
    seen = set(found)
    for chain in as_split:
        extra = grouped_chains(chain, held, ctx.dims) + (code_splits(chain, layout) if layout else [])
        for g in extra:
            stored = g if split else g.inverse()
            if stored not in seen:
                seen.add(stored)
                out.append((stored, g))
    return [(stored, agrees_with_code(g, layout) if layout else 0) for stored, g in out]


def _fused_groups(fused: Operand, others: list[Operand]):
    """Index tuples (in the fused name's order) of 2-4 operands of `others` whose sizes add up to `fused` and whose
    roles its name names: the parts of a fused tensor, whichever side holds it."""
    fused_concepts = concepts(fused.local)
    partners = [(name_similarity(fused.local, o.local), k) for k, o in enumerate(others) if o.numel < fused.numel]
    partners = [p for p in sorted(partners, reverse=True)
                if p[0] >= MIN_PART_SIMILARITY or _holds_named_role(others[p[1]], fused_concepts)]
    partners = partners[:MAX_GROUP_PARTNERS]
    for r in (2, 3, 4):
        for combo in itertools.combinations([k for _, k in partners], r):
            if sum(others[k].numel for k in combo) != fused.numel:
                continue
            if not _plausible_parts(fused, [others[k] for k in combo]):
                continue
            position = {id(others[k]): k for k in combo}
            yield tuple(position[id(o)] for o in _split_order(fused, [others[k] for k in combo]))


def _holds_named_role(part: Operand, fused_concepts: tuple[str, ...]) -> bool:
    """Whether `part` carries a part role (names.PART_ORDER: wi_0, wi_1, query, ...) that the fused name names.
    Such a part is a partner whatever the rest of its name says: module words the other framework spells its own
    way (`Llama4MoEBlock_0-MoeBlock_0-wi_0` against `feed_forward.experts.gate_up_proj`) lower the overall name
    similarity, not the evidence of the role. The group still has to pass the size and role checks."""
    return any(c in fused_concepts and part_rank(c) is not None for c in concepts(part.local))


def _pad_compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Same rank and all axes equal but one (a padded vocabulary)."""
    if len(a) != len(b) or a == b:
        return False
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(diff) == 1:
        return True
    # Also allow a transposed pad: same multiset of all dims but one.
    return len(a) == 2 and (a[0] == b[1]) != (a[1] == b[0])


def _is_raw(local: str) -> bool:
    """A parameter without a framework leaf (`experts.gate_up_proj`, `sinks`): no layout convention applies."""
    return name_tokens(local)[-1].lower() not in _LEAVES


def _module(local: str) -> str:
    parts = name_tokens(local)
    return ".".join(parts[:-1])


def apply_module_consistency(cands: list[Candidate], src_ops: list[Operand]) -> None:
    """Raw tensors of one module follow one storage convention: when shapes force a sibling's chain to
    transpose (or not), prefer the same for tensors whose shapes leave it open (gate_up_proj [E, 2F, H] beside
    down_proj [E, H, F]). Adjusts scores in place and records the part as "module_layout"."""
    by_source: dict[int, list[Candidate]] = {}
    for c in cands:
        if len(c.sources) == 1 and _is_raw(src_ops[c.sources[0]].local):
            by_source.setdefault(c.sources[0], []).append(c)
    forced: dict[int, bool] = {}
    for i, cs in by_source.items():
        best = max(c.parts.get("name", 0.0) for c in cs)
        top = [c for c in cs if c.parts.get("name", 0.0) >= best - 1e-9]
        flags = {has_transpose(c.chain) for c in top}
        if len(flags) == 1:
            forced[i] = flags.pop()
    convention: dict[str, set[bool]] = {}
    for i, flag in forced.items():
        convention.setdefault(_module(src_ops[i].local), set()).add(flag)
    for i, cs in by_source.items():
        if i in forced:
            continue
        conv = convention.get(_module(src_ops[i].local))
        if not conv or len(conv) != 1:
            continue
        want = next(iter(conv))
        for c in cs:
            bonus = W_LAYOUT if has_transpose(c.chain) == want else -W_LAYOUT
            c.score += bonus * max(len(c.targets), 1)
            c.parts["module_layout"] = bonus


def forced_transposes(cands: list[Candidate], src_ops: list[Operand]) -> tuple[int, int]:
    """(forced transposes, forced identities) among 2-D+ `.weight`/`.kernel` matrices that are not embeddings:
    tensors whose best-named candidates all agree on transposing or not, so the shapes decide. This is how the
    tree itself says how it stores linear layers (torch Linear [out, in]; GPT-2's Conv1D [in, out])."""
    by_source: dict[int, list[Candidate]] = {}
    for c in cands:
        if len(c.sources) == 1 and len(c.targets) == 1:
            by_source.setdefault(c.sources[0], []).append(c)
    yes = no = 0
    for i, cs in by_source.items():
        op = src_ops[i]
        leaf = name_tokens(op.local)[-1].lower()
        if op.stacked_experts or len(op.shape) != 2 or leaf not in ("weight", "kernel"):
            continue
        if {"embed", "pos_embed", "logits"} & set(concepts(op.local)):
            continue
        best = max(c.parts.get("name", 0.0) for c in cs)
        flags = {has_transpose(c.chain) for c in cs if c.parts.get("name", 0.0) >= best - 1e-9}
        if len(flags) == 1:
            if flags.pop():
                yes += 1
            else:
                no += 1
    return yes, no
