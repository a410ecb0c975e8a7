"""Retargeting a mapping onto the model's variable names and back (ckptmap.verify.retarget): deepseek3's router
bias is `params-...-gate-bias` in the fixture and MaxText's conversion table, `MoEBiasVar-...-gate-bias` in MaxText's
model, stacked at axis 0 instead of the scan axis when scanned."""

from __future__ import annotations

import numpy as np

from ckptmap.apply import apply_to_dict
from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.transforms import Chain
from ckptmap.verify.retarget import Rename, Retargeted, invert, moved_axes, retarget, target_renames


def test_moved_axes_finds_the_one_placement_of_the_stacked_axes():
    assert moved_axes((4, 2), (1,), (2, 4)) == (0,)  # [experts, layers] -> [layers, experts]
    assert moved_axes((4, 2), (1,), (4, 2)) == (1,)
    assert moved_axes((4, 4), (1,), (4, 4)) == (1,)  # same shape: nothing moves
    assert moved_axes((4,), (), (4,)) == ()
    assert moved_axes((4,), (), (5,)) is None and moved_axes((4, 2), (1,), (8,)) is None


def test_router_bias_is_verified_under_the_models_collection_and_put_back():
    old = "params-decoder-moe_layers-DeepSeekMoeBlock_0-MoeBlock_0-gate-bias"
    new = "MoEBiasVar-decoder-moe_layers-DeepSeekMoeBlock_0-MoeBlock_0-gate-bias"
    keys = ["model.layers.1.mlp.gate.e_score_correction_bias", "model.layers.2.mlp.gate.e_score_correction_bias"]
    rule = Rule((Slot.per_cell(keys),), (Slot.stacked(old, (1,)),), Chain(()), grid=(2,))
    other = Rule((Slot.single("model.norm.weight"),), (Slot.single("params-decoder-decoder_norm-scale"),), Chain(()))
    mapping = Mapping(rules=[rule, other], source="hf", target="maxtext")
    model = {new: (2, 4), "params-decoder-decoder_norm-scale": (64,)}
    renames = target_renames(mapping, {old: (4, 2), "params-decoder-decoder_norm-scale": (64,)}, model)
    assert renames == [Rename(old, new, (1,), (0,))]
    moved = retarget(mapping, renames)
    assert moved.rules[0].targets[0] == Slot.stacked(new, (0,)) and moved.rules[1] == other

    src = {keys[0]: np.arange(4.0), keys[1]: np.arange(4.0) + 10, "model.norm.weight": np.ones(64)}
    np.testing.assert_array_equal(apply_to_dict(moved, src)[new], apply_to_dict(mapping, src)[old].T)
    back = retarget(moved, invert(renames))
    assert back.rules == mapping.rules
    view = Retargeted(type("Solved", (), {"mapping": mapping, "alternatives": {0: [rule]}})(), renames)
    assert view.mapping.rules[0].targets[0].key == new and view.alternatives[0][0].targets[0].key == new


def test_no_rename_when_the_model_has_the_name_or_the_match_is_ambiguous():
    mapping = Mapping(rules=[Rule((Slot.single("a"),), (Slot.single("params-x-bias"),), Chain(()))],
                      source="hf", target="maxtext")
    assert target_renames(mapping, {"params-x-bias": (4,)}, {"params-x-bias": (4,)}) == []
    assert target_renames(mapping, {"params-x-bias": (4,)}, {"A-x-bias": (4,), "B-x-bias": (4,)}) == []
    assert target_renames(mapping, {"params-x-bias": (4,)}, {"A-x-bias": (5,)}) == []
