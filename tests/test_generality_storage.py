"""A square projection is stored the way its module's non-square siblings are (heuristics.storage)."""

from __future__ import annotations

import numpy as np

from ckptmap.heuristics.storage import signature
from ckptmap.solver import solve
from ckptmap.trees.model import ParamInfo, ParamTree
from ckptmap.transforms import search_chains


def _tree(shapes, framework):
    return ParamTree.from_items([ParamInfo(n, s, "float32") for n, s in shapes.items()], framework=framework)


def test_signature_says_where_each_source_axis_goes():
    chains = search_chains(((64, 64),), ((4, 64, 16),), {})
    sigs = {signature(c, (64, 64)) for c in chains}
    assert (2, 1) in sigs and (1, 2) in sigs  # torch in-axis -> kernel axis 1, or (the wrong reading) axis 2


def test_square_query_takes_the_layout_its_key_and_value_force():
    heads, kv, hd, hidden = 4, 2, 16, 64
    src = _tree({f"model.layers.{i}.self_attn.{n}.weight": s for i in range(2)
                 for n, s in (("q_proj", (heads * hd, hidden)), ("k_proj", (kv * hd, hidden)),
                              ("v_proj", (kv * hd, hidden)))}, "hf")
    tgt = _tree({f"decoder_block_{i}/attention/{n}/kernel": s for i in range(2)
                 for n, s in (("query", (heads, hidden, hd)), ("key", (kv, hidden, hd)), ("value", (kv, hidden, hd)))},
                "keras")
    m = solve(src, tgt).mapping
    rule = m.rule_for_target("decoder_block_0/attention/query/kernel")
    q = np.arange(heads * hd * hidden, dtype=np.float32).reshape(heads * hd, hidden)
    (out,) = rule.chain.apply((q,))
    expected = q.reshape(heads, hd, hidden).transpose(0, 2, 1)
    np.testing.assert_array_equal(out, expected)


def test_the_adapters_declared_storage_decides_a_square_matrix_names_cannot():
    """Leaves `w` say nothing about storage; the keras adapter declares [in, out], HF's torch [out, in]."""
    from ckptmap.heuristics.layout import tree_layout

    src = _tree({f"layers.{i}.proj.weight": (32, 32) for i in range(2)}, "hf")
    tgt = _tree({f"block_{i}/proj/w": (32, 32) for i in range(2)}, "keras")
    assert tree_layout(tgt) == "flax" and tree_layout(src) == "torch"
    rule = solve(src, tgt).mapping.rule_for_target("block_0/proj/w")
    assert rule.chain.describe() == "transpose(1, 0)"
