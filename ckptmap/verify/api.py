"""verify's entry points: re-check a mapping, or search its value ops and verify the result.

    report = verify_mapping(mapping, src_runner, tgt_runner)
    mapping, report = search_and_verify(solve_result, src_runner, tgt_runner)

Runners implement ckptmap.runner.ModelRunner (see runners_for in specs.py to build them from SPECs).
"""

from __future__ import annotations

import time

import numpy as np

from ckptmap.errors import CkptmapError
from ckptmap.mapping import Mapping
from ckptmap.verify.config_diff import diff_runners
from ckptmap.verify.evaluate import Evaluation, Evaluator
from ckptmap.verify.localise import first_divergence, stage_targets
from ckptmap.verify.metrics import (LONG_RANGE_FALLBACK_TOKENS, LONG_RANGE_LOCALISED_FRACTION, LONG_RANGE_TOKENS,
                                    ROUNDOFF_FACTOR, ROUNDOFF_SMOOTH_MAX, activation_tolerance)
from ckptmap.verify.metrics import kl_threshold as default_kl_threshold
from ckptmap.verify.report import VerifyReport
from ckptmap.verify.search import Search


def merged_dims(mapping: Mapping, src_runner, tgt_runner, dims: dict | None = None) -> dict:
    """Config numbers for value-op expressions: given ones, then the source model's, the mapping's, the target's."""
    out: dict = dict(dims or {})
    for d in (src_runner.dims() if hasattr(src_runner, "dims") else {},
              (mapping.meta or {}).get("dims") or {},
              tgt_runner.dims() if hasattr(tgt_runner, "dims") else {}):
        for k, v in d.items():
            out.setdefault(k, v)
    return out


# Targets verify cannot check must not move the target's logits: max |logit diff| over max(1, max |logit|).
UNREAD_LOGIT_TOLERANCE = 1e-6


def _logit_scale(evaluation) -> float:
    fwd = evaluation.forward
    return float(np.max(np.abs(fwd.logits))) if fwd is not None and fwd.logits.size else 1.0


def _describe(runner) -> str:
    spec = getattr(runner, "spec", None)
    if spec:
        return spec
    if getattr(runner, "framework", "") == "maxtext":
        return f"maxtext:{runner.model_name}"
    cfg = getattr(runner, "config", None)
    return f"hf:{cfg.model_type}" if cfg is not None else type(runner).__name__


def _tied(runner) -> bool:
    if getattr(runner, "tied_logits", False):
        return True
    return bool(getattr(runner, "aliases", None))


def recurrent_layers(*runners) -> bool:
    """Whether the models have gated-delta-net (linear attention) layers, whose scans set a higher float32 floor:
    an HF config with `linear_attention` layer types, or a MaxText qwen3-next / qwen3.5 decoder."""
    for runner in runners:
        text = getattr(runner, "text_config", None)
        types = getattr(text, "layer_types", None) if text is not None else None
        if isinstance(types, (list, tuple)) and any("linear" in str(t) for t in types):
            return True
        find = getattr(runner, "function_config", None)
        if getattr(runner, "framework", "") == "maxtext" and callable(find):
            try:
                block = str(find().get("decoder_block", "")).split(".")[-1].lower()
            except Exception:  # noqa: BLE001
                block = ""
            if block in ("qwen3_next", "qwen3_5"):
                return True
    return False


class PassMark:
    """The pass mark of one evaluation: the given threshold, else the dtype's (the recurrent models' where they
    have gated-delta-net layers; `long` for the long sequence), raised to the tied-cast mark where MaxText's bf16
    cast of a tied table stays in the logits (Evaluation.cast_kept), and to metrics.ROUNDOFF_FACTOR x the source
    model's own float32 round-off where that is higher (Evaluation.roundoff, measured only when needed)."""

    def __init__(self, dtype: str, explicit: float | None = None, *, recurrent: bool = False):
        self.dtype, self.explicit, self.recurrent = dtype, explicit, recurrent

    def __call__(self, evaluation: Evaluation | None = None, *, long: bool = False) -> float:
        if self.explicit is not None:
            return self.explicit
        tied = bool(evaluation is not None and evaluation.cast_kept)
        mark = default_kl_threshold(self.dtype, tied_cast=tied, recurrent=self.recurrent, long=long)
        if evaluation is None or not evaluation.ok or evaluation.kl_max <= mark or not callable(evaluation.roundoff):
            return mark  # the model's own round-off is measured only where the fixed mark is not met
        return default_kl_threshold(self.dtype, tied_cast=tied, recurrent=self.recurrent, long=long,
                                    roundoff=evaluation.roundoff())


