"""Gated-MLP roles across naming conventions: gate / up / down read from words and from siblings."""

from __future__ import annotations

from ckptmap.heuristics.names import concept_similarity, concepts, name_similarity
from ckptmap.heuristics.roles import refine_roles
from ckptmap.solver import solve
from ckptmap.trees.model import ParamInfo, ParamTree


def _tree(shapes: dict[str, tuple[int, ...]], framework: str) -> ParamTree:
    return ParamTree.from_items([ParamInfo(n, s, "float32") for n, s in shapes.items()], framework=framework)


def test_gate_scores_below_up_against_an_intermediate_beside_a_gate():
    keras = ["ffn_gate_dense/kernel", "ffn_intermediate_dense/kernel", "ffn_output_dense/kernel"]
    read = refine_roles(keras)
    up, gate = concepts("mlp.up_proj.weight"), concepts("mlp.gate_proj.weight")
    inter = read["ffn_intermediate_dense/kernel"]
    assert concept_similarity(up, inter) > concept_similarity(gate, inter)
    assert concept_similarity(gate, read["ffn_gate_dense/kernel"]) > concept_similarity(up, read["ffn_gate_dense/kernel"])


def test_intermediate_alone_stays_the_plain_input_projection():
    """BERT's intermediate.dense has no gate sibling: it is the only input projection (wi), not `up`."""
    read = refine_roles(["intermediate.dense.weight", "output.dense.weight"])
    assert "wi" in read["intermediate.dense.weight"] and "wi_1" not in read["intermediate.dense.weight"]


def test_numbered_twin_gates_are_gate_then_up():
    read = refine_roles(["ffw_gating/kernel", "ffw_gating_2/kernel", "ffw_linear/kernel"])
    assert "wi_0" in read["ffw_gating/kernel"] and "wi_1" in read["ffw_gating_2/kernel"]


def test_a_gate_word_reads_as_the_router_against_a_router():
    assert name_similarity("moe_block.gate.weight", "sparse_gate_dense/kernel") > \
        name_similarity("mlp.up_proj.weight", "sparse_gate_dense/kernel")


def _mlp_trees(gate_name: str, up_name: str, down_name: str):
    h, f = 8, 16
    src = _tree({f"model.layers.{i}.mlp.{n}.weight": s for i in range(2)
                 for n, s in (("gate_proj", (f, h)), ("up_proj", (f, h)), ("down_proj", (h, f)))}, "hf")
    tgt = _tree({f"block_{i}/{n}/kernel": s for i in range(2)
                 for n, s in ((gate_name, (h, f)), (up_name, (h, f)), (down_name, (f, h)))}, "keras")
    return src, tgt


def test_solver_maps_gate_and_up_onto_a_gate_intermediate_convention():
    src, tgt = _mlp_trees("ffn_gate_dense", "ffn_intermediate_dense", "ffn_output_dense")
    m = solve(src, tgt).mapping
    assert m.unmapped_targets == []
    assert m.rule_for_target("block_0/ffn_gate_dense/kernel").source_names()[0] == "model.layers.0.mlp.gate_proj.weight"
    assert m.rule_for_target("block_0/ffn_intermediate_dense/kernel").source_names()[0] == \
        "model.layers.0.mlp.up_proj.weight"


def test_solver_maps_numbered_gating_twins():
    src, tgt = _mlp_trees("ffw_gating", "ffw_gating_2", "ffw_linear")
    m = solve(src, tgt).mapping
    assert m.rule_for_target("block_1/ffw_gating/kernel").source_names()[-1] == "model.layers.1.mlp.gate_proj.weight"
    assert m.rule_for_target("block_1/ffw_gating_2/kernel").source_names()[-1] == "model.layers.1.mlp.up_proj.weight"


def test_a_number_every_part_of_a_module_carries_is_no_ordinal():
    """KerasHub names layer 1's MoE block `moe_block_1/...`: its 1 must not pull Mixtral's w1 to every part."""
    h, f, e = 8, 16, 2
    src = _tree({f"model.layers.{i}.moe.experts.{k}.{n}.weight": s for i in range(2) for k in range(e)
                 for n, s in (("w1", (f, h)), ("w3", (f, h)), ("w2", (h, f)))}, "hf")
    tgt = _tree({f"layer_{i}/moe_block_{i}/experts/expert_{n}": s for i in range(2)
                 for n, s in (("gate_dense", (e, h, f)), ("intermediate_dense", (e, h, f)),
                              ("output_dense", (e, f, h)))}, "keras")
    m = solve(src, tgt).mapping
    for i in range(2):
        rule = m.rule_for_target(f"layer_{i}/moe_block_{i}/experts/expert_intermediate_dense")
        assert all(".w3." in n for n in rule.source_names()), rule.source_names()


def test_a_masked_lm_heads_transform_goes_to_the_mlm_head_not_the_pooler():
    """BERT's cls.predictions.transform.dense is KerasHub's mlm_head/intermediate_dense; a pooler a masked-LM
    checkpoint does not hold stays unmapped rather than taking it."""
    src = _tree({"cls.predictions.transform.dense.weight": (16, 16), "cls.predictions.transform.dense.bias": (16,)},
                "hf")
    tgt = _tree({"mlm_head/intermediate_dense/kernel": (16, 16), "mlm_head/intermediate_dense/bias": (16,),
                 "pooled_dense/kernel": (16, 16), "pooled_dense/bias": (16,)}, "keras")
    m = solve(src, tgt).mapping
    assert m.rule_for_target("mlm_head/intermediate_dense/kernel").source_names() == \
        ["cls.predictions.transform.dense.weight"]
    assert sorted(m.unmapped_targets) == ["pooled_dense/bias", "pooled_dense/kernel"]
