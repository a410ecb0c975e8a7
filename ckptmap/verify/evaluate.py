"""One verification run: seeded random source parameters, converted through a Mapping, both models run, compared.

`Evaluator(src_runner, tgt_runner, seed=, seq_len=)` draws the source parameters and runs the source model once;
`evaluate(mapping)` converts, runs the target and returns an `Evaluation` (logit stats + per-stage errors).
Used by `verify_mapping` (once) and by the search (once per candidate).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ckptmap.apply import apply_to_dict
from ckptmap.errors import CkptmapError, MappingError
from ckptmap.mapping import Mapping
from ckptmap.runner import Forward
from ckptmap.verify.hf_runner import VerifyError
from ckptmap.verify.localise import stage_errors
from ckptmap.verify.metrics import LogitStats, compare_logits
from ckptmap.verify.tied_cast import cast_effect
from ckptmap.verify.weights import random_params, random_tensor, random_tokens


@dataclass
class Evaluation:
    """The target model's forward pass under one mapping, compared with the source's."""

    stats: LogitStats | None
    errors: dict[str, float] = field(default_factory=dict)
    forward: Forward | None = None
    error: str = ""  # why the target could not run (a chain that does not fit, a missing tensor)
    unchecked: dict[str, str] = field(default_factory=dict)  # target -> why this forward pass does not test it
    # MaxText's bf16 cast of a tied table (ckptmap.verify.tied_cast): `raw_stats` compare the logits as the models
    # gave them, `stats` with the cast taken out where it could be; `cast` its measured effect on the target;
    # `cast_kept`: a cast off the bf16 grid remains in `stats` (the pass mark must allow for it)
    raw_stats: LogitStats | None = None
    cast: object | None = None
    cast_kept: bool = False
    # () -> the source model's own float32 round-off on these inputs (Evaluator.roundoff_floor), or None
    roundoff: object | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.stats is not None

    @property
    def kl_max(self) -> float:
        return self.stats.kl_max if self.stats else float("inf")

    def stage_error(self, stage: str) -> float:
        if not self.ok:
            return float("inf")
        if stage in self.errors:
            return self.errors[stage]
        return self.errors.get("logits", float("inf"))


def index_ranges(runner) -> dict[str, int]:
    """Integer tensors of the runner -> the range of valid values verify fills them from: expert ids [0, experts)
    where the model has experts (hash-routing tables: `tid2eid`), else [0, the row length) (a permutation)."""
    find = getattr(runner, "integer_params", None)
    if not callable(find):
        return {}
    shapes = runner.param_shapes()
    experts = int((runner.dims() if hasattr(runner, "dims") else {}).get("experts") or 0)
    out = {}
    for name in find():
        shape = tuple(shapes.get(name, ()))
        out[name] = experts if experts > 1 else (shape[-1] if shape else 1)
    return out


def _tied_head(runner):
    """The runner's tied head that casts its table to bf16 (MaxTextRunner.tied_head), or None."""
    find = getattr(runner, "tied_head", None)
    if not callable(find):
        return None
    try:
        return find()
    except Exception:  # noqa: BLE001 - without it the cast simply stays in the logits
        return None


def uncast_logits(head, params: dict[str, np.ndarray], fwd: Forward) -> tuple[np.ndarray, object | None, bool]:
    """(the logits to compare, the cast's measured effect, whether a cast off the bf16 grid remains in them)."""
    if head is None:
        return fwd.logits, None, False
    effect = cast_effect(head, params, fwd.logits, fwd.activations)
    if effect is None:
        return fwd.logits, None, True
    if effect.exact_logits is not None:
        return effect.exact_logits, effect, False
    return fwd.logits, effect, not effect.on_grid


def runner_vocab(runner) -> int | None:
    v = getattr(runner, "vocab", None)
    if v:
        return int(v)
    dims = runner.dims() if hasattr(runner, "dims") else {}
    return int(dims["vocab"]) if dims.get("vocab") else None


