"""Score a ckptmap Mapping (HF -> MaxText) against MaxText's own conversion of the same seeded HF tensors.

Each target of the ground truth gets one verdict:
- `exact`: the mapping's tensor equals MaxText's;
- `structural`: equal up to the value ops shapes cannot reveal, found by search: a scalar affine a*x+b
  (query scaling, norm +1 offsets) and/or the RoPE half <-> interleaved permutation of a range of the last axis;
- `wrong`: produced, but neither (or the rule failed to apply);
- `unmapped`: the mapping does not produce it;
- `no_truth`: MaxText's own mapping cannot produce it (recorded in the ground truth), so it is not scored.
"Structurally right" counts exact + structural: the source keys, stacking and shape-changing chain are right.
Per target the mapping's source names are also compared with MaxText's PARAM_MAPPING entry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ckptmap.apply import apply_rule
from ckptmap.benchmarks.gt_store import SEED, GroundTruth
from ckptmap.errors import CkptmapError
from ckptmap.mapping import Mapping, Rule
from ckptmap.runner import seeded_tensor

VERDICTS = ("exact", "structural", "wrong", "unmapped", "no_truth")
_STRUCTURAL_SEARCH_MAX = 4_000_000  # elements; larger tensors only try the whole-axis permutation


@dataclass(frozen=True)
class TargetScore:
    """One target's verdict; `detail` says which value op made it structural, or what was wrong."""

    name: str
    verdict: str
    detail: str = ""
    sources_ok: bool | None = None  # mapping's source names == MaxText's (None: nothing to compare)


@dataclass
class CaseScore:
    """All targets of one family x scan x method, with the totals the suite reports."""

    family: str
    scan: int
    method: str
    targets: list[TargetScore] = field(default_factory=list)
    extra_targets: list[str] = field(default_factory=list)  # produced, but not in MaxText's tree

    def count(self, verdict: str) -> int:
        return sum(1 for t in self.targets if t.verdict == verdict)

    @property
    def scored(self) -> int:
        """Targets with a ground-truth tensor (the denominator of the percentages)."""
        return len(self.targets) - self.count("no_truth")

    @property
    def pct_exact(self) -> float:
        return 100.0 * self.count("exact") / self.scored if self.scored else 0.0

    @property
    def pct_structural(self) -> float:
        return 100.0 * (self.count("exact") + self.count("structural")) / self.scored if self.scored else 0.0

    @property
    def unmapped(self) -> int:
        return self.count("unmapped")

    @property
    def pct_sources_ok(self) -> float:
        judged = [t for t in self.targets if t.sources_ok is not None]
        return 100.0 * sum(t.sources_ok for t in judged) / len(judged) if judged else 0.0

    def summary(self) -> dict:
        return {"family": self.family, "scan": self.scan, "method": self.method, "targets": len(self.targets),
                "scored": self.scored, **{v: self.count(v) for v in VERDICTS},
                "pct_exact": round(self.pct_exact, 2), "pct_structural": round(self.pct_structural, 2),
                "pct_sources_ok": round(self.pct_sources_ok, 2), "extra_targets": len(self.extra_targets)}


# ---------------------------------------------------------------- value ops that shapes cannot see

