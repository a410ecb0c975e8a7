"""The accuracy floor `ckptmap bench --quick` enforces (ckptmap/benchmarks/data/quick_thresholds.json).

`{"floors": [{"method": "ckptmap", "metric": "pct_structural", "min": {"llama3.1/scan0": 100.0, ...}}, ...]}`
(one floor per method; a file holding a single floor at the top level is read too): for each case listed, the
method's metric must not fall below its minimum. `--write-thresholds` records the current run's values of every
method in FLOOR_METHODS that ran, so the file is a ratchet: raise it when the solver improves, and CI fails when it
regresses.
"""

from __future__ import annotations

import json
import os

from ckptmap.benchmarks.gt_store import DATA_DIR
from ckptmap.benchmarks.suite import SuiteResult
from ckptmap.errors import CkptmapError
from ckptmap.mapping import write_json_atomic

PATH = os.path.join(DATA_DIR, "quick_thresholds.json")
METRICS = ("pct_exact", "pct_structural")
FLOOR_METHODS = ("ckptmap", "ckptmap+code")


class ThresholdError(CkptmapError):
    """The thresholds file is missing or malformed."""


def load(path: str = PATH) -> dict:
    """{"floors": [{"method", "metric", "min"}, ...]} from the file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ThresholdError("no thresholds file (write one with `ckptmap bench --quick --write-thresholds`)",
                             file=path) from None
    except json.JSONDecodeError as e:
        raise ThresholdError(f"invalid JSON at line {e.lineno}", file=path) from None
    floors = data.get("floors", [data]) if isinstance(data, dict) else None
    if not isinstance(floors, list) or not all(
            isinstance(f, dict) and f.get("metric") in METRICS and isinstance(f.get("min"), dict) for f in floors):
        raise ThresholdError(f"expected {{\"floors\": [{{\"method\", \"metric\" in {METRICS}, \"min\": "
                             f"{{case: percent}}}}, ...]}}", file=path)
    return {"floors": [dict(f, method=f.get("method", "ckptmap")) for f in floors]}


def current(result: SuiteResult, method: str = "ckptmap", metric: str = "pct_structural") -> dict[str, float]:
    """case -> the metric of `method` in this run (0 for a run that crashed)."""
    out = {}
    for r in result.runs:
        if r.method == method and r.score is not None:
            out[f"{r.family}/scan{r.scan}"] = round(getattr(r.score, metric), 2)
    return out


def check(result: SuiteResult, thresholds: dict) -> list[str]:
    """One line per case below its floor, or not scored although it was run; [] when all pass."""
    failures = []
    ran = {f"{r.family}/scan{r.scan}" for r in result.runs}
    for floor_set in thresholds["floors"]:
        method, metric = floor_set["method"], floor_set["metric"]
        if not any(r.method == method for r in result.runs):
            continue  # not part of this run (--methods)
        got = current(result, method, metric)
        for case, floor in sorted(floor_set["min"].items()):
            if case not in ran:
                continue  # not part of this run (--families)
            value = got.get(case)
            if value is None:
                why = next((r.reason for r in result.runs if r.method == method
                            and f"{r.family}/scan{r.scan}" == case and r.reason), f"{method} did not run")
                failures.append(f"{case}: {method} not scored ({why}); floor {metric} {floor}")
            elif value < floor:
                failures.append(f"{case}: {method} {metric} {value} < floor {floor}")
    return failures


def write(result: SuiteResult, path: str = PATH, methods: tuple[str, ...] = FLOOR_METHODS,
          metric: str = "pct_structural") -> dict:
    """Record this run's values as the floors of each of `methods` that ran (merged over the cases already in
    the file for that method and metric)."""
    old = load(path)["floors"] if os.path.exists(path) else []
    floors = []
    for method in methods:
        if not any(r.method == method for r in result.runs):
            floors += [f for f in old if f["method"] == method]
            continue
        mins = next((dict(f["min"]) for f in old if f["method"] == method and f["metric"] == metric), {})
        mins.update(current(result, method, metric))
        floors.append({"method": method, "metric": metric, "min": dict(sorted(mins.items()))})
    data = {"format": "ckptmap.quick_thresholds", "floors": floors}
    write_json_atomic(path, data)
    return data
