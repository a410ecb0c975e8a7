"""The benchmark suite: every case (fixture family x scan) x method, scored against MaxText's ground truth.

Methods (each gives a ckptmap Mapping for the HF tree -> MaxText tree of a case):
- `ckptmap`: `ckptmap.solver.solve(src, tgt)`, from the trees alone;
- `ckptmap+code`: the same with the fused-axis layouts read off both models' code (stored for the bundled
  families by `python -m ckptmap.code_reading`; ckptmap.trees.code_layouts);
- `ckptmap+hints`: the same with the recorded LLM priors (`ckptmap.llm_hints.get_priors(mode="cache")`);
- `ckptmap+verify`: the solve, then `ckptmap.verify.search_and_verify` with HF and MaxText runners built at
  exactly the fixture's configs (CPU); where verify is missing or fails the run says why;
- `name-greedy`, `shapes-only`, `llm-only`: the baselines of `ckptmap.benchmarks.baselines`.

Each method runs twice: once timed, once under tracemalloc for its peak traced memory (Python and numpy
allocations; native OR-Tools memory is not traced), both with the chain-search caches cleared first.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import shlex
import tempfile
import time
import tracemalloc
import warnings
from dataclasses import dataclass, field
from typing import Callable

from ckptmap import code_reading
from ckptmap.benchmarks import baselines, groups
from ckptmap.benchmarks.cases import Case, case_dir, derived_families, fixture_families, load_case
from ckptmap.benchmarks.gt_store import SCANS
from ckptmap.benchmarks.scoring import CaseScore, score_mapping
from ckptmap.llm_hints import get_priors
from ckptmap.mapping import Mapping, write_json_atomic
from ckptmap.solver import solve
from ckptmap.transforms import clear_cache
from ckptmap.verify.config_reconcile import reconcile_to_maxtext
from ckptmap.verify.e2e import compare_with_reference
from ckptmap.verify.metrics import LONG_RANGE_TOKENS
from ckptmap.verify.retarget import Retargeted, invert, retarget, target_renames

ALL_METHODS = ("ckptmap", "ckptmap+code", "ckptmap+hints", "ckptmap+verify", "name-greedy", "shapes-only",
               "llm-only")
QUICK_METHODS = ("ckptmap", "ckptmap+code", "name-greedy", "shapes-only")
OFFLINE_BASELINES = ("name-greedy", "shapes-only")


@dataclass
class MethodRun:
    """One method on one case. `status`: ok, skipped (with `reason`) or error (the method raised)."""

    family: str
    scan: int
    method: str
    status: str
    reason: str = ""
    score: CaseScore | None = None
    solve_s: float = math.nan
    peak_mb: float = math.nan
    verify: dict = field(default_factory=dict)  # seconds, max_kl, iterations; or not_run: reason

    def row(self) -> dict:
        d = {"family": self.family, "scan": self.scan, "method": self.method, "status": self.status,
             "reason": self.reason, "solve_s": _round(self.solve_s, 4), "peak_mb": _round(self.peak_mb, 2),
             "verify": self.verify}
        if self.score is not None:
            d.update({k: v for k, v in self.score.summary().items() if k not in d})
        return d


@dataclass
class SuiteResult:
    runs: list[MethodRun]
    unavailable: dict[str, str]  # "family/scanN" -> why the case cannot be benchmarked
    seconds: float
    methods: tuple[str, ...]


def _round(x: float, digits: int) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


class Skipped(Exception):
    """The method cannot run here (a module not written yet, no API key)."""


def solve_trees(case: Case):
    """The SolveResult (its .mapping is scored; verify needs the alternatives too)."""
    return solve(case.src, case.tgt)


def with_code_layouts(case: Case) -> tuple:
    """Copies of the case's trees carrying the stored code layouts of its family (HF side and this scan)."""
    stored = code_reading.load(case.family)
    if stored is None:
        raise Skipped(f"no stored code layouts for {case.family} (python -m ckptmap.code_reading {case.family})")
    trees = []
    for tree, side in ((case.src, "hf"), (case.tgt, f"scan{case.scan}")):
        copy = dataclasses.replace(tree, meta=dict(tree.meta))
        trees.append(code_reading.attach_stored(copy, case.family, stored, side))
    return tuple(trees)