def _cast_note(evaluation: Evaluation, ev: Evaluator) -> str:
    """What MaxText's bf16 cast of a tied table did in this run, and what verify did about it."""
    effect = evaluation.cast or getattr(ev, "source_cast", None)
    side = "target" if evaluation.cast is not None else "source"
    if effect is None:
        if evaluation.cast_kept:
            return ("logits through a tied table MaxText casts to bf16: the cast could not be measured here, so it "
                    "stays in the logits and the tied-cast pass mark applies")
        return ""
    floor = f"on a table off the bf16 grid (a real checkpoint) the cast costs max KL {effect.floor_off_grid:.1e} here"
    if effect.on_grid:
        how = "verify's table is on the bf16 grid, so the cast is exact and the KL measures the mapping"
    elif effect.exact_logits is not None:
        how = (f"the mapping moves the table off the grid; the cast's effect (max KL {effect.floor:.1e}) is taken "
               f"out of the {side}'s logits, recomputed from its final-norm output (reproduced to "
               f"{effect.reproduction_error:.0e} relative), so the KL measures the mapping")
    else:
        how = (f"the cast's effect could not be taken out (recomputed logits off by {effect.reproduction_error:.0e}"
               f" relative), so it stays in the logits (max KL {effect.floor:.1e}) and the tied-cast pass mark "
               f"applies")
    return f"tied embedding: MaxText casts the table to bf16 on the logits path; {floor}; {how}"


def _long_range(ev: Evaluator, mapping: Mapping, mark: PassMark) -> dict:
    """The mapping once more on a long sequence (metrics.LONG_RANGE_TOKENS), where RoPE scaling and theta act on
    long distances: {"tokens", "kl_max", "kl_mean", "top1_agreement", "max_abs_diff", "kl_threshold", "passed",
    "roundoff"?, "tokens_over"?, "first_divergence"?, "error"?, "not_reproducible"?}. Where it fails by a selection
    that flipped, the check runs at the next of metrics.LONG_RANGE_FALLBACK_TOKENS instead, which must pass: a flip
    is the source model itself not reproducible in float32 there (its own round-off above ROUNDOFF_SMOOTH_MAX, the
    target no further off than ROUNDOFF_FACTOR x that), or a failure on at most LONG_RANGE_LOCALISED_FRACTION of the
    tokens. The lengths given up are listed under "not_reproducible" ({"tokens", "kl_max", "roundoff",
    "tokens_over", "why"})."""
    given_up: list[dict] = []
    out: dict = {}
    for tokens in (LONG_RANGE_TOKENS, *LONG_RANGE_FALLBACK_TOKENS):
        out = _at_length(ev, mapping, mark, tokens)
        if given_up:
            out["not_reproducible"] = list(given_up)
        roundoff = out.get("roundoff") or 0.0
        unreproducible = ROUNDOFF_SMOOTH_MAX < roundoff and out.get("kl_max", 0.0) <= ROUNDOFF_FACTOR * roundoff
        localised = out.get("tokens_over", tokens) <= LONG_RANGE_LOCALISED_FRACTION * tokens
        if out.get("passed") or "kl_max" not in out or not (unreproducible or localised):
            return out
        given_up.append({"tokens": tokens, "kl_max": out["kl_max"], "roundoff": roundoff,
                         "tokens_over": out.get("tokens_over"),
                         "why": "source not reproducible in float32" if unreproducible else "localised"})
    out["error"] = ("the source model is not reproducible in float32 at any long length tried (its own round-off "
                    f"above {ROUNDOFF_SMOOTH_MAX:g})")
    return out


def _at_length(ev: Evaluator, mapping: Mapping, mark: PassMark, tokens: int) -> dict:
    """One long check at `tokens` tokens (see _long_range); a failing one measures the source's own round-off."""
    out: dict = {"tokens": tokens}
    try:
        long_ev = ev.at_length(tokens)
        evaluation = long_ev.evaluate(mapping)
    except CkptmapError as e:
        return {**out, "error": e.one_line(), "passed": False}
    except Exception as e:  # noqa: BLE001 - a model that cannot run this long is not verified there: say so
        return {**out, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}", "passed": False}
    threshold = mark(evaluation, long=True)
    out["kl_threshold"] = threshold
    if not evaluation.ok:
        return {**out, "error": evaluation.error, "passed": False}
    s = evaluation.stats
    out.update(kl_max=s.kl_max, kl_mean=s.kl_mean, top1_agreement=s.top1_agreement, max_abs_diff=s.max_abs_diff,
               passed=s.kl_max <= threshold)
    if not out["passed"]:
        long_ev.roundoff_floor()
        out["tokens_over"] = s.tokens_over(threshold)
    if long_ev.measured_roundoff() is not None:
        out["roundoff"] = long_ev.measured_roundoff()
    first = first_divergence(evaluation.errors, activation_tolerance("float32"))
    if first:
        out["first_divergence"] = first
    return out


