"""Tables of a suite run (Markdown, printed and written into RESULTS.md) and the section writer."""

from __future__ import annotations

import math
import os
import platform
import re
from collections import defaultdict

from ckptmap.benchmarks import gt_store
from ckptmap.benchmarks.suite import OFFLINE_BASELINES, MethodRun, SuiteResult
from ckptmap.mapping import write_text_atomic

SECTION = "## Benchmark suite"


def _scored(result: SuiteResult, method: str) -> list[MethodRun]:
    return [r for r in result.runs if r.method == method and r.score is not None]


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_table(result: SuiteResult) -> str:
    """One line per method: means over the cases it was scored on."""
    lines = ["| method | cases | mean % exact | mean % structural | mean % sources as MaxText's | "
             "cases 100% structural | unmapped | wrong | solve s (total) | peak MB (max) |", "|---|" * 1 + "---|" * 9]
    for method in result.methods:
        runs = _scored(result, method)
        skipped = [r for r in result.runs if r.method == method and r.status == "skipped"]
        if not runs:
            why = skipped[0].reason if skipped else "no case"
            lines.append(f"| {method} | 0 (skipped: {why}) | - | - | - | - | - | - | - | - |")
            continue
        n = len(runs)
        errors = sum(r.status == "error" for r in runs)
        lines.append(
            f"| {method} | {n}{f' ({errors} crashed)' if errors else ''} "
            f"| {sum(r.score.pct_exact for r in runs) / n:.1f} | {sum(r.score.pct_structural for r in runs) / n:.1f} "
            f"| {sum(r.score.pct_sources_ok for r in runs) / n:.1f} "
            f"| {sum(r.score.pct_structural == 100.0 for r in runs)} | {sum(r.score.unmapped for r in runs)} "
            f"| {sum(r.score.count('wrong') for r in runs)} | {_fmt(sum(r.solve_s for r in runs), 2)} "
            f"| {_fmt(max(r.peak_mb for r in runs), 1)} |")
    return "\n".join(lines)


def beats_baselines(result: SuiteResult, method: str = "ckptmap") -> dict[str, bool]:
    """Per case: `method`'s % structural is 100 or above every offline baseline's."""
    by_case: dict[str, dict[str, MethodRun]] = defaultdict(dict)
    for r in result.runs:
        if r.score is not None:
            by_case[f"{r.family}/scan{r.scan}"][r.method] = r
    out = {}
    for case, runs in by_case.items():
        if method not in runs:
            continue
        mine = runs[method].score.pct_structural
        others = [runs[b].score.pct_structural for b in OFFLINE_BASELINES if b in runs]
        out[case] = mine == 100.0 or all(mine > o for o in others)
    return out


def verify_cell(v: dict) -> str:
    """`pass, KL 4.8e-12, 12 trials, 8.4 s`, or why verify did not run (shortened)."""
    if "not_run" in v:
        return "not run: " + v["not_run"].replace("verify raised ", "").replace("|", "/")[:70]
    verdict = {True: "pass", False: "**fail**"}.get(v.get("passed"), "?")
    kl = v.get("max_kl")
    kl_text = "-" if kl is None else f"{kl:.2g}"
    text = f"{verdict}, KL {kl_text}, {v.get('iterations')} trials, {_fmt(v.get('seconds'), 1)} s"
    if v.get("error"):
        text += ": " + v["error"].replace("|", "/")[:90]
    if v.get("reconciled"):
        text += f"; HF config made MaxText's on {len(v['reconciled'])} setting(s)"
    if v.get("fixture_inconsistent"):
        text += "; fixture_inconsistent: " + v["fixture_inconsistent"].replace("|", "/")[:90]
    elif v.get("passed") is False and v.get("reference_kl") is not None:
        text += f"; MaxText's own conversion: KL {v['reference_kl']:.2g}"
    elif v.get("reference_note"):
        text += "; " + v["reference_note"].replace("|", "/")[:90]
    if v.get("unchecked"):
        text += f"; {v['unchecked']} targets not checked (untested by the forward passes)"
    if v.get("renamed_targets"):
        text += f"; compared on the model's names ({len(v['renamed_targets'])} renamed)"
    return text


