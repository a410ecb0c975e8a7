"""One module, one source: a target module's bias follows its kernel's source module (heuristics.coherence)."""

from __future__ import annotations

from ckptmap.heuristics.coherence import split_leaf
from ckptmap.solver import solve
from ckptmap.trees.model import ParamInfo, ParamTree


def _tree(shapes, framework):
    return ParamTree.from_items([ParamInfo(n, s, "float32") for n, s in shapes.items()], framework=framework)


def test_split_leaf():
    assert split_leaf("attn/query/kernel") == ("attn/query", "kernel")
    assert split_leaf("mlp.experts.gate_up_proj") is None


def test_bias_follows_the_kernels_source_module_over_a_closer_looking_name():
    # Kernels are told apart by shape (fc_a reads 16 inputs, fc_b 4); the biases are all [8]. Target names
    # cross the letters, so a bias matched by name alone would come from the other module.
    src = _tree({f"layers.{i}.mlp.{n}": s for i in range(2) for n, s in (
        ("fc_a.weight", (8, 16)), ("fc_a.bias", (8,)), ("fc_b.weight", (8, 4)), ("fc_b.bias", (8,)))}, "hf")
    tgt = _tree({f"block_{i}/ff/{n}": s for i in range(2) for n, s in (
        ("dense_b/kernel", (16, 8)), ("dense_b/bias", (8,)), ("dense_a/kernel", (4, 8)), ("dense_a/bias", (8,)))},
        "keras")
    m = solve(src, tgt).mapping
    assert m.rule_for_target("block_0/ff/dense_b/kernel").source_names()[0] == "layers.0.mlp.fc_a.weight"
    assert m.rule_for_target("block_0/ff/dense_b/bias").source_names()[0] == "layers.0.mlp.fc_a.bias"
    assert m.rule_for_target("block_1/ff/dense_a/bias").source_names()[-1] == "layers.1.mlp.fc_b.bias"