class Evaluator:
    """Holds the source parameters, tokens and reference forward pass; evaluates mappings on the target."""

    def __init__(self, src_runner, tgt_runner, *, seed: int = 0, seq_len: int = 64, batch: int = 1,
                 positions: np.ndarray | None = None):
        self.src_runner, self.tgt_runner = src_runner, tgt_runner
        self.seed = seed
        self.timings = {"source_forward_s": 0.0, "target_forward_s": 0.0, "convert_s": 0.0}
        self.forwards = 0
        aliases = dict(getattr(src_runner, "aliases", {}) or {})
        scales = src_runner.init_scales() if hasattr(src_runner, "init_scales") else None
        self.src_head, self.tgt_head = _tied_head(src_runner), _tied_head(tgt_runner)
        # tied tables from bf16-representable values: where the mapping copies them, MaxText's cast is exact
        grid = set(aliases.values()) | ({self.src_head.table} if self.src_head else set())
        self.src_params = random_params(src_runner.param_shapes(), seed, aliases, scales, bf16_names=grid,
                                        integer=index_ranges(src_runner))
        vocabs = [v for v in (runner_vocab(src_runner), runner_vocab(tgt_runner)) if v]
        if not vocabs:
            raise VerifyError("neither model says its vocab size")
        self.tokens = random_tokens(min(vocabs), seq_len, batch, seed)
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int32)
        self._run_reference()
        self.target_shapes = dict(tgt_runner.param_shapes())
        self.target_aliases = dict(getattr(tgt_runner, "aliases", {}) or {})
        self.unread_sources = self._unread_sources(aliases)

    def _run_reference(self) -> None:
        t = time.perf_counter()
        self.reference = self._forward(self.src_runner, self.src_params)
        self.timings["source_forward_s"] += time.perf_counter() - t
        self.reference_logits, self.source_cast, self.source_cast_kept = uncast_logits(
            self.src_head, self.src_params, self.reference)
        self._roundoff: list[float | None] = []  # filled on first use (roundoff_floor)

    def roundoff_floor(self) -> float | None:
        """Max per-token KL of the source model's float32 logits against the same model computed in float64, on
        this evaluator's weights and tokens: the model's own round-off, which no float32 target can be expected to
        beat (a tiny random model that amplifies round-off layer by layer sets it high). None where the source
        runner cannot run in float64 (`logits_float64`). One float64 source forward pass, on first call."""
        if not self._roundoff:
            run = getattr(self.src_runner, "logits_float64", None)
            floor = None
            if callable(run) and self.source_cast is None and not self.source_cast_kept:
                t = time.perf_counter()
                try:
                    exact = run(self.src_params, self.tokens,
                                None if self.positions is None else np.broadcast_to(self.positions, self.tokens.shape))
                    floor = compare_logits(exact, self.reference.logits).kl_max
                except Exception:  # noqa: BLE001 - a model without a float64 path keeps the fixed mark
                    floor = None
                self.timings["source_forward_s"] += time.perf_counter() - t
            self._roundoff.append(floor)
        return self._roundoff[0]

    def measured_roundoff(self) -> float | None:
        """roundoff_floor where a pass mark has already measured it, else None (measures nothing)."""
        return self._roundoff[0] if self._roundoff else None

    def _forward(self, runner, params: dict[str, np.ndarray]) -> Forward:
        if self.positions is None:
            return runner.forward(params, self.tokens)
        return runner.forward(params, self.tokens, np.broadcast_to(self.positions, self.tokens.shape))

    def at_length(self, seq_len: int) -> "Evaluator":
        """The same weights, run on `seq_len` other seeded tokens (positions 0..seq_len-1; a long context where RoPE
        scaling acts): one more source forward pass. Counts and timings go to this evaluator."""
        other = copy.copy(self)
        vocabs = [v for v in (runner_vocab(self.src_runner), runner_vocab(self.tgt_runner)) if v]
        other.tokens = random_tokens(min(vocabs), seq_len, self.tokens.shape[0], self.seed)
        other.positions = None
        other._run_reference()
        other.parent = self
        return other

    def _unread_sources(self, aliases: dict[str, str]) -> set[str]:
        """Source tensors the source model's forward pass does not read (a vision tower on a text-only pass), where
        the runner can tell (HFRunner.unread_params); a tied name is unread when the tensor it names is."""
        find = getattr(self.src_runner, "unread_params", None)
        self.unread_note = ""
        if not callable(find):
            return set()
        try:
            unread = set(find(self.src_params, self.tokens))
        except Exception as e:  # a backward pass some model code does not support: every source counts as read
            self.unread_note = f"could not tell which source tensors the forward pass reads: {type(e).__name__}: {e}"
            return set()
        return unread | {alias for alias, canonical in aliases.items() if canonical in unread}

    def rule_status(self, rule) -> tuple[str, str] | None:
        """Why the forward passes cannot test `rule`: ("missing", why) when the source model verify runs lacks one of
        its source tensors (a tower the runner does not build), ("unread", why) when the source forward reads none of
        them; None when it can be tested."""
        names = rule.source_names()
        missing = [n for n in names if n not in self.src_params]
        if missing:
            built = getattr(getattr(self.src_runner, "model_class", None), "__name__", "the source model")
            return "missing", f"sources not in the model verify runs ({built})"
        if names and all(n in self.unread_sources for n in names):
            return "unread", "sources not read by the source model's forward pass"
        return None

    def filler(self, name: str, seed_offset: int = 1) -> np.ndarray:
        """A seeded stand-in for a target tensor verify cannot produce from the source model (see rule_status)."""
        return random_tensor(name, tuple(self.target_shapes[name]), self.seed + 7919 * seed_offset)

    def source_shape(self, name: str) -> tuple[int, ...]:
        return tuple(np.shape(self.src_params[name]))

    def untested(self, mapping: Mapping) -> dict[str, tuple[str, str]]:
        """target name -> (kind, why) for the targets of the rules the forward passes cannot test (rule_status)."""
        out: dict[str, tuple[str, str]] = {}
        for rule in mapping.rules:
            status = self.rule_status(rule)
            if status:
                for name in rule.target_names():
                    out.setdefault(name, status)
        return out

    def convert(self, mapping: Mapping, *, with_unchecked: bool = False, filler_offset: int = 1):
        """Target name -> array for every target tensor of the target model; MappingError naming the first one
        the mapping does not produce or produces with the wrong shape. A rule whose source tensors the source model
        lacks is not applied: its targets get seeded stand-ins (`filler`). With `with_unchecked`, returns
        (arrays, {target: why the forward passes do not test it})."""
        t = time.perf_counter()
        skip = {i for i, r in enumerate(mapping.rules) if (self.rule_status(r) or ("",))[0] == "missing"}
        applied = replace(mapping, rules=[r for i, r in enumerate(mapping.rules) if i not in skip]) if skip else mapping
        out = apply_to_dict(applied, self.src_params)
        for rule in (mapping.rules[i] for i in sorted(skip)):
            for name in rule.target_names():
                if name in self.target_shapes and name not in out:
                    out[name] = self.filler(name, filler_offset)
        self.timings["convert_s"] += time.perf_counter() - t
        for alias, canonical in self.target_aliases.items():
            if canonical not in out and alias in out:
                out[canonical] = out[alias]
        missing = [n for n in self.target_shapes if n not in out]
        if missing:
            raise MappingError(f"the mapping does not produce this target tensor ({len(missing)} missing)",
                               key=missing[0])
        for name, shape in self.target_shapes.items():
            if tuple(np.shape(out[name])) != tuple(shape):
                raise MappingError(f"the mapping produces shape {tuple(np.shape(out[name]))}, the target model "
                                   f"expects {tuple(shape)}", key=name)
        params = {n: out[n] for n in self.target_shapes}
        if not with_unchecked:
            return params
        return params, {n: why for n, (_, why) in self.untested(mapping).items()}

    def evaluate(self, mapping: Mapping) -> Evaluation:
        """Convert, run the target, compare. A mapping that cannot be applied gives an Evaluation with `error`."""
        try:
            params, unchecked = self.convert(mapping, with_unchecked=True)
        except CkptmapError as e:
            return Evaluation(stats=None, error=e.one_line())
        t = time.perf_counter()
        try:
            fwd = self._forward(self.tgt_runner, params)
        except CkptmapError as e:
            return Evaluation(stats=None, error=e.one_line())
        finally:
            self.timings["target_forward_s"] += time.perf_counter() - t
            self.forwards += 1
            if getattr(self, "parent", None) is not None:
                self.parent.forwards += 1
        logits, cast, kept = uncast_logits(self.tgt_head, params, fwd)
        stats = compare_logits(self.reference_logits, logits)
        raw = compare_logits(self.reference.logits, fwd.logits)
        return Evaluation(stats=stats, errors=stage_errors(self.reference, fwd), forward=fwd, unchecked=unchecked,
                          raw_stats=raw, cast=cast, cast_kept=kept or self.source_cast_kept,
                          roundoff=self.roundoff_floor)

    def unchecked_read_by_target(self, mapping: Mapping, evaluation: Evaluation) -> float:
        """How much the target's logits move when every target `evaluation` did not check gets other values
        (max |logit diff|; 0.0 when the target's forward pass does not read them either, as it must not for the
        comparison to mean anything). One more target forward pass."""
        if not evaluation.ok or not evaluation.unchecked:
            return 0.0
        params = self.convert(mapping, filler_offset=2)
        for name in evaluation.unchecked:
            if name in params:
                params[name] = self.filler(name, 2)
        t = time.perf_counter()
        try:
            fwd = self._forward(self.tgt_runner, params)
        finally:
            self.timings["target_forward_s"] += time.perf_counter() - t
            self.forwards += 1
        v = min(fwd.logits.shape[-1], evaluation.forward.logits.shape[-1])
        return float(np.max(np.abs(fwd.logits[..., :v].astype(np.float64)
                                   - evaluation.forward.logits[..., :v].astype(np.float64))))
