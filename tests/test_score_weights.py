"""Every score weight is one documented field of ScoreWeights, and the calibration harness really swaps them."""

from __future__ import annotations

import dataclasses

from ckptmap.benchmarks.calibrate_weights import split, using
from ckptmap.heuristics import candidates, names
from ckptmap.heuristics.weights import WEIGHTS, ScoreWeights


def test_every_weight_has_a_reason():
    reasons = WEIGHTS.reasons()
    assert set(reasons) == {f.name for f in dataclasses.fields(ScoreWeights)}
    assert all(len(r) > 20 for r in reasons.values())


def test_the_solver_reads_the_weights_it_is_given():
    a, b = "mlp.gate_proj.weight", "mlp.wi_1.kernel"  # a partial match (0.32), where the mix of terms shows
    before = names.name_similarity(a, b)
    heavier = dataclasses.replace(WEIGHTS, name_fuzzy=0.0, name_jaccard=1.0)
    with using(heavier):
        assert candidates.W_NAME == WEIGHTS.name and candidates.WEIGHTS is heavier
        during = names.name_similarity(a, b)
    assert during != before and names.name_similarity(a, b) == before  # restored, cache cleared


def test_the_split_is_fixed_and_covers_every_family():
    fams = ["llama3.1", "mixtral", "gemma2", "qwen3", "deepseek3", "gpt-oss"]
    tune, held = split(fams)
    assert sorted(tune + held) == sorted(fams) and tune and held
    assert split(fams) == (tune, held)
