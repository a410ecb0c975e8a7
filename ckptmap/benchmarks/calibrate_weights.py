"""Check the score weights (heuristics.weights.ScoreWeights) on a split of the benchmark cases.

    python -m ckptmap.benchmarks.calibrate_weights [--factors 0.5 2] [--only name layout ...] [--out FILE.md]

The fixture families (and derived cases) are split once, by a hash of the family name, into a *tuning* half and a
*held-out* half. For the current weights and for each weight scaled by each factor (one at a time), every case of
both halves is solved from its trees alone (code layouts off: what names and layouts decide), and the share of
targets right (exact + structural) is reported per half. Reading it: a weight whose change helps the tuning half
but not the held-out half was tuned to those cases; a weight whose change moves nothing carries no information on
these cases. Nothing is written back: changing a weight stays a reviewed edit of ckptmap/heuristics/weights.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import sys
import time

from ckptmap.atomic import write_text_atomic
from ckptmap.benchmarks.cases import derived_families, fixture_families, load_case
from ckptmap.benchmarks.scoring import score_mapping
from ckptmap.heuristics import names
from ckptmap.heuristics.weights import WEIGHTS, ScoreWeights
from ckptmap.solver import solve

# modules that read the weights, and the short names some of them keep (module -> {alias: field})
_USERS = {
    "ckptmap.heuristics.candidates": {"W_NAME": "name", "W_LAYOUT": "layout", "W_COST": "cost", "W_PRIOR": "prior",
                                      "W_ORDINAL": "ordinal", "W_EXPERT_STACK": "expert_stack", "W_CODE": "code",
                                      "MIN_PART_SIMILARITY": "min_part_similarity", "BASE": "base",
                                      "W_UNNAMED_SPLIT": "unnamed_split"},
    "ckptmap.heuristics.names": {"EQUIVALENCE_DISCOUNT": "equivalence_discount"},
    "ckptmap.heuristics.layout": {},
    "ckptmap.heuristics.align": {},
    "ckptmap.heuristics.storage": {},
    "ckptmap.heuristics.coherence": {},
    "ckptmap.solver.solve": {"FILL_MIN_COVERED": "fill_min_covered"},
}


@contextlib.contextmanager
def using(weights: ScoreWeights):
    """Solve with `weights` inside the block (every reader of the weights sees them; caches are cleared)."""
    saved = []
    for module_name, aliases in _USERS.items():
        module = importlib.import_module(module_name)
        saved.append((module, "WEIGHTS", getattr(module, "WEIGHTS")))
        module.WEIGHTS = weights
        for alias, field in aliases.items():
            saved.append((module, alias, getattr(module, alias)))
            setattr(module, alias, getattr(weights, field))
    names.name_similarity.cache_clear()
    names.concept_similarity.cache_clear()
    try:
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)
        names.name_similarity.cache_clear()
        names.concept_similarity.cache_clear()


def split(families: list[str]) -> tuple[list[str], list[str]]:
    """(tuning, held-out): a family is held out when the first byte of sha256(name) is odd (fixed, not random)."""
    held = [f for f in families if hashlib.sha256(f.encode()).digest()[0] % 2]
    return [f for f in families if f not in held], held


def accuracy(cases) -> float:
    """Share of scored targets right (exact or structural) over all cases, solving from the trees alone."""
    right = scored = 0
    for case in cases:
        score = score_mapping(solve(case.src, case.tgt, k_alternatives=0).mapping, case.gt, case.hf_shapes)
        right += score.count("exact") + score.count("structural")
        scored += score.scored
    return right / scored if scored else 0.0


def load_cases(families: list[str]) -> list:
    cases = []
    for family in families:
        for scan in (0, 1):
            case = load_case(family, scan)
            if not isinstance(case, str):
                cases.append(case)
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ckptmap.benchmarks.calibrate_weights",
                                description=__doc__.splitlines()[0])
    p.add_argument("--factors", nargs="+", type=float, default=[0.5, 2.0])
    p.add_argument("--only", nargs="*", help="only these weights (default: the candidate-score weights)")
    p.add_argument("--out", help="also write the table (markdown) here")
    args = p.parse_args(argv)
    tune_f, held_f = split(fixture_families() + derived_families())
    tune, held = load_cases(tune_f), load_cases(held_f)
    names = args.only or ["name", "layout", "cost", "ordinal", "expert_stack", "unnamed_split",
                          "min_part_similarity", "exclusive_penalty", "norm_mismatch_penalty"]
    rows = [f"tuning: {', '.join(tune_f)} ({len(tune)} cases); held out: {', '.join(held_f)} ({len(held)} cases)",
            "", "| weights | tuning % right | held-out % right |", "|---|---|---|"]
    t0 = time.perf_counter()
    with using(WEIGHTS):
        base = (accuracy(tune), accuracy(held))
    rows.append(f"| current | {100 * base[0]:.2f} | {100 * base[1]:.2f} |")
    for name in names:
        for f in args.factors:
            w = dataclasses.replace(WEIGHTS, **{name: getattr(WEIGHTS, name) * f})
            with using(w):
                acc = (accuracy(tune), accuracy(held))
            rows.append(f"| {name} x{f:g} ({getattr(w, name):g}) | {100 * acc[0]:.2f} | {100 * acc[1]:.2f} |")
            print(rows[-1], flush=True)
    rows.append(f"\n{time.perf_counter() - t0:.0f} s")
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
