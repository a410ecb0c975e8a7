"""Naming conventions that are in no fixture: the solver maps them from trees, and verify proves the result."""

from __future__ import annotations

import os

import pytest

from ckptmap.solver import solve
from ckptmap.trees import read_tree

DATA = os.path.join(os.path.dirname(__file__), "data", "maxtext_tiny")
PHI3 = ("hf:phi3 hidden_size=64 num_attention_heads=4 num_key_value_heads=2 intermediate_size=128 "
        "num_hidden_layers=2 vocab_size=256 tie_word_embeddings=false pad_token_id=0 eos_token_id=1 bos_token_id=1 "
        "max_position_embeddings=4096 original_max_position_embeddings=4096")
LLAMA2 = ("maxtext:llama2-7b base_emb_dim=64 base_num_query_heads=4 base_num_kv_heads=2 head_dim=16 base_mlp_dim=128 "
          "base_num_decoder_layers=2 vocab_size=256 scan_layers=true")


def test_phi3_fused_qkv_and_gate_up_split_into_maxtext_llama():
    src = read_tree(PHI3)
    tgt = read_tree(os.path.join(DATA, "llama3.1", "maxtext_params.scan1.json"))
    m = solve(src, tgt).mapping
    assert m.unmapped_targets == [] and m.unused_sources == {}
    qkv = m.rule_for_target("params-decoder-layers-self_attention-key-kernel")
    assert qkv.source_names() == ["model.layers.0.self_attn.qkv_proj.weight", "model.layers.1.self_attn.qkv_proj.weight"]
    assert [s.key for s in qkv.targets] == ["params-decoder-layers-self_attention-query-kernel",
                                            "params-decoder-layers-self_attention-key-kernel",
                                            "params-decoder-layers-self_attention-value-kernel"]
    assert qkv.chain.shape(((128, 64),)) == ((64, 4, 16), (64, 2, 16), (64, 2, 16))
    gate_up = m.rule_for_target("params-decoder-layers-mlp-wi_1-kernel")
    assert [s.key for s in gate_up.targets] == ["params-decoder-layers-mlp-wi_0-kernel",
                                                "params-decoder-layers-mlp-wi_1-kernel"]


@pytest.mark.maxtext
def test_phi3_to_maxtext_llama2_verifies():
    from ckptmap.verify import runners_for, search_and_verify

    result = solve(read_tree(PHI3), read_tree(LLAMA2))
    src, tgt = runners_for(PHI3, LLAMA2, "cpu")
    try:
        mapping, report = search_and_verify(result, src, tgt)
    finally:
        src.close()
        tgt.close()
    assert report.passed
    assert report.kl_max < 1e-9
    assert report.logits.top1_agreement == 1.0


GEMMA1 = ("hf:gemma hidden_size=64 num_attention_heads=4 num_key_value_heads=4 head_dim=16 intermediate_size=128 "
          "num_hidden_layers=2 vocab_size=256 pad_token_id=0 eos_token_id=1 bos_token_id=2")
GEMMA1_MT = ("maxtext:gemma-7b base_emb_dim=64 base_num_query_heads=4 base_num_kv_heads=4 head_dim=16 base_mlp_dim=128 "
             "base_num_decoder_layers=2 vocab_size=256")


@pytest.mark.maxtext
def test_gemma1_value_ops_are_found_by_search():
    """Gemma (v1) is in no fixture: norm +1 offsets, the query scale and the embedding scale are found by KL."""
    from ckptmap.verify import runners_for, search_and_verify

    result = solve(read_tree(GEMMA1), read_tree(GEMMA1_MT))
    assert result.mapping.unmapped_targets == []
    src, tgt = runners_for(GEMMA1, GEMMA1_MT, "cpu")
    try:
        mapping, report = search_and_verify(result, src, tgt)
    finally:
        src.close()
    assert report.passed and report.kl_max < 1e-4
    choices = {d.targets[0]: d.choice for d in report.decisions}
    assert choices["params-decoder-decoder_norm-scale"] == "offset +1"
    assert choices["params-token_embedder-embedding"].startswith("scale sqrt(hidden)")
    assert "scale 1/sqrt(head_dim)" in choices["params-decoder-layers-self_attention-query-kernel"]


GPT2 = ("hf:gpt2 n_embd=16 n_head=2 n_layer=1 vocab_size=1024 n_positions=2048 n_inner=64 activation_function=gelu "
        "tie_word_embeddings=true")


def test_gpt2_conv1d_layout_is_read_off_its_rectangular_matrices():
    """GPT-2's Conv1D stores `.weight` as [in, out]: its rectangular MLP matrices force no transpose, so the square
    and fused attention ones get none either."""
    src = read_tree(GPT2)
    tgt = read_tree(os.path.join(os.path.dirname(__file__), "data", "maxtext_gpt3_52k.json"))
    res = solve(src, tgt)
    assert res.mapping.unmapped_targets == [] and res.mapping.unused_sources == {}
    assert any("layout prior flipped" in n for n in res.notes)
    qkv = res.mapping.rule_for_target("params-decoder-layers-self_attention-qkv_proj-kernel")
    assert "transpose" not in qkv.chain.describe()
    out = res.mapping.rule_for_target("params-decoder-layers-self_attention-out-kernel")
    assert "transpose" not in out.chain.describe()


@pytest.mark.maxtext
def test_gpt2_to_maxtext_gpt3_verifies():
    from ckptmap.verify import runners_for, search_and_verify

    result = solve(read_tree(GPT2), read_tree("maxtext:gpt3-52k"))
    src, tgt = runners_for(GPT2, "maxtext:gpt3-52k", "cpu")
    try:
        _, report = search_and_verify(result, src, tgt)
    finally:
        src.close()
    assert report.passed and report.kl_max < 1e-4
