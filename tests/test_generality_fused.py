"""Fused projections split into per-role targets under other names; sources shared only where models tie."""

from __future__ import annotations

from ckptmap.solver import solve
from ckptmap.trees.model import ParamInfo, ParamTree

H = 32


def _tree(shapes, framework="hf"):
    return ParamTree.from_items([ParamInfo(n, s, "float32") for n, s in shapes.items()], framework=framework)


def test_in_proj_qkv_and_its_bias_split_into_wq_wk_wv():
    src = _tree({f"blocks.{i}.attn.{n}": s for i in range(2) for n, s in (
        ("in_proj_qkv.weight", (3 * H, H)), ("in_proj_qkv.bias", (3 * H,)), ("out_proj.weight", (H, H)),
        ("out_proj.bias", (H,)))})
    tgt = _tree({f"layers.{i}.attention.{n}": s for i in range(2) for n, s in (
        ("wq.weight", (H, H)), ("wk.weight", (H, H)), ("wv.weight", (H, H)), ("wq.bias", (H,)), ("wk.bias", (H,)),
        ("wv.bias", (H,)), ("wo.weight", (H, H)), ("wo.bias", (H,)))})
    m = solve(src, tgt).mapping
    assert m.unmapped_targets == [] and m.unused_sources == {}
    rule = m.rule_for_target("layers.0.attention.wk.bias")
    assert rule.source_names()[0] == "blocks.0.attn.in_proj_qkv.bias"
    assert [s.names()[0] for s in rule.targets] == [f"layers.0.attention.w{r}.bias" for r in "qkv"]
    assert rule.chain.shape(((3 * H,),)) == ((H,), (H,), (H,))


def test_in_proj_qkv_splits_into_in_proj_q_k_v_and_z_is_not_shared():
    src = _tree({f"blocks.{i}.attn.{n}": s for i in range(2) for n, s in (
        ("in_proj_qkv.weight", (3 * H, H)), ("in_proj_z.weight", (H, H)), ("out_proj.weight", (H, H)))})
    tgt = _tree({f"layers.{i}.attention.{n}": s for i in range(2) for n, s in (
        ("in_proj_q.weight", (H, H)), ("in_proj_k.weight", (H, H)), ("in_proj_v.weight", (H, H)),
        ("in_proj_z.weight", (H, H)), ("o_proj.weight", (H, H)))})
    m = solve(src, tgt).mapping
    assert m.unmapped_targets == []
    assert m.rule_for_target("layers.1.attention.in_proj_v.weight").source_names()[-1] == \
        "blocks.1.attn.in_proj_qkv.weight"
    assert m.rule_for_target("layers.0.attention.in_proj_z.weight").source_names() == \
        ["blocks.0.attn.in_proj_z.weight", "blocks.1.attn.in_proj_z.weight"]
    assert not any(r.explain.get("shared_source") for r in m.rules)


def test_shared_source_stays_for_tied_embeddings():
    src = _tree({"model.embed_tokens.weight": (256, H), "model.norm.weight": (H,)})
    tgt = _tree({"token_embedding/embeddings": (256, H), "lm_head/kernel": (256, H), "final_norm/scale": (H,)},
                "keras")
    m = solve(src, tgt).mapping
    assert m.unmapped_targets == []
    assert m.rule_for_target("lm_head/kernel").source_names() == ["model.embed_tokens.weight"]


def test_a_projection_left_without_source_is_not_fed_from_a_sibling():
    src = _tree({f"layers.{i}.attn.{n}.weight": (H, H) for i in range(2) for n in ("q_proj", "o_proj")})
    tgt = _tree({f"layers.{i}.attn.{n}.weight": (H, H) for i in range(2) for n in ("q_proj", "o_proj", "v_proj")})
    m = solve(src, tgt).mapping
    assert sorted(m.unmapped_targets) == ["layers.0.attn.v_proj.weight", "layers.1.attn.v_proj.weight"]
