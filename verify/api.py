"""verify's entry points: re-check a mapping, or search its value ops and verify the result.

    report = verify_mapping(mapping, src_runner, tgt_runner)
    mapping, report = search_and_verify(solve_result, src_runner, tgt_runner)

Runners implement ckptmap.runner.ModelRunner (see runners_for in specs.py to build them from SPECs).
"""

from __future__ import annotations

import time

import numpy as np

from ckptmap.mapping import Mapping
from ckptmap.verify.evaluate import Evaluation, Evaluator
from ckptmap.verify.localise import first_divergence, stage_targets
from ckptmap.verify.metrics import activation_tolerance, kl_threshold as default_kl_threshold
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


def _report(ev: Evaluator, final: Evaluation, mapping: Mapping, *, dtype: str, threshold: float, tol: float,
            src_runner, tgt_runner, t0: float) -> VerifyReport:
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
    if read_anyway:
        report.error = (f"the target model's forward pass reads {len(unchecked)} tensors the forward passes cannot "
                        f"check (their sources are not read by, or not in, the source model): its logits move by "
                        f"{moved:.2g} when they change")
    if getattr(ev, "unread_note", ""):
        report.notes.append(ev.unread_note)
    report.timings = {**ev.timings, "total_s": time.perf_counter() - t0}
    start = (getattr(tgt_runner, "timings", None) or {}).get("start_s")
    if start:
        report.timings["target_start_s"] = start
    if passed and (_tied(tgt_runner) or _tied(src_runner)) and final.kl_max > 1e-9:
        report.notes.append(f"logits through a tied embedding: the KL floor measured here is "
                            f"{final.kl_max:.2e} (bf16 cast on that path)")
    if passed and first:
        report.notes.append(f"activations differ above {tol:g} from {first} on, within the KL threshold")
    return report


def verify_mapping(mapping: Mapping, src_runner, tgt_runner, *, seed: int = 0, seq_len: int = 64,
                   dtype: str = "float32", kl_threshold: float | None = None, tolerance: float | None = None,
                   diagnose: bool = True, dims: dict | None = None) -> VerifyReport:
    """Convert seeded random source weights through `mapping`, run both models, compare.

    On failure, names the first diverging stage and its parameters; with `diagnose`, also tries the value-op and
    structural candidates of that stage and reports the parameters whose change repairs it (`broken`)."""
    t0 = time.perf_counter()
    threshold = kl_threshold if kl_threshold is not None else default_kl_threshold(dtype)
    tol = tolerance if tolerance is not None else activation_tolerance(dtype)
    ev = Evaluator(src_runner, tgt_runner, seed=seed, seq_len=seq_len)
    final = ev.evaluate(mapping)
    report = _report(ev, final, mapping, dtype=dtype, threshold=threshold, tol=tol, src_runner=src_runner,
                     tgt_runner=tgt_runner, t0=t0)
    if not report.passed and final.ok and diagnose:
        search = Search(mapping, ev, dims=merged_dims(mapping, src_runner, tgt_runner, dims),
                        tolerance=tol, kl_threshold=threshold)
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
                      dims: dict | None = None, priors=None) -> tuple[Mapping, VerifyReport]:
    """Finish a structural mapping (a SolveResult, or a Mapping) with the value ops the forward passes select,
    then verify it. Returns the final Mapping (value ops appended to the rules' chains) and the report.
    `priors` (ckptmap.llm_hints.Priors): their value ops are tried first, and kept only if the mapping then passes."""
    t0 = time.perf_counter()
    mapping = solved.mapping if hasattr(solved, "mapping") else solved
    alternatives = dict(getattr(solved, "alternatives", None) or {})
    threshold = kl_threshold if kl_threshold is not None else default_kl_threshold(dtype)
    tol = tolerance if tolerance is not None else activation_tolerance(dtype)
    ev = Evaluator(src_runner, tgt_runner, seed=seed, seq_len=seq_len)
    search = Search(mapping, ev, alternatives=alternatives, dims=merged_dims(mapping, src_runner, tgt_runner, dims),
                    tolerance=tol, kl_threshold=threshold, priors=priors)
    result = search.run(max_steps=max_steps)
    final = result.final
    report = _report(ev, final, result.mapping, dtype=dtype, threshold=threshold, tol=tol, src_runner=src_runner,
                     tgt_runner=tgt_runner, t0=t0)
    report.trials, report.decisions = result.trials, result.decisions
    report.timings["search_s"] = result.seconds
    if result.stuck_stage and not report.passed:
        report.notes.append(f"search stuck at {result.stuck_stage}: no candidate lowers its error")
    out = result.mapping
    out.meta = dict(out.meta, verify={"passed": report.passed, "kl_max": report.kl_max,
                                      "decisions": [d.to_json() for d in result.decisions]})
    return out, report
