"""Packed tensors whose names do not list their parts (hyper-connection mixes) against role families, and the
derived DeepSeek-V4 case (a family in no fixture) solved from the trees alone."""

from __future__ import annotations

import pytest

from ckptmap.heuristics.candidates import Operand, role_families
from ckptmap.heuristics.names import name_similarity, part_rank


def _ops(shapes: dict[str, tuple[int, ...]]) -> list[Operand]:
    return [Operand(local, shape, []) for local, shape in shapes.items()]


def test_role_families_group_one_varying_word_in_packing_order():
    ops = _ops({"mhc-res_alpha": (8, 16), "mhc-post_alpha": (8, 4), "mhc-pre_alpha": (8, 4),
                "mhc-pre_alpha_scale": (1,), "mhc-post_alpha_scale": (1,), "mhc-res_alpha_scale": (1,),
                "mhc-pre_beta": (4,), "norm-scale": (8,)})
    fams = {tuple(ops[k].local for k in f) for f in role_families(ops)}
    assert ("mhc-pre_alpha", "mhc-post_alpha", "mhc-res_alpha") in fams
    assert ("mhc-pre_alpha_scale", "mhc-post_alpha_scale", "mhc-res_alpha_scale") in fams
    assert ("mhc-pre_alpha", "mhc-pre_beta") in fams  # a family by shape only: sizes decide what it can take
    assert not any("norm-scale" in f for f in fams)
    assert part_rank("pre") < part_rank("post") < part_rank("res")


def test_norm_names_of_pre_norm_blocks():
    # the norm after attention is the norm before the feed-forward; an exact pair still wins
    assert name_similarity("ffn_norm.weight", "post_self_attention_layer_norm-scale") > \
        name_similarity("ffn_norm.weight", "pre_self_attention_layer_norm-scale")
    assert name_similarity("attn_norm.weight", "pre_self_attention_layer_norm-scale") == 1.0
    assert name_similarity("pre_feedforward_layernorm.weight", "pre_ffw_norm-scale") > \
        name_similarity("pre_feedforward_layernorm.weight", "post_self_attention_norm-scale")
    assert name_similarity("attn.compressor.ape", "self_attention-csa_compressor-position_bias") > 0.5


@pytest.mark.parametrize("scan", [0, 1])
def test_derived_deepseek4_trees_only(scan):
    from ckptmap.benchmarks.cases import load_case
    from ckptmap.benchmarks.scoring import score_mapping
    from ckptmap.solver import solve

    case = load_case("derived/deepseek4", scan)
    result = solve(case.src, case.tgt)
    score = score_mapping(result.mapping, case.gt, case.hf_shapes)
    verdicts = {t.name: t.verdict for t in score.targets}
    assert score.pct_structural == 100.0, score.summary()
    hc = [n for n in verdicts if "mhc_" in n and "mhc_norm" not in n]
    assert hc and all(verdicts[n] == "exact" for n in hc)  # hc_{attn,ffn}_{fn,base,scale} split into pre/post/res
    assert all(verdicts[n] == "exact" for n in verdicts if "layer_norm" in n or "position_bias" in n or "o_a_proj" in n)