def solve_with_code(case: Case):
    return solve(*with_code_layouts(case))


def solve_with_hints(case: Case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a cache miss warns; the priors are then empty, which is the point
        priors = get_priors(case.src, case.tgt, mode="cache")
    return solve(case.src, case.tgt, priors=priors)


def _baseline(name: str) -> Callable[[Case], Mapping]:
    def run(case: Case) -> Mapping:
        try:
            return baselines.BASELINES[name](case.src, case.tgt)
        except baselines.MethodSkipped as e:
            raise Skipped(str(e)) from None
    return run


MAPPERS: dict[str, Callable[[Case], object]] = {
    "ckptmap": solve_trees,
    "ckptmap+code": solve_with_code,
    "ckptmap+hints": solve_with_hints,
    "ckptmap+verify": solve_trees,  # verify runs on its result afterwards
    **{name: _baseline(name) for name in baselines.BASELINES},
}

VERIFY_API = ("runners_for", "search_and_verify")


def verify_module() -> tuple[object | None, str]:
    """ckptmap.verify when it offers what `ckptmap solve --verify` calls, else (None, why not)."""
    try:
        module = importlib.import_module("ckptmap.verify")
    except ImportError as e:
        return None, f"ckptmap.verify is not importable ({e})"
    missing = [name for name in VERIFY_API if not callable(getattr(module, name, None))]
    if missing:
        return None, f"ckptmap.verify does not provide {', '.join(missing)} yet"
    return module, ""


def fixture_specs(case: Case, directory: str) -> tuple[str, str]:
    """Runner SPECs at exactly the fixture's configs: its HF config (written to `directory`) and its MaxText
    model name with the fixture's overrides and this case's scan setting."""
    with open(os.path.join(case_dir(case.family), "config.json")) as f:  # a fixture's, or a derived case's
        fixture = json.load(f)
    hf_path = os.path.join(directory, "config.json")
    write_json_atomic(hf_path, fixture["hf_config"])
    overrides = list(fixture["maxtext_overrides"]) + [f"scan_layers={'true' if case.scan else 'false'}"]
    return f"hf:{hf_path}", " ".join(shlex.quote(t) for t in [f"maxtext:{fixture['maxtext_model_name']}", *overrides])


MAX_REFERENCE_ELEMENTS = 50_000_000


def fixture_check(src_runner, tgt_runner, kl_threshold: float, hf_shapes: dict | None = None) -> dict:
    """Is the fixture itself consistent? MaxText's own conversion (its PARAM_MAPPING / HOOK_FNS) of the same seeded
    HF tensors, run through the MaxText model at the fixture's overrides, against the HF model at the fixture's HF
    config: `fixture_inconsistent` (with the KL measured) when that fails too, `reference_kl` when it passes (the
    failure is then the mapping's), `reference_error` when MaxText's conversion cannot run here. `hf_shapes`: the
    fixture's HF tensors, for the ones MaxText's table reads that the HF runner does not build (towers)."""
    if hf_shapes and sum(math.prod(s) for s in hf_shapes.values()) > MAX_REFERENCE_ELEMENTS:
        hf_shapes = None  # a full-size tower (the gemma4 fixtures' 570M-parameter vision tower): not drawn
    try:
        ref = compare_with_reference(None, src_runner, tgt_runner, extra_sources=hf_shapes)
    except Exception as e:  # acceptance data only: its failure must not hide verify's numbers
        return {"reference_error": f"{type(e).__name__}: {str(e)[:160]}"}
    if "kl_max" not in ref:
        return {"reference_error": str(ref.get("error") or ref.get("forward_error"))[:200]}
    kl = float(ref["kl_max"])
    if kl > kl_threshold:
        return {"fixture_inconsistent": f"MaxText's own conversion through both models: KL {kl:.2g}, "
                                        f"top-1 {100 * ref['top1']:.0f}%", "reference_kl": kl}
    return {"reference_kl": kl}


def same_as_ground_truth(case: Case, mapping: Mapping, report) -> dict:
    """Where MaxText's conversion cannot run through the models here (its deepseek tables name the router bias
    `params-...`, which MaxText's own model lacks), the ground truth still says what it converts to: when the
    mapping gives exactly MaxText's tensors for every target, MaxText's own conversion fails the same way, and the
    failure is the fixture's (or the two models'), not the mapping's."""
    score = score_mapping(mapping, case.gt, case.hf_shapes, method="ckptmap+verify")
    n, exact, unknown = len(score.targets), score.count("exact"), score.count("no_truth")
    if n and exact == n:
        return {"fixture_inconsistent": f"MaxText's own conversion = this mapping (ground truth, all {n} targets): "
                                        f"same KL {report.kl_max:.2g}"}
    if n and exact + unknown == n:  # MaxText's conversion itself fails on the others
        return {"reference_note": f"= MaxText's own conversion on the {exact} targets it converts (it fails on "
                                  f"{unknown})"}
    return {}


def consistent_source(src_spec: str, tgt_runner) -> tuple[list[str], list[str]]:
    """Make the fixture's HF config (the file `src_spec` names, in verify's temporary folder) compute what the
    MaxText model computes, where the two disagree on a setting outside the weights (verify.config_reconcile: a
    hand-made fixture's query_pre_attn_scalar, soft-caps, RoPE theta, activation): the verify column then runs at
    consistent configs, and its pass or failure is the mapping's. Returns (what was set, the disagreements that
    could not be: RoPE scaling, rotary fraction, tied embeddings)."""
    find = getattr(tgt_runner, "function_config", None)
    values = find() if callable(find) else None
    if not values:
        return [], []
    path = src_spec[3:]
    with open(path) as f:
        cfg = json.load(f)
    fixed, notes, left = reconcile_to_maxtext(cfg, values, seq_len=LONG_RANGE_TOKENS)
    if notes:
        write_json_atomic(path, fixed)
    return notes, left


def run_verify(case: Case, solved) -> tuple[Mapping, dict]:
    """Verify the solve (and let verify choose its value ops) with runners at the fixture's configs on CPU.
    Returns verify's final mapping and its numbers, or the solve's mapping and why verify did not run.

    The MaxText runner speaks the model's own variable names; where the case's target tree (the fixture's) names a
    variable otherwise (deepseek3's router bias: `params-...` in the fixture and MaxText's table, `MoEBiasVar-...`
    in the model), verify runs on the model's names and the final mapping is put back into the tree's
    (`renamed_targets`). Targets the forward passes cannot test (towers the text forward does not read) are
    counted (`unchecked`). The fixture's HF config is first made to compute what MaxText computes where they
    disagree on a setting outside the weights (`consistent_source`, listed under `reconciled`). When verify fails,
    MaxText's own conversion is run through both models too (`fixture_check`, at the same configs): if that fails
    as well, the fixture is inconsistent (`fixture_inconsistent`)."""
    verify, why = verify_module()
    if verify is None:
        return solved.mapping, {"not_run": why}

    start = time.perf_counter()
    runners: list = []
    extra: dict = {}
    with tempfile.TemporaryDirectory(prefix="ckptmap-bench-verify-") as tmp:
        try:
            src_spec, tgt_spec = fixture_specs(case, tmp)
            src_shapes = case.src.shapes()
            needed = {n: tuple(src_shapes[n]) for n in solved.mapping.source_names() if n in src_shapes}
            runners.append(verify.runner_for(tgt_spec, "cpu"))
            reconciled, left = consistent_source(src_spec, runners[0])
            if reconciled:
                extra["reconciled"] = reconciled
            if left:
                extra["not_reconciled"] = left
            runners.insert(0, verify.runner_covering(src_spec, "cpu", needed))
            renames = target_renames(solved.mapping, case.tgt.shapes(), runners[1].param_shapes())
            mapping, report = verify.search_and_verify(Retargeted(solved, renames) if renames else solved, *runners)
            mapping = retarget(mapping, invert(renames))
            if renames:
                extra["renamed_targets"] = [r.describe() for r in renames]
            if getattr(report, "unchecked", None):
                extra["unchecked"] = len(report.unchecked)
                extra["unchecked_summary"] = report.unchecked_summary()
                extra["unchecked_logit_change"] = report.unchecked_logit_change
            if not report.passed and report.logits is not None:
                extra.update(fixture_check(*runners, report.kl_threshold, case.hf_shapes))
                if "reference_error" in extra:
                    extra.update(same_as_ground_truth(case, mapping, report))
        except Exception as e:  # verify's failure on one case is a result to report, not a reason to stop
            return solved.mapping, {"not_run": f"verify raised {type(e).__name__}: {str(e)[:200]}"}
        finally:
            for runner in runners:
                runner.close()
    kl = getattr(report, "kl_max", None)
    return mapping, {"seconds": round(time.perf_counter() - start, 2),
                     "max_kl": float(kl) if isinstance(kl, (int, float)) else None,
                     "iterations": len(getattr(report, "trials", []) or []),
                     "forwards": getattr(report, "forwards", None), "passed": getattr(report, "passed", None),
                     **({"error": report.error} if getattr(report, "error", "") else {}), **extra}


def _clear_caches() -> None:
    groups._cheapest_chain.cache_clear()
    clear_cache()


def measure(mapper: Callable[[Case], object], case: Case) -> tuple[object, float, float]:
    """(the method's result, seconds of an untraced run, peak traced MB of a second run under tracemalloc)."""
    _clear_caches()
    start = time.perf_counter()
    result = mapper(case)
    seconds = time.perf_counter() - start
    _clear_caches()
    tracemalloc.start()
    try:
        mapper(case)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, seconds, peak / 1e6


def run_method(method: str, case: Case) -> MethodRun:
    run = MethodRun(case.family, case.scan, method, status="ok")
    try:
        result, run.solve_s, run.peak_mb = measure(MAPPERS[method], case)
    except Skipped as e:
        run.status, run.reason = "skipped", str(e)
        return run
    except Exception as e:  # a method that crashes on a case scores nothing on it; the suite goes on
        run.status, run.reason = "error", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        run.score = score_mapping(None, case.gt, case.hf_shapes, method=method)
        return run
    mapping = result if isinstance(result, Mapping) else result.mapping
    if method == "ckptmap+verify":
        mapping, run.verify = run_verify(case, result)
    run.score = score_mapping(mapping, case.gt, case.hf_shapes, method=method)
    return run


def run_suite(*, families: list[str] | None = None, scans: tuple[int, ...] = SCANS,
              methods: tuple[str, ...] = QUICK_METHODS, progress: Callable[[str], None] = print) -> SuiteResult:
    """Every case x method. Skipped methods are reported once with their reason."""
    unknown = [m for m in methods if m not in MAPPERS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(MAPPERS)}")
    start = time.perf_counter()
    runs: list[MethodRun] = []
    unavailable: dict[str, str] = {}
    skip_reported: set[str] = set()
    for family in families or fixture_families() + derived_families():  # derived cases: `derived/<name>`
        for scan in scans:
            case = load_case(family, scan)
            if isinstance(case, str):
                unavailable[f"{family}/scan{scan}"] = case
                progress(f"{family}/scan{scan}: not benchmarked: {case}")
                continue
            parts = []
            for method in methods:
                run = run_method(method, case)
                runs.append(run)
                if run.status == "skipped":
                    if method not in skip_reported:
                        progress(f"{method}: skipped: {run.reason}")
                        skip_reported.add(method)
                    continue
                if run.status == "error":
                    parts.append(f"{method} ERROR {run.reason[:80]}")
                    continue
                parts.append(f"{method} {run.score.pct_exact:5.1f}/{run.score.pct_structural:5.1f}%")
                if run.verify.get("not_run") and "verify" not in skip_reported:
                    progress(f"ckptmap+verify: verify not run: {run.verify['not_run']}")
                    skip_reported.add("verify")
            progress(f"{case.label:20s} " + "  ".join(parts))
    return SuiteResult(runs=runs, unavailable=unavailable, seconds=time.perf_counter() - start,
                       methods=tuple(methods))
