"""Encoder stacks whose layer axis sits at different places in different tensors are aligned whole."""

from __future__ import annotations

import numpy as np

from ckptmap.apply import apply_rule
from ckptmap.heuristics.structure import analyse
from ckptmap.solver import solve
from ckptmap.trees.model import ParamInfo, ParamTree

H, L, F, NH, HD = 16, 3, 32, 2, 8


def _tree(shapes, framework):
    return ParamTree.from_items([ParamInfo(n, s, "float32") for n, s in shapes.items()], framework=framework)


def _bert_like():
    per_layer = {"attention.self.query.weight": (H, H), "attention.self.query.bias": (H,),
                 "attention.self.key.weight": (H, H), "attention.self.key.bias": (H,),
                 "attention.output.dense.weight": (H, H), "attention.output.dense.bias": (H,),
                 "attention.output.LayerNorm.weight": (H,), "attention.output.LayerNorm.bias": (H,),
                 "intermediate.dense.weight": (F, H), "intermediate.dense.bias": (F,),
                 "output.dense.weight": (H, F), "output.dense.bias": (H,)}
    return _tree({f"encoder.layer.{i}.{n}": s for i in range(L) for n, s in per_layer.items()}, "hf")


def _stacked_encoder():
    # kernels stack layers at axis 1, biases and norms at axis 0: no one axis position holds for the whole scan
    return _tree({"params-encoder-layers-attention-query-kernel": (H, L, NH, HD),
                  "params-encoder-layers-attention-query-bias": (L, NH, HD),
                  "params-encoder-layers-attention-key-kernel": (H, L, NH, HD),
                  "params-encoder-layers-attention-key-bias": (L, NH, HD),
                  "params-encoder-layers-attention-out-kernel": (NH, L, HD, H),
                  "params-encoder-layers-attention-out-bias": (L, H),
                  "params-encoder-layers-attention_norm-scale": (L, H),
                  "params-encoder-layers-attention_norm-bias": (L, H),
                  "params-encoder-layers-mlp-wi-kernel": (H, L, F), "params-encoder-layers-mlp-wi-bias": (L, F),
                  "params-encoder-layers-mlp-wo-kernel": (F, L, H), "params-encoder-layers-mlp-wo-bias": (L, H)},
                 "maxtext")


def test_the_scan_axis_is_found_per_tensor():
    units = analyse(_stacked_encoder()).slots
    assert len(units) == L
    for slot in units.values():
        shapes = {u.local: u.shape for u in slot.units}
        assert shapes["attention-query-kernel"] == (H, NH, HD) and shapes["attention-query-bias"] == (NH, HD)


def test_encoder_maps_whole_and_values_land_per_layer():
    src, tgt = _bert_like(), _stacked_encoder()
    m = solve(src, tgt).mapping
    assert m.unmapped_targets == [] and m.unused_sources == {}
    rule = m.rule_for_target("params-encoder-layers-attention-query-bias")
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal(src[n].shape).astype(np.float32) for n in rule.source_names()}
    (name, out), = list(apply_rule(rule, arrays.__getitem__))
    assert out.shape == (L, NH, HD)
    np.testing.assert_array_equal(out[2].reshape(-1), arrays["encoder.layer.2.attention.self.query.bias"])