def _report(ev: Evaluator, final: Evaluation, mapping: Mapping, *, dtype: str, mark: PassMark, tol: float,
            src_runner, tgt_runner, t0: float, long_range: bool = True) -> VerifyReport:
    threshold = mark(final)
    passed = final.ok and final.kl_max <= threshold
    unchecked = dict(final.unchecked) if final.ok else {}
    moved = ev.unchecked_read_by_target(mapping, final) if unchecked else None
    read_anyway = moved is not None and moved > UNREAD_LOGIT_TOLERANCE * max(1.0, _logit_scale(final))
    passed = passed and not read_anyway
    first = first_divergence(final.errors, tol) if final.ok else None
    report = VerifyReport(
        passed=passed, dtype=dtype, kl_threshold=threshold, tolerance=tol, logits=final.stats,
        stages=dict(final.errors), first_divergence=first,
        suspects=stage_targets(mapping, first, list(final.errors)) if (first and not passed) else [],
        source=_describe(src_runner), target=_describe(tgt_runner), seed=ev.seed,
        tokens=int(ev.tokens.size), forwards=ev.forwards, error=final.error, unchecked=unchecked,
        unchecked_logit_change=moved)
    if final.raw_stats is not None and final.cast is not None:
        report.raw_logits = final.raw_stats
        report.tied_cast = final.cast.to_json()
    if read_anyway:
        report.error = (f"the target model's forward pass reads {len(unchecked)} tensors the forward passes cannot "
                        f"check (their sources are not read by, or not in, the source model): its logits move by "
                        f"{moved:.2g} when they change")
    if getattr(ev, "unread_note", ""):
        report.notes.append(ev.unread_note)
    if passed and long_range:
        report.long_range = lr = _long_range(ev, mapping, mark)
        report.forwards = ev.forwards
        if not lr.get("passed"):
            report.passed = passed = False
            what = (f"max KL {lr['kl_max']:.2e} > {lr['kl_threshold']:.0e}" if "kl_max" in lr
                    else lr.get("error") or "it could not run")
            report.notes.append(f"passes on {ev.tokens.shape[1]} tokens but fails on {lr['tokens']}: {what} (RoPE "
                                f"scaling and theta act on long distances)")
    seq = max(int(ev.tokens.shape[1]), int((report.long_range or {}).get("tokens") or 0))
    report.config_diff = diff_runners(src_runner, tgt_runner, seq_len=seq)
    report.timings = {**ev.timings, "total_s": time.perf_counter() - t0}
    start = (getattr(tgt_runner, "timings", None) or {}).get("start_s")
    if start:
        report.timings["target_start_s"] = start
    floors = [(n, f) for n, f in ((int(ev.tokens.shape[1]), ev.measured_roundoff()),
                                  ((report.long_range or {}).get("tokens"), (report.long_range or {}).get("roundoff")))
              if f is not None]
    for gone in (report.long_range or {}).get("not_reproducible", []):
        if gone["why"] == "localised":
            why = (f"only {gone['tokens_over']} of {gone['tokens']} tokens are over the mark, the rest agree (a "
                   f"selection, e.g. a top-k or a routing decision, flipped on a near-tie; a RoPE mismatch moves every "
                   f"far position)")
        else:
            why = (f"the source model's own float32 logits differ from its float64 ones by KL {gone['roundoff']:.1e} "
                   f"there (a selection, e.g. a top-k, flips on near-tied scores): no float32 target can match it")
        report.notes.append(f"long check at {gone['tokens']} tokens given up: max KL {gone['kl_max']:.1e}, but {why}; "
                            f"checked at {report.long_range['tokens']} tokens")
    floors = [(n, f) for n, f in floors if f <= ROUNDOFF_SMOOTH_MAX]
    if floors:
        report.notes.append("the source model's own float32 round-off (its logits against float64, max KL) is "
                            + ", ".join(f"{f:.1e} on {n} tokens" for n, f in floors)
                            + f": the float32 mark is at least {ROUNDOFF_FACTOR:g}x that (metrics.ROUNDOFF_FACTOR)")
    note = _cast_note(final, ev) if final.ok else ""
    if note:
        report.notes.append(note)
    if report.config_diff:
        matters = [d for d in report.config_diff if d.matters]
        if not report.passed and matters:
            report.notes.append(f"the two configs disagree on {len(matters)} setting(s) that change what the models "
                                f"compute (config differences above): no mapping of the weights repairs those")
        elif report.passed and matters:
            report.notes.append(f"passes, but the two configs disagree on {len(matters)} setting(s) (config "
                                f"differences above): they act where verify does not look, or the mapping absorbs "
                                f"them")
    if passed and first:
        report.notes.append(f"activations differ above {tol:g} from {first} on, within the KL threshold")
    return report


