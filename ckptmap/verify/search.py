"""Value-op search: finish a structural mapping with the value ops (and structural choices) that make the
converted model compute what the source computes.

Greedy by localised stage, in forward order: run the target, find the first stage that diverges (embed, then
layer 0, ...), and try only the rules feeding that stage. Each rule gets one decision that applies to all of its
cells, and is copied to the rules that share its name templates. Moves tried per step:
1. one rule's full choice (structural variant x value options of its targets), a joint value choice over the
   stage (the same RoPE layout on every q and k, the same offset on every norm), or swapping the sources of two
   same-shaped rules;
2. only when no move of (1) helps: a joint choice combined with one rule's full choice.
The move with the lowest error at that stage is kept if it lowers it. Every move tried is recorded with the
stage error and the logits' max KL.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace

from ckptmap.mapping import Mapping, Rule
from ckptmap.transforms.value_kinds import VALUE_KINDS, VALUE_SLOTS
from ckptmap.trees.model import name_tokens
from ckptmap.verify.candidates import RuleChoice, RuleSpace, structural_variants, value_options
from ckptmap.verify.evaluate import Evaluation, Evaluator
from ckptmap.verify.localise import first_divergence, rules_in_stage

MAX_COMBOS_PER_RULE = 96


@dataclass
class Trial:
    """One candidate evaluated: at which step and stage, what it changed, and how it scored."""

    step: int
    stage: str
    move: str
    rules: list[int]
    stage_error: float
    kl_max: float
    accepted: bool = False
    error: str = ""

    def to_json(self) -> dict:
        d = {"step": self.step, "stage": self.stage, "move": self.move, "rules": self.rules,
             "stage_error": _num(self.stage_error), "kl_max": _num(self.kl_max), "accepted": self.accepted}
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class Decision:
    """What the search settled for one rule (only rules it changed)."""

    rule: int
    targets: list[str]
    choice: str
    step: int

    def to_json(self) -> dict:
        return {"rule": self.rule, "targets": self.targets, "choice": self.choice, "step": self.step}


@dataclass
class SearchResult:
    mapping: Mapping
    trials: list[Trial] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    final: Evaluation | None = None
    stuck_stage: str | None = None
    seconds: float = 0.0


def _num(x: float):
    x = float(x)
    return x if x == x and abs(x) != float("inf") else str(x)


_LAYER_INDEX = re.compile(r"(?<=[._/-])(layers|layer|h|blocks|block)([._/-]|_)(\d+)(?=[._/-]|$)")


def layer_template(name: str) -> str:
    """`name` with its layer index replaced: model.layers.3.mlp.up_proj -> model.layers.{i}.mlp.up_proj
    (other indices, like MaxText's wi_0 / wi_1, stay: they name different tensors)."""
    return _LAYER_INDEX.sub(lambda m: f"{m.group(1)}{m.group(2)}{{i}}", "." + name)[1:]


def _template_key(rule: Rule) -> tuple:
    return (tuple(layer_template(s.names()[0]) for s in rule.sources),
            tuple(layer_template(t.names()[0]) for t in rule.targets))


def _short(name: str) -> str:
    """A short display name: the last module tokens, layer index replaced."""
    tokens = [t for t in name_tokens(layer_template(name))
              if t not in ("params", "model", "weight", "kernel", "decoder", "")]
    return ".".join(tokens[-3:]) or name


class Search:
    """The state of one search: the current choice per rule, the candidate spaces, and the log."""

    def __init__(self, mapping: Mapping, evaluator: Evaluator, *, alternatives: dict[int, list[Rule]] | None = None,
                 dims: dict | None = None, tolerance: float = 1e-3, kl_threshold: float = 1e-7, priors=None,
                 pass_mark=None):
        self.priors = priors if priors is not None and not getattr(priors, "is_empty", True) else None
        self.base = mapping
        self.ev = evaluator
        self.alternatives = alternatives or {}
        self.dims = dict(dims or {})
        self.tolerance = tolerance
        self.kl_threshold = kl_threshold
        # evaluation -> its pass mark (api.PassMark: higher where a tied bf16 cast stays in the logits)
        self.pass_mark = pass_mark
        self.state: list[RuleChoice] = [RuleChoice(structural=r, values=tuple(() for _ in r.targets))
                                        for r in mapping.rules]
        self.spaces: dict[int, RuleSpace] = {}
        self.templates = [_template_key(r) for r in mapping.rules]
        self.trials: list[Trial] = []
        self.decisions: dict[int, Decision] = {}
        self._memo: dict[tuple, Evaluation] = {}

    # ---- candidate spaces ----------------------------------------------------------------------------------
    def _cell_shapes(self, rule: Rule) -> tuple[tuple, tuple] | None:
        cell = tuple(0 for _ in rule.grid)
        src = []
        for s in rule.sources:
            if s.name_at(cell) not in self.ev.src_params:
                return None
            shape = list(self.ev.source_shape(s.name_at(cell)))
            for axis in sorted(s.axes, reverse=True):
                del shape[axis]
            src.append(tuple(shape))
        try:
            tgt = rule.chain.shape(tuple(src))
        except Exception:
            return None
        return tuple(src), tuple(tuple(t) for t in tgt)

    def space(self, i: int) -> RuleSpace:
        if i not in self.spaces:
            rule = self.base.rules[i]
            shapes = self._cell_shapes(rule)
            tgt_shapes = list(shapes[1]) if shapes else []
            variants = structural_variants(rule, self.alternatives.get(i, []), tgt_shapes)
            srcs = rule.source_names()
            options = [value_options(t.names()[0], srcs, tgt_shapes[j], self.dims) if shapes else {}
                       for j, t in enumerate(rule.targets)]
            self.spaces[i] = RuleSpace(index=i, variants=variants, options=options, template=self.templates[i],
                                       cell_shapes=tuple(tgt_shapes))
        return self.spaces[i]

    # ---- mapping under a state -----------------------------------------------------------------------------
    def mapping(self, overrides: dict[int, RuleChoice] | None = None) -> Mapping:
        overrides = overrides or {}
        rules = [overrides.get(i, c).rule() for i, c in enumerate(self.state)]
        return replace(self.base, rules=rules, meta=dict(self.base.meta))

    def _with_mates(self, i: int, choice: RuleChoice) -> dict[int, RuleChoice]:
        """The move for rule i, with its value choice copied to rules of the same templates and shapes."""
        move = {i: choice}
        for m, key in enumerate(self.templates):
            if m == i or key != self.templates[i] or self.space(m).cell_shapes != self.space(i).cell_shapes:
                continue
            mate = self.state[m]
            for j in range(len(mate.structural.targets)):
                for kind in VALUE_SLOTS:
                    mate = mate.with_value(j, kind, choice.value_of(j, kind))
            move[m] = mate
        return move

    # ---- moves ---------------------------------------------------------------------------------------------
    def _single_moves(self, rules: list[int], *, values_only: bool = False) -> list[tuple[str, dict[int, RuleChoice]]]:
        """Every full choice of one rule; `values_only` keeps each rule's current structural variant."""
        moves = []
        for i in rules:
            sp = self.space(i)
            current = self.state[i]
            combos = sp.value_choices()[:MAX_COMBOS_PER_RULE]
            name = _short(self.base.rules[i].targets[0].names()[0])
            variants = range(len(sp.variants))
            if values_only:
                variants = [v for v in variants if sp.variants[v][1] == current.structural][:1]
            for v in variants:
                for combo in combos:
                    choice = sp.choice(v, combo)
                    if choice.rule() == current.rule():
                        continue
                    moves.append((f"{name}: {choice.describe()}", self._with_mates(i, choice)))
        return moves

    def _joint_moves(self, rules: list[int]) -> list[tuple[str, dict[int, RuleChoice]]]:
        moves = []
        for kind in ("rope", "offset"):
            keys: dict[str, list[tuple[int, int, object]]] = {}
            holders = []
            for i in rules:
                for j, kinds in enumerate(self.space(i).options):
                    for opt in kinds.get(kind, []):
                        keys.setdefault(opt.key, []).append((i, j, opt))
                    if kind in kinds:
                        holders.append((i, j))
            if len({i for i, _ in holders}) < 2:
                continue
            for key, members in keys.items():
                move: dict[int, RuleChoice] = {}
                for i, j, opt in members:
                    move[i] = move.get(i, self.state[i]).with_value(j, kind, opt)
                if all(c == self.state[i] for i, c in move.items()):
                    continue
                moves.append((f"{kind} '{members[0][2].label}' on all {len({i for i, _, _ in members})} rules "
                              f"of the stage", self._expand(move)))
            if any(self.state[i].value_of(j, kind) for i, j in holders):
                move = {}
                for i, j in holders:
                    move[i] = move.get(i, self.state[i]).with_value(j, kind, None)
                moves.append((f"no {kind} anywhere in the stage", self._expand(move)))
        return moves

    def _expand(self, move: dict[int, RuleChoice]) -> dict[int, RuleChoice]:
        out = dict(move)
        for i, c in move.items():
            for m, mc in self._with_mates(i, c).items():
                out.setdefault(m, mc)
        return out

    def _swap_moves(self, rules: list[int]) -> list[tuple[str, dict[int, RuleChoice]]]:
        moves = []
        for a_pos, a in enumerate(rules):
            for b in rules[a_pos + 1:]:
                ra, rb = self.state[a].structural, self.state[b].structural
                if ra.grid != rb.grid or len(ra.sources) != len(rb.sources) or ra.sources == rb.sources:
                    continue
                if self.space(a).cell_shapes != self.space(b).cell_shapes or not self.space(a).cell_shapes:
                    continue
                sa, sb = self._cell_shapes(ra), self._cell_shapes(rb)
                if sa is None or sb is None or sa[0] != sb[0]:
                    continue
                na = replace(self.state[a], structural=replace(ra, sources=rb.sources),
                             structure=f"sources of rule {b}")
                nb = replace(self.state[b], structural=replace(rb, sources=ra.sources),
                             structure=f"sources of rule {a}")
                moves.append((f"swap the sources of {_short(ra.target_names()[0])} and "
                              f"{_short(rb.target_names()[0])}", {a: na, b: nb}))
        return moves

    # ---- LLM priors: one move tried first, kept only if it passes ---------------------------------------------
    def _hinted_moves(self) -> list[tuple[str, dict[int, RuleChoice]]]:
        """The value ops the priors name for each target (confidence >= 0.5), applied to every rule at once; one
        move per RoPE mode since a hint does not say which way. The forward pass still decides."""
        moves = []
        for rope_mode in (0, 1):
            move: dict[int, RuleChoice] = {}
            for i, rule in enumerate(self.base.rules):
                for j, slot in enumerate(rule.targets):
                    options = self.space(i).options[j] if j < len(self.space(i).options) else {}
                    for hint, conf in self.priors.value_ops(slot.names()[0]):
                        kind = VALUE_KINDS.get(hint)
                        if conf < 0.5 or kind is None or kind.slot is None:
                            continue
                        opts = options.get(kind.slot, [])
                        if kind.hinted is None:  # a hint cannot say which variant (RoPE mode): one move per variant
                            modes = sorted({o.key.split(":")[1] for o in opts})
                            opts = [o for o in opts if modes and o.key.split(":")[1] == modes[rope_mode % len(modes)]]
                        else:
                            opts = [o for o in opts if o.key == kind.hinted]
                        if opts:
                            move[i] = move.get(i, self.state[i]).with_value(j, kind.slot, opts[0])
            if move and move not in [m for _, m in moves]:
                moves.append((f"LLM priors (rope mode {rope_mode + 1})", move))
        return moves

    def _try_priors(self) -> Evaluation | None:
        """Accept the hinted move only when it makes the whole mapping pass; otherwise it is one recorded trial."""
        for label, move in self._hinted_moves():
            ev = self._evaluate(self.mapping(move))
            trial = Trial(0, "logits", label, sorted(move), ev.stage_error("logits"), ev.kl_max, error=ev.error)
            self.trials.append(trial)
            if self._passes(ev):
                self._accept(0, trial, move)
                return ev
        return None

    # ---- the loop ------------------------------------------------------------------------------------------
    def _passes(self, ev: Evaluation) -> bool:
        mark = self.pass_mark(ev) if self.pass_mark is not None else self.kl_threshold
        return ev.ok and ev.kl_max <= mark

    def _evaluate(self, mapping: Mapping) -> Evaluation:
        """Evaluate, remembering results by the rules' content (different moves often build the same mapping)."""
        key = tuple(json.dumps({k: v for k, v in r.to_json().items() if k != "explain"}, sort_keys=True)
                    for r in mapping.rules)
        if key not in self._memo:
            self._memo[key] = self.ev.evaluate(mapping)
        return self._memo[key]

    def _score(self, step: int, stage: str, label: str, move: dict[int, RuleChoice]) -> tuple[float, float, Trial]:
        ev = self._evaluate(self.mapping(move))
        trial = Trial(step, stage, label, sorted(move), ev.stage_error(stage), ev.kl_max, error=ev.error)
        self.trials.append(trial)
        return ev.stage_error(stage), ev.kl_max, trial

    def _cost(self, move: dict[int, RuleChoice]) -> float:
        return sum(c.rule().chain.cost for c in move.values())

    def _best(self, step: int, stage: str, moves) -> tuple[float, float, Trial, dict] | None:
        """The move with the lowest stage error; errors equal up to round-off go to the cheaper chains."""
        best = None
        for label, move in moves:
            err, kl, trial = self._score(step, stage, label, move)
            if best is None:
                best = (err, kl, trial, move)
                continue
            tie = abs(err - best[0]) <= 1e-9 + 1e-6 * min(err, best[0])
            if (tie and self._cost(move) < self._cost(best[3])) or (not tie and (err, kl) < (best[0], best[1])):
                best = (err, kl, trial, move)
        return best

    def _accept(self, step: int, trial: Trial, move: dict[int, RuleChoice]) -> None:
        trial.accepted = True
        for i, c in move.items():
            self.state[i] = c
            self.decisions[i] = Decision(i, self.base.rules[i].target_names()[:4], c.describe(), step)

    def run(self, *, max_steps: int = 40, first_stage_only: bool = False) -> SearchResult:
        """Search until the KL threshold is met, the localised stage cannot be improved, or max_steps."""
        t0 = time.perf_counter()
        current = self._evaluate(self.mapping())
        first_stage = None
        stuck = None
        if not current.ok:  # the given mapping cannot even be applied (a missing target): nothing to search
            max_steps = 0
            stuck = "convert"
        elif self.priors is not None and not self._passes(current):
            current = self._try_priors() or current
        for step in range(1, max_steps + 1):
            if self._passes(current):
                break
            stage = first_divergence(current.errors, self.tolerance) if current.ok else "logits"
            stage = stage or "logits"
            if first_stage_only and first_stage is not None and stage != first_stage:
                break
            first_stage = first_stage or stage
            # rules the forward passes cannot test (a tower the source model does not build or read) are no
            # candidates: nothing they change can repair a stage
            rules = [i for i in rules_in_stage(self.base, stage, list(current.errors))
                     if self.ev.rule_status(self.base.rules[i]) is None]
            cur_err = current.stage_error(stage)
            phase1 = self._joint_moves(rules) + self._single_moves(rules) + self._swap_moves(rules)
            best = self._best(step, stage, phase1)
            if best is None or not best[0] < cur_err * 0.98:
                joints = self._joint_moves(rules)
                singles = self._single_moves(rules, values_only=True)
                phase2 = []
                for jl, jm in joints:
                    for sl, sm in singles:
                        merged = dict(jm)
                        merged.update(sm)
                        phase2.append((f"{jl} + {sl}", merged))
                best2 = self._best(step, stage, phase2)
                if best2 is not None and (best is None or best2[:2] < best[:2]):
                    best = best2
            if best is None or not best[0] < cur_err * 0.98:
                stuck = stage
                break
            self._accept(step, best[2], best[3])
            current = self._evaluate(self.mapping())
        decisions = sorted(self.decisions.values(), key=lambda d: d.rule)
        mapping = self.mapping()
        mapping.meta = dict(mapping.meta, verify={"decisions": [d.to_json() for d in decisions]})
        return SearchResult(mapping=mapping, trials=self.trials, decisions=decisions, final=current,
                            stuck_stage=stuck, seconds=time.perf_counter() - t0)
