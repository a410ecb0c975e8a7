"""Solve a mapping from two parameter trees alone.

1. analyse both trees (stacks, layer instances, units) and align layer instances;
2. group aligned pairs by template (the target's and source's sets of local names);
3. per template, generate scored candidates on one representative pair, build the candidate graph, and
   let CP-SAT choose, component by component;
4. instantiate every chosen edge over all pairs of the template (one Rule with a grid);
5. the same for the globals (and any layer instance left unaligned);
6. report targets left unmapped and sources left unused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from ckptmap.heuristics.align import align
from ckptmap.heuristics.candidates import (
    Candidate,
    Context,
    Operand,
    apply_module_consistency,
    forced_transposes,
    generate,
    operands,
)
from ckptmap.heuristics.layout import tree_layout
from ckptmap.heuristics.names import concepts
from ckptmap.heuristics.buffers import split_computed
from ckptmap.heuristics.coherence import apply_module_coherence
from ckptmap.heuristics.storage import apply_sibling_storage
from ckptmap.heuristics.structure import Slot, TreeStructure, analyse
from ckptmap.solver.cpsat import build_model, solve_ranked
from ckptmap.solver.graph import build_graph, components
from ckptmap.solver.rules import build_rule

from ckptmap.errors import SolveError
from ckptmap.mapping import Mapping, Rule
from ckptmap.transforms import Fill, Stack, search_chains
from ckptmap.trees.dims import merge_dims
from ckptmap.trees.model import ParamTree
from ckptmap.heuristics.weights import WEIGHTS


@dataclass
class Problem:
    """One local assignment problem and the instances its solution is copied to."""

    name: str
    instances: list[tuple[dict[str, Operand], dict[str, Operand]]]
    src_ops: list[Operand]
    tgt_ops: list[Operand]
    candidates: list[Candidate] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    ranked: list[list[int]] = field(default_factory=list)


@dataclass
class SolveResult:
    mapping: Mapping
    alternatives: dict[int, list[Rule]]
    problems: list[Problem]
    notes: list[str]
    seconds: float

    @property
    def complete(self) -> bool:
        return not self.mapping.unmapped_targets

    def explain(self, target: str, top: int = 5) -> list[dict]:
        """The best candidates for the target tensor `target`, with their score parts."""
        rows = []
        for prob in self.problems:
            for inst_src, inst_tgt in prob.instances:
                hit = [j for j, op in enumerate(prob.tgt_ops)
                       if any(u.tensor == target for u in inst_tgt.get(op.local, Operand("", (), [])).units)]
                if not hit:
                    continue
                for k, c in enumerate(prob.candidates):
                    if hit[0] in c.targets:
                        rows.append({
                            "template": prob.name,
                            "sources": [prob.src_ops[i].local for i in c.sources],
                            "targets": [prob.tgt_ops[j].local for j in c.targets],
                            "chain": c.chain.describe(),
                            "score": round(c.score, 4),
                            "parts": c.parts,
                            "chosen": k in prob.chosen,
                        })
                break
        rows.sort(key=lambda r: -r["score"])
        return rows[:top]

    def report(self) -> str:
        m = self.mapping
        lines = [f"{len(m.rules)} rules, {len(m.target_names())} target tensors mapped, "
                 f"{len(m.unmapped_targets)} unmapped, {len(m.unused_sources)} sources unused "
                 f"({self.seconds:.2f} s)"]
        lines += [f"  note: {n}" for n in self.notes]
        for t in m.unmapped_targets[:50]:
            lines.append(f"  unmapped target: {t}")
        for s, why in list(m.unused_sources.items())[:50]:
            lines.append(f"  unused source: {s} ({why})")
        return "\n".join(lines)


def _template_key(slot: Slot) -> tuple:
    return (slot.root, slot.level_names, frozenset((u.local, u.shape) for u in slot.units))


def _instances(pairs) -> list[tuple[dict[str, Operand], dict[str, Operand]]]:
    out = []
    for s, t in pairs:
        out.append(({op.local: op for op in operands(s.units)}, {op.local: op for op in operands(t.units)}))
    return out


def _problems(src: TreeStructure, tgt: TreeStructure, notes: list[str]) -> list[Problem]:
    al = align(src, tgt)
    notes.extend(al.notes)
    groups: dict[tuple, list] = {}
    for s, t in al.pairs:
        groups.setdefault((_template_key(t), _template_key(s)), []).append((s, t))
    problems = []
    for (tkey, _skey), pairs in groups.items():
        inst = _instances(pairs)
        rep_s, rep_t = inst[0]
        coords = ", ".join(f"{n}" for n in tkey[1])
        problems.append(Problem(name=f"{tkey[0]}[{coords}] x{len(pairs)}", instances=inst,
                                src_ops=list(rep_s.values()), tgt_ops=list(rep_t.values())))
    # Globals, plus the units of any layer instance left unaligned (matched by full name).
    g_src = list(src.globals) + [u for s in al.unaligned_source for u in s.units]
    g_tgt = list(tgt.globals) + [u for s in al.unaligned_target for u in s.units]
    g_src = [_as_global(u) for u in g_src]
    g_tgt = [_as_global(u) for u in g_tgt]
    so, to = operands(g_src), operands(g_tgt)
    if so or to:
        problems.append(Problem(name="globals", instances=[({o.local: o for o in so}, {o.local: o for o in to})],
                                src_ops=so, tgt_ops=to))
    return problems


def _as_global(u):
    if not u.coord:
        return u
    return replace(u, local=u.tensor, root="", coord=())


def _calibrate_layout(ctx: Context, problems: list[Problem], notes: list[str]) -> None:
    """Check the source's layout guess against what its shapes force. Names say `.weight` for torch Linear
    ([out, in]) and for GPT-2's Conv1D ([in, out]) alike; rectangular matrices whose chain the shapes decide
    show which it is. When they contradict the guess, the guess is flipped for this solve."""
    if {ctx.src_layout, ctx.tgt_layout} != {"torch", "flax"}:
        return
    yes = no = 0
    for prob in problems:
        y, n = forced_transposes(generate(ctx, prob.src_ops, prob.tgt_ops), prob.src_ops)
        yes, no = yes + y, no + n
    if no > yes:
        notes.append(f"the source stores its linear weights like the target ({no} matrices need no transpose, "
                     f"{yes} do): layout prior flipped")
        ctx.src_layout = ctx.tgt_layout


FILL_MIN_COVERED = WEIGHTS.fill_min_covered  # heuristics.weights
# What models tie (one tensor read by two targets): token embeddings and output heads (logits), nothing else.
TIEABLE = frozenset({"embed", "logits"})


def _neutral_norm(op: Operand) -> bool:
    """A norm's scale (not its bias), one per cell: what a model without that learned scale multiplies by 1."""
    cs = concepts(op.local)
    return "norm" in cs and "bias" not in cs and not op.stacked_experts and len(op.shape) == 1