def verify_mapping(mapping: Mapping, src_runner, tgt_runner, *, seed: int = 0, seq_len: int = 64,
                   dtype: str = "float32", kl_threshold: float | None = None, tolerance: float | None = None,
                   diagnose: bool = True, dims: dict | None = None, long_range: bool = True) -> VerifyReport:
    """Convert seeded random source weights through `mapping`, run both models, compare; when that passes, once
    more on a long sequence (`long_range`; metrics.LONG_RANGE_TOKENS), where RoPE scaling acts.

    On failure, names the first diverging stage and its parameters, and where the HF and MaxText configs
    disagree (config_diff); with `diagnose`, also tries the value-op and structural candidates of that stage and
    reports the parameters whose change repairs it (`broken`)."""
    t0 = time.perf_counter()
    mark = PassMark(dtype, kl_threshold, recurrent=recurrent_layers(src_runner, tgt_runner))
    tol = tolerance if tolerance is not None else activation_tolerance(dtype)
    ev = Evaluator(src_runner, tgt_runner, seed=seed, seq_len=seq_len)
    final = ev.evaluate(mapping)
    report = _report(ev, final, mapping, dtype=dtype, mark=mark, tol=tol, src_runner=src_runner,
                     tgt_runner=tgt_runner, t0=t0, long_range=long_range)
    if not report.passed and final.ok and diagnose and final.kl_max > mark(final):
        search = Search(mapping, ev, dims=merged_dims(mapping, src_runner, tgt_runner, dims),
                        tolerance=tol, kl_threshold=mark(final), pass_mark=mark)
        result = search.run(max_steps=3, first_stage_only=True)
        stage = report.first_divergence or "logits"
        fixed = result.final is not None and result.final.stage_error(stage) <= max(tol, 1e-12)
        for d in result.decisions:
            report.broken.append({"targets": d.targets, "fix": d.choice, "stage": stage, "repairs_stage": fixed})
        report.trials = result.trials
        report.forwards = ev.forwards
        report.timings = {**report.timings, **ev.timings, "total_s": time.perf_counter() - t0}
    return report


def search_and_verify(solved, src_runner, tgt_runner, *, seed: int = 0, seq_len: int = 64, dtype: str = "float32",
                      kl_threshold: float | None = None, tolerance: float | None = None, max_steps: int = 40,
                      dims: dict | None = None, priors=None, long_range: bool = True) -> tuple[Mapping, VerifyReport]:
    """Finish a structural mapping (a SolveResult, or a Mapping) with the value ops the forward passes select,
    then verify it (and, when that passes, once more on a long sequence: `long_range`). Returns the final
    Mapping (value ops appended to the rules' chains) and the report.
    `priors` (ckptmap.llm_hints.Priors): their value ops are tried first, and kept only if the mapping then passes."""
    t0 = time.perf_counter()
    mapping = solved.mapping if hasattr(solved, "mapping") else solved
    alternatives = dict(getattr(solved, "alternatives", None) or {})
    mark = PassMark(dtype, kl_threshold, recurrent=recurrent_layers(src_runner, tgt_runner))
    tol = tolerance if tolerance is not None else activation_tolerance(dtype)
    ev = Evaluator(src_runner, tgt_runner, seed=seed, seq_len=seq_len)
    search = Search(mapping, ev, alternatives=alternatives, dims=merged_dims(mapping, src_runner, tgt_runner, dims),
                    tolerance=tol, kl_threshold=mark(), priors=priors, pass_mark=mark)
    result = search.run(max_steps=max_steps)
    final = result.final
    report = _report(ev, final, result.mapping, dtype=dtype, mark=mark, tol=tol, src_runner=src_runner,
                     tgt_runner=tgt_runner, t0=t0, long_range=long_range)
    report.trials, report.decisions = result.trials, result.decisions
    report.timings["search_s"] = result.seconds
    if result.stuck_stage and not report.passed:
        why = "; ".join(d.describe() for d in report.config_diff if d.matters)
        report.notes.append(f"search stuck at {result.stuck_stage}: no candidate lowers its error"
                            + (f"; the configs disagree: {why}" if why else ""))
    out = result.mapping
    out.meta = dict(out.meta, verify={"passed": report.passed, "kl_max": report.kl_max,
                                      "decisions": [d.to_json() for d in result.decisions]})
    return out, report
