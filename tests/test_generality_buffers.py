"""Computed buffers (rotary inv_freq, ...) no source holds are reported as such, not as unmapped targets."""

from __future__ import annotations

from ckptmap.heuristics.buffers import is_computed_buffer
from ckptmap.solver import solve
from ckptmap.trees.model import ParamInfo, ParamTree


def _tree(shapes, framework="hf"):
    return ParamTree.from_items([ParamInfo(n, s, "float32") for n, s in shapes.items()], framework=framework)


def test_buffer_words():
    assert is_computed_buffer("model.layers.0.self_attn.rotary_emb.inv_freq")
    assert is_computed_buffer("freqs_cis")
    assert is_computed_buffer("anything", ("buffer",))
    assert not is_computed_buffer("model.layers.0.mlp.up_proj.weight")


def test_inv_freq_targets_are_computed_buffers_not_failures():
    src = _tree({f"model.layers.{i}.self_attn.q_proj.weight": (16, 16) for i in range(2)})
    tgt = _tree({**{f"model.layers.{i}.self_attn.q_proj.weight": (16, 16) for i in range(2)},
                 **{f"model.layers.{i}.self_attn.rotary_emb.inv_freq": (4,) for i in range(2)}})
    result = solve(src, tgt)
    m = result.mapping
    assert m.unmapped_targets == []
    assert m.meta["computed_buffers"] == [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(2)]
    assert any("computed buffer" in n for n in result.notes)


def test_computed_buffers_survive_the_reversed_solve():
    """A scanned (stacked) source is solved the other way and reversed: the target's buffers are still named."""
    src = _tree({"params-decoder-layers-self_attention-query-kernel": (16, 2, 16),
                 "params-decoder-layers-mlp-wi-kernel": (16, 2, 32)}, "maxtext")
    tgt = _tree({**{f"model.layers.{i}.self_attn.q_proj.weight": (16, 16) for i in range(2)},
                 **{f"model.layers.{i}.mlp.fc1.weight": (32, 16) for i in range(2)},
                 "model.rotary_emb.inv_freq": (4,)})
    m = solve(src, tgt).mapping
    assert m.unmapped_targets == [] and m.meta["computed_buffers"] == ["model.rotary_emb.inv_freq"]
