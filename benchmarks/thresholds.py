"""The accuracy floor `ckptmap bench --quick` enforces (benchmarks/data/quick_thresholds.json).

`{"method": "ckptmap", "metric": "pct_structural", "min": {"llama3.1/scan0": 100.0, ...}}`: for each case
listed, the method's metric must not fall below its minimum. `--write-thresholds` records the current run's
values, so the file is a ratchet: raise it when the solver improves, and CI fails when it regresses.
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


class ThresholdError(CkptmapError):
    """The thresholds file is missing or malformed."""


def load(path: str = PATH) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ThresholdError("no thresholds file (write one with `ckptmap bench --quick --write-thresholds`)",
                             file=path) from None
    except json.JSONDecodeError as e:
        raise ThresholdError(f"invalid JSON at line {e.lineno}", file=path) from None
    if data.get("metric") not in METRICS or not isinstance(data.get("min"), dict):
        raise ThresholdError(f"expected {{\"method\", \"metric\" in {METRICS}, \"min\": {{case: percent}}}}",
                             file=path)
    return data


def current(result: SuiteResult, method: str = "ckptmap", metric: str = "pct_structural") -> dict[str, float]:
    """case -> the metric of `method` in this run (0 for a run that crashed)."""
    out = {}
    for r in result.runs:
        if r.method == method and r.score is not None:
            out[f"{r.family}/scan{r.scan}"] = round(getattr(r.score, metric), 2)
    return out


def check(result: SuiteResult, thresholds: dict) -> list[str]:
    """One line per case below its floor, or not scored although it was run; [] when all pass."""
    method, metric = thresholds.get("method", "ckptmap"), thresholds["metric"]
    got = current(result, method, metric)
    ran = {f"{r.family}/scan{r.scan}" for r in result.runs}
    failures = []
    for case, floor in sorted(thresholds["min"].items()):
        if case not in ran:
            continue  # not part of this run (--families)
        value = got.get(case)
        if value is None:
            why = next((r.reason for r in result.runs if r.method == method and f"{r.family}/scan{r.scan}" == case
                        and r.reason), f"{method} did not run")
            failures.append(f"{case}: {method} not scored ({why}); floor {metric} {floor}")
        elif value < floor:
            failures.append(f"{case}: {method} {metric} {value} < floor {floor}")
    return failures


def write(result: SuiteResult, path: str = PATH, method: str = "ckptmap", metric: str = "pct_structural") -> dict:
    """Record this run's values as the floors (merged over the cases already in the file)."""
    data = {"format": "ckptmap.quick_thresholds", "method": method, "metric": metric, "min": {}}
    if os.path.exists(path):
        old = load(path)
        if old.get("method") == method and old.get("metric") == metric:
            data["min"] = dict(old["min"])
    data["min"].update(current(result, method, metric))
    data["min"] = dict(sorted(data["min"].items()))
    write_json_atomic(path, data)
    return data