def _solve_problem(prob: Problem, ctx: Context, k_alternatives: int) -> None:
    prob.candidates = generate(ctx, prob.src_ops, prob.tgt_ops)
    apply_module_consistency(prob.candidates, prob.src_ops)
    apply_sibling_storage(prob.candidates, prob.src_ops, prob.tgt_ops)
    apply_module_coherence(prob.candidates, prob.src_ops, prob.tgt_ops)
    g = build_graph(len(prob.src_ops), len(prob.tgt_ops), prob.candidates)
    chosen: list[int] = []
    for s_ids, t_ids, c_ids in components(g):
        if not c_ids:
            continue
        am = build_model(prob.candidates, c_ids, t_ids, s_ids)
        ranked = solve_ranked(am, k=max(1, k_alternatives))
        if ranked:
            chosen.extend(ranked[0])
            prob.ranked.extend(ranked[1:])
    prob.chosen = sorted(chosen)


def _rule_for(prob: Problem, cand: Candidate, stack_factory) -> Rule:
    src_names = [prob.src_ops[i].local for i in cand.sources]
    tgt_names = [prob.tgt_ops[j].local for j in cand.targets]
    src_inst, tgt_inst = [], []
    for s_ops, t_ops in prob.instances:
        if any(n not in s_ops for n in src_names) or any(n not in t_ops for n in tgt_names):
            raise SolveError(f"template {prob.name}: an instance lacks {src_names} or {tgt_names}",
                             key=tgt_names[0])
        src_inst.append([s_ops[n] for n in src_names])
        tgt_inst.append([t_ops[n] for n in tgt_names])
    explain = {"template": prob.name, "score_parts": cand.parts}
    return build_rule(cand.chain, src_inst, tgt_inst, cand.score, explain, stack_factory)


