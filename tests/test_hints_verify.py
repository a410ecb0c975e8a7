"""LLM priors in the full loop: recorded hints shorten verify's search; a wrong hint cannot change the verified
mapping (it costs one recorded trial, and the forward passes decide)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ckptmap.apply import apply_to_dict
from ckptmap.llm_hints import get_priors, load_priors_file
from ckptmap.runner import seeded_tensor
from ckptmap.solver import solve
from ckptmap.trees import read_tree

WRONG = os.path.join(os.path.dirname(__file__), "data", "llm_hints", "wrong", "llama3.1.scan0.wrong.json")


def _verified(priors):
    from ckptmap.verify import runners_for, search_and_verify, tiny_specs

    src_spec, tgt_spec = tiny_specs("llama3.1-8b")
    src_tree, tgt_tree = read_tree(src_spec), read_tree(tgt_spec)
    result = solve(src_tree, tgt_tree, priors=priors)
    src, tgt = runners_for(src_spec, tgt_spec, "cpu")
    try:
        mapping, report = search_and_verify(result, src, tgt, priors=priors)
    finally:
        src.close()
    x = {n: seeded_tensor(n, src_tree[n].shape) for n in src_tree.names()}
    return mapping, report, apply_to_dict(mapping, x)


@pytest.mark.maxtext
def test_recorded_hints_save_verify_forward_passes_and_a_wrong_hint_changes_nothing():
    plain_mapping, plain, plain_out = _verified(None)
    assert plain.passed

    src_spec, tgt_spec = __import__("ckptmap.verify", fromlist=["tiny_specs"]).tiny_specs("llama3.1-8b")
    hinted_priors = get_priors(read_tree(src_spec), read_tree(tgt_spec), mode="cache")
    assert not hinted_priors.is_empty
    _, hinted, hinted_out = _verified(hinted_priors)
    assert hinted.passed
    assert hinted.forwards < plain.forwards / 10
    assert any(t.accepted and t.move.startswith("LLM priors") for t in hinted.trials)

    wrong = load_priors_file(WRONG)
    _, misled, misled_out = _verified(wrong)
    assert misled.passed
    assert not any(t.accepted and t.move.startswith("LLM priors") for t in misled.trials)
    for out in (hinted_out, misled_out):
        assert set(out) == set(plain_out)
        for n in plain_out:
            np.testing.assert_array_equal(out[n], plain_out[n], err_msg=n)