def case_table(result: SuiteResult) -> str:
    """One line per case: every method's `% exact / % structural (unmapped)`, then ckptmap's costs."""
    methods = [m for m in result.methods if _scored(result, m)]
    head = "| case | " + " | ".join(methods) + " | ckptmap solve s | ckptmap peak MB | verify | beats baselines |"
    lines = [head, "|" + "---|" * (len(methods) + 5)]
    by_case: dict[str, dict[str, MethodRun]] = defaultdict(dict)
    for r in result.runs:
        by_case[f"{r.family}/scan{r.scan}"][r.method] = r
    beats = beats_baselines(result)
    for case, runs in by_case.items():
        cells = []
        for m in methods:
            r = runs.get(m)
            if r is None or r.score is None:
                cells.append("-")
            elif r.status == "error":
                cells.append("crashed")
            else:
                s = r.score
                cells.append(f"{s.pct_exact:.0f} / {s.pct_structural:.0f} ({s.unmapped})")
        mine = runs.get("ckptmap")
        verify = runs.get("ckptmap+verify")
        verify_text = verify_cell(verify.verify) if verify is not None and verify.verify else "-"
        cells += [_fmt(mine.solve_s, 3) if mine else "-", _fmt(mine.peak_mb, 1) if mine else "-", verify_text,
                  {True: "yes", False: "**no**"}.get(beats.get(case), "-")]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(result: SuiteResult) -> str:
    lines = []
    for case, why in result.unavailable.items():
        lines.append(f"- {case}: not benchmarked: {why}")
    reported = set()
    for r in result.runs:
        if r.status == "skipped" and r.method not in reported:
            lines.append(f"- {r.method}: skipped: {r.reason}")
            reported.add(r.method)
        if r.verify.get("not_run") and "verify" not in reported:
            lines.append("- ckptmap+verify: where verify did not run (see the verify column) its scores are the solve's")
            reported.add("verify")

    for family, scan in sorted({(r.family, r.scan) for r in result.runs}):
        try:
            note = gt_store.load(family, scan, with_tensors=False).target_note
        except gt_store.GroundTruthError:
            continue
        if note.startswith("MaxText's abstract model"):
            lines.append(f"- {family}/scan{scan}: the target tree is {note}")
    no_truth = sorted({(f"{r.family}/scan{r.scan}", t.name, t.detail) for r in result.runs if r.score is not None
                       for t in r.score.targets if t.verdict == "no_truth"})
    if no_truth:
        lines.append(f"- {len(no_truth)} targets have no ground truth (MaxText's own conversion fails on them; not "
                     "scored): " + "; ".join(f"{c} `{n}`: {d[:90]}" for c, n, d in no_truth[:6])
                     + (" ..." if len(no_truth) > 6 else ""))
    return "\n".join(lines)


def machine() -> str:
    return f"{os.cpu_count()}-core CPU container ({platform.machine()}, Python {platform.python_version()})"


def markdown(result: SuiteResult, *, command: str, date: str, extra: str = "") -> str:
    """The `## Benchmark suite` section."""
    parts = [
        SECTION, "",
        f"Machine: {machine()}. Date: {date}. Command: `{command}`. Wall time {result.seconds:.0f} s.", "",
        "Cases are fixture families (tests/data/maxtext_tiny) x scan (unscanned = scan0, scanned = scan1), HF -> "
        "MaxText. Ground truth: MaxText 0.2.5's own PARAM_MAPPING/HOOK_FNS applied to seeded integer HF tensors "
        "(`ckptmap/benchmarks/data`, made by `.venv-maxtext/bin/python -m ckptmap.benchmarks.ground_truth`). A cell "
        "reads `% exactly right / % structurally right (unmapped count)`: exact = tensor equal to MaxText's; "
        "structural = equal up to the value ops shapes cannot show (scalar a*x+b, RoPE half<->interleaved on the "
        "last axis), i.e. right sources, stacking and shape chain. \"Sources as MaxText's\": of the targets a "
        "method maps, the share whose source tensor names equal MaxText's PARAM_MAPPING entry. Peak MB: tracemalloc "
        "peak of a second, traced "
        "run (Python/numpy allocations). \"beats baselines\": ckptmap's % structural is 100 or above both offline "
        "baselines'.", "",
        summary_table(result), "",
        case_table(result), "",
    ]
    n = notes(result)
    if n:
        parts += [n, ""]
    if extra:
        parts += [extra, ""]
    return "\n".join(parts)


def write_section(path: str, section_text: str, title: str = SECTION) -> None:
    """Replace the `title` section of `path` (up to the next `## ` heading) or append it; atomic write."""
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if not text.strip():
        text = "# Benchmark results\n"
    body = section_text.rstrip("\n") + "\n"
    pattern = re.compile(rf"^{re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + body
    write_text_atomic(path, text)