def _units(struct: TreeStructure):
    yield from struct.globals
    for slot in struct.slots.values():
        yield from slot.units


def _stacks_layers(struct: TreeStructure) -> bool:
    """Whether a tree stores layers stacked in one tensor (scanned)."""
    return any(u.inner for u in _units(struct))


def _splits_experts(struct: TreeStructure) -> bool:
    """Whether a tree keeps one tensor per expert."""
    return any(u.expert is not None for u in _units(struct))


def _solve_other_way(src: ParamTree, tgt: ParamTree, s_struct, t_struct, **kw) -> SolveResult:
    """Solve tgt -> src and derive src -> tgt from it, alternatives included."""
    priors = kw.pop("priors")
    if priors is not None and hasattr(priors, "reversed"):
        priors = priors.reversed()
    flipped = _solve(tgt, src, t_struct, s_struct, priors=priors, **kw)
    kept = flipped.mapping.reversed_rules()
    rules = [r for _, r in kept]
    alternatives = {j: [a.reversed() for a in flipped.alternatives[i]]
                    for j, (i, _) in enumerate(kept) if i in flipped.alternatives}
    produced = {n for r in rules for n in r.target_names()}
    read = {n for r in rules for n in r.source_names()}
    unmapped, computed = split_computed(tgt, [n for n in tgt.names() if n not in produced])
    meta = {k: v for k, v in flipped.mapping.meta.items() if k != "computed_buffers"}
    mapping = Mapping(rules=rules, source=src.origin, target=tgt.origin, unmapped_targets=unmapped,
                      unused_sources={n: "no target reads it" for n in src.names() if n not in read},
                      meta=dict(meta, solved_reversed=True, **({"computed_buffers": computed} if computed else {})))
    notes = flipped.notes + ["solved target -> source (the stacked side as target) and reversed"]
    return SolveResult(mapping=mapping, alternatives=alternatives, problems=flipped.problems, notes=notes,
                       seconds=flipped.seconds)


def solve(src: ParamTree, tgt: ParamTree, *, priors=None, k_alternatives: int = 3, dims: dict | None = None,
          search=None) -> SolveResult:
    """Map every parameter of `tgt` from `src` by structure, names and shapes. Value ops are left to verify.

    Rules are built with the finer-grained side (per-layer, per-expert, torch-style tensors) as the source and the
    stacked side (scanned layers, experts in one tensor, flax-style kernels) as the target; when `src` is the
    stacked one, the mapping is solved the other way and reversed (derived, as Mapping.reversed does).
    """
    s_struct, t_struct = analyse(src), analyse(tgt)
    kw = dict(priors=priors, k_alternatives=k_alternatives, dims=dims, search=search)
    flax_to_torch = tree_layout(src) == "flax" and tree_layout(tgt) == "torch"
    if (_stacks_layers(s_struct) and not _stacks_layers(t_struct)) or flax_to_torch \
            or (_splits_experts(t_struct) and not _splits_experts(s_struct)):
        return _solve_other_way(src, tgt, s_struct, t_struct, **kw)
    return _solve(src, tgt, s_struct, t_struct, **kw)