def rope_to_interleaved(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """[..., D] -> [..., D]: within [start, stop) of the last axis, halves (a0..ah, b0..bh) -> (a0 b0 a1 b1 ...)."""
    out = x.copy()
    seg = x[..., start:stop]
    half = (stop - start) // 2
    out[..., start:stop] = np.stack([seg[..., :half], seg[..., half:]], axis=-1).reshape(seg.shape)
    return out


def rope_to_halves(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Inverse of rope_to_interleaved: (a0 b0 a1 b1 ...) -> (a0..ah, b0..bh) within [start, stop)."""
    out = x.copy()
    seg = x[..., start:stop]
    out[..., start:stop] = np.concatenate([seg[..., 0::2], seg[..., 1::2]], axis=-1)
    return out


def rope_ranges(last: int) -> list[tuple[int, int]]:
    """Ranges of the last axis a RoPE permutation may cover: all of it, a leading or a trailing part (even
    lengths of 4 or more; a length-2 permutation is the identity)."""
    ranges = [(0, last)] if last % 2 == 0 and last >= 4 else []
    top = last - 2 if last % 2 == 0 else last - 1
    for length in range(top, 3, -2):
        ranges += [(last - length, last), (0, length)]
    return ranges


def affine_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """(a, b) with a*x + b == y to float32 precision, a != 0, or None."""
    xf = x.astype(np.float64).ravel()
    yf = y.astype(np.float64).ravel()
    if xf.size == 0:
        return None
    var = xf.var()
    if var == 0.0:
        return None
    a = float(((xf - xf.mean()) * (yf - yf.mean())).mean() / var)
    b = float(yf.mean() - a * xf.mean())
    if a == 0.0:
        return None
    scale = max(1.0, float(np.abs(yf).max()))
    if np.allclose(a * xf + b, yf, rtol=1e-5, atol=1e-6 * scale):
        return a, b
    return None


def _value_op_candidates(produced: np.ndarray) -> Iterable[tuple[str, np.ndarray]]:
    yield "", produced
    if produced.ndim == 0:
        return
    ranges = rope_ranges(produced.shape[-1])
    if produced.size > _STRUCTURAL_SEARCH_MAX:
        ranges = ranges[:1]
    for start, stop in ranges:
        yield f"rope halves->interleaved on last axis [{start}:{stop}]", rope_to_interleaved(produced, start, stop)
        yield f"rope interleaved->halves on last axis [{start}:{stop}]", rope_to_halves(produced, start, stop)


def compare(produced: np.ndarray, truth: np.ndarray) -> tuple[str, str]:
    """(verdict, detail) for one produced tensor against MaxText's."""
    produced = np.asarray(produced, dtype=np.float32)
    if produced.shape != truth.shape:
        return "wrong", f"shape {tuple(produced.shape)}, expected {tuple(truth.shape)}"
    if np.array_equal(produced, truth):
        return "exact", ""
    # Both value ops keep the multiset of values up to a*x+b, so the sorted values must already fit an affine;
    # this rejects most wrong tensors before the permutation search.
    ordered, target_ordered = np.sort(produced, axis=None), np.sort(truth, axis=None)
    if affine_fit(ordered, target_ordered) is None and affine_fit(ordered[::-1], target_ordered) is None:
        return "wrong", f"{100 * float(np.mean(produced != truth)):.0f}% of elements differ"
    for what, candidate in _value_op_candidates(produced):
        if what and np.array_equal(candidate, truth):
            return "structural", what
        fit = affine_fit(candidate, truth)
        if fit is not None:
            a, b = fit
            affine = f"affine {a:.6g}*x{b:+.6g}"
            return "structural", f"{what} + {affine}" if what else affine
    mismatch = float(np.mean(produced != truth))
    return "wrong", f"{100 * mismatch:.0f}% of elements differ"


# ---------------------------------------------------------------- applying a mapping

def rule_sources(rule: Rule) -> dict[str, set[str]]:
    """Target name -> the source names the rule reads for it (all cells of a stacked target)."""
    out: dict[str, set[str]] = {}
    for cell in rule.cells():
        sources = {s.name_at(cell) for s in rule.sources}
        for slot in rule.targets:
            out.setdefault(slot.name_at(cell), set()).update(sources)
    return out


def seeded_getter(hf_shapes: dict[str, tuple[int, ...]]) -> tuple[Callable[[str], np.ndarray], Callable[[], None]]:
    """A cached reader of the seeded integer HF tensors (the ground truth's inputs), and a cache clearer."""
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            if name not in hf_shapes:
                raise CkptmapError("the mapping reads a tensor the HF tree does not have", key=name)
            cache[name] = seeded_tensor(name, tuple(hf_shapes[name]), SEED, integer=True)
        return cache[name]

    return get, cache.clear


def produce(mapping: Mapping, hf_shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], dict[str, str],
                                                                              dict[str, set[str]]]:
    """Apply `mapping` rule by rule (ckptmap.apply, the executor convert uses) to the seeded HF tensors.

    Returns (target -> array, target -> error for rules that failed, target -> source names). A failing rule
    fails only its own targets.
    """
    get, clear = seeded_getter(hf_shapes)
    arrays: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    sources: dict[str, set[str]] = {}
    for rule in mapping.rules:
        rule_srcs = rule_sources(rule)
        for name, names in rule_srcs.items():
            sources.setdefault(name, set()).update(names)
        try:
            for name, array in apply_rule(rule, get):
                arrays[name] = array
        except (CkptmapError, ValueError, IndexError, TypeError) as e:
            message = e.one_line() if isinstance(e, CkptmapError) else f"{type(e).__name__}: {e}"
            for name in rule_srcs:
                errors.setdefault(name, message[:300])
        clear()  # the HF tensors of one rule are not needed by the next; keeps memory to one rule's inputs
    return arrays, errors, sources


def score_mapping(mapping: Mapping | None, gt: GroundTruth, hf_shapes: dict[str, tuple[int, ...]], *,
                  method: str = "") -> CaseScore:
    """Score `mapping` (None: nothing mapped) on every target of the ground truth's MaxText tree."""
    result = CaseScore(family=gt.family, scan=gt.scan, method=method)
    arrays, errors, sources = produce(mapping, hf_shapes) if mapping is not None else ({}, {}, {})
    truth_sources = gt.sources_by_target()
    for name in gt.target_shapes:
        mapped = name in arrays or name in errors
        sources_ok = None
        if mapped and name in truth_sources:
            sources_ok = sources.get(name, set()) == set(truth_sources[name])
        if name not in gt.tensors:
            reason = gt.failed.get(name) or ("not in MaxText's PARAM_MAPPING" if name in gt.not_in_mapping else "")
            result.targets.append(TargetScore(name, "no_truth", reason, sources_ok))
        elif name in errors:
            result.targets.append(TargetScore(name, "wrong", errors[name], sources_ok))
        elif name not in arrays:
            result.targets.append(TargetScore(name, "unmapped"))
        else:
            verdict, detail = compare(arrays[name], gt.tensors[name])
            result.targets.append(TargetScore(name, verdict, detail, sources_ok))
    known = set(gt.target_shapes)
    result.extra_targets = sorted(n for n in set(arrays) | set(errors) if n not in known)
    return result


def best_of_alternatives(mapping: Mapping, alternatives: dict[int, list[Rule]], gt: GroundTruth,
                         hf_shapes: dict[str, tuple[int, ...]]) -> tuple[Mapping, dict[int, int]]:
    """The mapping with each rule that scores wrong replaced by the first of its ranked alternatives that scores
    exact or structural on all its targets: whether the solver's candidates hold the answer verify must find.
    Returns (that mapping, rule index -> alternative index taken)."""
    verdicts = {t.name: t.verdict for t in score_mapping(mapping, gt, hf_shapes).targets}
    rules, taken = list(mapping.rules), {}
    for i, rule in enumerate(mapping.rules):
        if not any(verdicts.get(n) == "wrong" for n in rule.target_names()):
            continue
        for k, alt in enumerate(alternatives.get(i, [])):
            trial = dataclasses.replace(mapping, rules=rules[:i] + [alt] + rules[i + 1:])
            got = {t.name: t.verdict for t in score_mapping(trial, gt, hf_shapes).targets}
            if all(got.get(n) in ("exact", "structural") for n in alt.target_names() if n in gt.tensors):
                rules[i], taken[i] = alt, k
                break
    return dataclasses.replace(mapping, rules=rules), taken
