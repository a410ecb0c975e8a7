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
import math
import time
import tracemalloc
import warnings
from dataclasses import dataclass, field
from typing import Callable

from ckptmap.benchmarks import baselines
from ckptmap.benchmarks.cases import Case, derived_families, fixture_families, load_case
from ckptmap.benchmarks.gt_store import SCANS
from ckptmap.benchmarks.scoring import CaseScore, score_mapping
from ckptmap.mapping import Mapping

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


def _solver():
    try:
        from ckptmap.solver import solve
    except ImportError as e:
        raise Skipped(f"ckptmap.solver is not importable ({e})") from None
    return solve


def solve_trees(case: Case):
    """The SolveResult (its .mapping is scored; verify needs the alternatives too)."""
    return _solver()(case.src, case.tgt)


def with_code_layouts(case: Case) -> tuple:
    """Copies of the case's trees carrying the stored code layouts of its family (HF side and this scan)."""
    from ckptmap import code_reading
    from ckptmap.trees.code_layouts import attach

    stored = code_reading.load(case.family)
    if stored is None:
        raise Skipped(f"no stored code layouts for {case.family} (python -m ckptmap.code_reading {case.family})")
    trees = []
    for tree, side in ((case.src, "hf"), (case.tgt, f"scan{case.scan}")):
        copy = dataclasses.replace(tree, meta=dict(tree.meta))
        trees.append(attach(copy, stored.get(side, {}), source=code_reading.layouts_path(case.family) + "#" + side))
    return tuple(trees)


def solve_with_code(case: Case):
    return _solver()(*with_code_layouts(case))


def solve_with_hints(case: Case):
    solve = _solver()
    try:
        from ckptmap.llm_hints import get_priors
    except ImportError as e:
        raise Skipped(f"ckptmap.llm_hints is not importable ({e})") from None
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
    import json
    import os
    import shlex

    from ckptmap.benchmarks.cases import FIXTURES
    from ckptmap.mapping import write_json_atomic

    with open(os.path.join(FIXTURES, case.family, "config.json")) as f:
        fixture = json.load(f)
    hf_path = os.path.join(directory, "config.json")
    write_json_atomic(hf_path, fixture["hf_config"])
    overrides = list(fixture["maxtext_overrides"]) + [f"scan_layers={'true' if case.scan else 'false'}"]
    return f"hf:{hf_path}", " ".join(shlex.quote(t) for t in [f"maxtext:{fixture['maxtext_model_name']}", *overrides])


def run_verify(case: Case, solved) -> tuple[Mapping, dict]:
    """Verify the solve (and let verify choose its value ops) with runners at the fixture's configs on CPU.
    Returns verify's final mapping and its numbers, or the solve's mapping and why verify did not run."""
    import tempfile

    verify, why = verify_module()
    if verify is None:
        return solved.mapping, {"not_run": why}
    start = time.perf_counter()
    runners = ()
    with tempfile.TemporaryDirectory(prefix="ckptmap-bench-verify-") as tmp:
        try:
            specs = fixture_specs(case, tmp)
            runners = verify.runners_for(*specs, "cpu")
            if not set(case.src.names()) <= set(runners[0].param_shapes()):
                # the fixture names the HF tensors as the torch modules hold them (fused experts), not as a
                # checkpoint saves them: give the HF runner those names
                runners[0].close()
                runners = (verify.runner_for(specs[0], "cpu", hf_layout="memory"), runners[1])
            mapping, report = verify.search_and_verify(solved, *runners)
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
                     **({"error": report.error} if getattr(report, "error", "") else {})}


def _clear_caches() -> None:
    from ckptmap.benchmarks import groups

    groups._cheapest_chain.cache_clear()
    try:
        from ckptmap.transforms import clear_cache
    except ImportError:
        return
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