def _solve(src: ParamTree, tgt: ParamTree, s_struct: TreeStructure, t_struct: TreeStructure, *, priors,
           k_alternatives: int, dims: dict | None, search) -> SolveResult:
    t0 = time.perf_counter()
    notes: list[str] = []
    if dims is None:
        dims = merge_dims(src.meta.get("dims") or {}, tgt.meta.get("dims") or {})
    ctx = Context(search=search or search_chains, dims=dims,
                  src_layout=tree_layout(src), tgt_layout=tree_layout(tgt),
                  prior=(priors.edge_bonus if priors is not None and not getattr(priors, "is_empty", False)
                         else None),
                  src_code_layouts=dict(src.meta.get("code_layouts") or {}),
                  tgt_code_layouts=dict(tgt.meta.get("code_layouts") or {}))
    problems = _problems(s_struct, t_struct, notes)
    _calibrate_layout(ctx, problems, notes)

    rules: list[Rule] = []
    alternatives: dict[int, list[Rule]] = {}
    covered_targets: set[str] = set()
    used_sources: set[str] = set()

    def stack_factory(n: int):
        return Stack(0, n)

    for prob in problems:
        _solve_problem(prob, ctx, k_alternatives)
        for k in prob.chosen:
            cand = prob.candidates[k]
            try:
                rule = _rule_for(prob, cand, stack_factory)
            except SolveError as e:
                notes.append(e.one_line())
                continue
            rules.append(rule)
            covered_targets.update(rule.target_names())
            used_sources.update(rule.source_names())
            alts = []
            others = sorted((c for c in prob.candidates if c is not cand and set(c.targets) == set(cand.targets)),
                            key=lambda c: -c.score)
            for other in others[:k_alternatives]:
                try:
                    alts.append(_rule_for(prob, other, stack_factory))
                except SolveError:
                    continue
            if alts:
                alternatives[len(rules) - 1] = alts

    def add_extra(prob: Problem, cand: Candidate, why: str) -> Rule | None:
        """A rule for a target the assignment left uncovered, marked `why` in its explain; None if it cannot."""
        try:
            rule = _rule_for(prob, cand, stack_factory)
        except SolveError:
            return None
        rule.explain[why] = True
        rules.append(rule)
        covered_targets.update(rule.target_names())
        used_sources.update(rule.source_names())
        return rule

    # Shared sources on purpose: a target still uncovered may read a source already used (tied embeddings),
    # when its best candidate is convincing by name.
    for prob in problems:
        uncovered = [j for j, op in enumerate(prob.tgt_ops)
                     if not any(u.tensor in covered_targets for u in op.units)]
        for j in uncovered:
            if not TIEABLE & set(concepts(prob.tgt_ops[j].local)):
                continue  # only embeddings and output heads are tied; anything else without a source stays unmapped
            best = max((c for c in prob.candidates if c.targets == (j,)
                        and all(TIEABLE & set(concepts(prob.src_ops[i].local)) for i in c.sources)),
                       key=lambda c: c.score, default=None)
            if best is None or best.parts.get("name", 0) < WEIGHTS.shared_source_min_name:
                continue
            rule = add_extra(prob, best, "shared_source")
            if rule is not None:
                notes.append(f"{rule.target_names()[0]} shares its source {rule.source_names()[0]} with another "
                             "target")

    # A norm no source explains (the source model does not learn that scale): its neutral scale, ones; only in a
    # layer (or the globals) whose other targets the source does explain, mostly.
    for prob in problems:
        covered = [any(u.tensor in covered_targets for u in op.units) for op in prob.tgt_ops]
        if sum(covered) < FILL_MIN_COVERED * len(prob.tgt_ops):
            continue
        # a source norm of the same shape left unused would be a better explanation: then report, do not fill
        spare = {o.shape for o in prob.src_ops if "norm" in concepts(o.local)
                 and not any(u.tensor in used_sources for u in o.units)}
        for j, op in enumerate(prob.tgt_ops):
            if covered[j] or not _neutral_norm(op) or op.shape in spare:
                continue
            cand = Candidate((), (j,), Fill(tuple(op.shape), 1.0), 0.0, {"fill": "no source: a norm's neutral scale"})
            rule = add_extra(prob, cand, "filled")
            if rule is not None:
                notes.append(f"{rule.target_names()[0]}: no source tensor; filled with ones (a norm's neutral scale)")

    unmapped, computed = split_computed(tgt, [n for n in tgt.names() if n not in covered_targets])
    notes += [f"{n}: a computed buffer (the model derives it from its config; no checkpoint needs it)"
              for n in computed]
    unused = {n: "no target reads it" for n in src.names() if n not in used_sources}
    mapping = Mapping(rules=rules, source=src.origin, target=tgt.origin, unmapped_targets=unmapped,
                      unused_sources=unused, meta={"solver": "ckptmap.cpsat", "dims": dims,
                                                   **({"computed_buffers": computed} if computed else {}),
                                                   "layouts": [ctx.src_layout, ctx.tgt_layout]})
    return SolveResult(mapping=mapping, alternatives=alternatives, problems=problems, notes=notes,
                       seconds=time.perf_counter() - t0)
