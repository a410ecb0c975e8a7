"""llama4 (issue 11): MaxText ships llama4-17b-16e / -128e with no HF mapping and no paired HF config.

- The HF expert weight `feed_forward.experts.gate_up_proj` [E, H, 2I] holds gate and up side by side on its last
  axis; MaxText keeps `MoeBlock_0-wi_0` / `wi_1` [E, H, I]. The solver offers the split as a fused candidate (the
  parts carry the roles the fused name names, whatever MaxText's module words) and picks it.
- The tiny pair is derived from MaxText's yml (`verify.tiny.hf_config_from_maxtext`): the transformers type named
  like the decoder block, MaxText's sizes, intervals, chunked window and RoPE.

tests/data/llama4_tiny: the trees of the derived tiny llama4-17b-128e pair (dense and MoE layers alternate, NoPE
every 4th layer): `hf_params.json` (`ckptmap trees hf:<tiny config>`), `maxtext_params.scan{0,1}.json`
(`ckptmap trees maxtext:llama4-17b-128e <tiny overrides> scan_layers=...`).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ckptmap.solver import solve
from ckptmap.trees import read_tree

DATA = os.path.join(os.path.dirname(__file__), "data", "llama4_tiny")
GATE_UP = "feed_forward.experts.gate_up_proj"

# What the derivation reads from MaxText 0.2.5: base.yml's values of the keys it uses, and the model ymls.
BASE = {"normalization_layer_epsilon": 1e-05, "rope_max_timescale": 10000, "rope_type": "default",
        "rope_use_scale": True, "sliding_window_size": 0, "chunk_attn_window_size": 0, "head_dim": 128,
        "use_qk_norm": False, "nope_layer_interval": -1, "interleave_moe_layer_step": 1,
        "temperature_tuning": False, "logits_via_embedding": False, "vocab_size": 32000,
        "routed_scaling_factor": 1.0}
LLAMA4 = {"decoder_block": "llama4", "mlp_activations": ["silu", "linear"], "logits_via_embedding": False,
          "base_emb_dim": 5120, "base_num_decoder_layers": 48, "base_num_query_heads": 40, "base_num_kv_heads": 8,
          "base_moe_mlp_dim": 8192, "vocab_size": 202048, "normalization_layer_epsilon": "1e-05",
          "rope_max_timescale": 500000, "rope_type": "llama3.1", "shared_experts": 1, "num_experts_per_tok": 1,
          "nope_layer_interval": 4, "inhomogeneous_layer_cycle_interval": 4, "temperature_tuning": True,
          "chunk_attn_window_size": 8192}
CATALOG = {"base": BASE, "hf_models": [], "models": {
    "llama4-17b-16e": {**LLAMA4, "base_mlp_dim": 8192, "num_experts": 16, "use_qk_norm": True,
                       "interleave_moe_layer_step": 1},
    "llama4-17b-128e": {**LLAMA4, "base_mlp_dim": 16384, "num_experts": 128, "use_qk_norm": False,
                        "rope_use_scale": False, "interleave_moe_layer_step": 2}}}


def _tree(name):
    return read_tree(os.path.join(DATA, name))


def _gate_up_rule(mapping):
    rules = [r for r in mapping.rules if any(GATE_UP in n for n in r.source_names())]
    assert len(rules) == 1, [r.source_names()[:1] for r in rules]
    return rules[0]


def _target_keys(rule):
    return [s.key if s.key else s.keys[0] for s in rule.targets]


@pytest.mark.parametrize("scan", [0, 1])
def test_gate_up_on_the_last_axis_is_split_into_wi_0_and_wi_1(scan):
    result = solve(_tree("hf_params.json"), _tree(f"maxtext_params.scan{scan}.json"))
    m = result.mapping
    assert m.unmapped_targets == [] and m.unused_sources == {}
    rule = _gate_up_rule(m)
    keys = _target_keys(rule)
    assert [k.rsplit("-", 1)[-1] for k in keys] == ["wi_0", "wi_1"]  # gate first, as the fused name lists it
    assert all("MoeBlock_0" in k for k in keys)
    # [E, H, 2I] -> two [E, H, I], the first half of the last axis to wi_0
    e, h, i2 = 4, 128, 416
    x = np.arange(e * h * i2, dtype=np.float32).reshape(e, h, i2)
    wi_0, wi_1 = rule.chain.apply((x,))
    np.testing.assert_array_equal(wi_0, x[..., :208])
    np.testing.assert_array_equal(wi_1, x[..., 208:])


@pytest.mark.parametrize("scan", [0, 1])
def test_maxtext_to_hf_concatenates_wi_0_and_wi_1_into_gate_up(scan):
    m = solve(_tree(f"maxtext_params.scan{scan}.json"), _tree("hf_params.json")).mapping
    assert m.unmapped_targets == [] and m.unused_sources == {}
    rule = next(r for r in m.rules if any(GATE_UP in (s.key or str(s.keys)) for s in r.targets))
    a, b = np.ones((4, 128, 208), np.float32), np.zeros((4, 128, 208), np.float32)
    (out,) = rule.chain.apply((a, b))
    assert out.shape == (4, 128, 416) and out[..., :208].all() and not out[..., 208:].any()


def test_the_split_is_chosen_over_truncating_gate_up_into_one_part():
    """The fused candidate covers both targets; a 1 -> 1 truncation of gate_up would leave one of them unmapped."""
    result = solve(_tree("hf_params.json"), _tree("maxtext_params.scan1.json"))
    rule = _gate_up_rule(result.mapping)
    assert "split(axis=2, [208, 208])" in rule.chain.describe()
    assert "truncate" not in rule.chain.describe()


def test_llama4_hf_config_is_derived_from_maxtexts_yml():
    from ckptmap.verify.tiny import MAXTEXT_LLAMA31_ROPE, hf_config_from_maxtext

    cfg, notes = hf_config_from_maxtext("llama4-17b-128e", CATALOG)
    assert cfg["model_type"] == "llama4_text" and "transformers' llama4 config" in notes[0]
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == \
        (5120, 40, 8, 128)
    assert cfg["intermediate_size_mlp"] == 16384 and cfg["intermediate_size"] == 8192
    assert cfg["num_local_experts"] == 128 and cfg["interleave_moe_layer_step"] == 2
    assert cfg["moe_layers"] == list(range(1, 48, 2))  # recomputed for the interleave step, not the template's
    assert cfg["no_rope_layers"][:4] == [1, 1, 1, 0] and cfg["attention_chunk_size"] == 8192
    assert cfg["use_qk_norm"] is False and cfg["rms_norm_eps"] == 1e-05
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 500000.0}  # rope_use_scale: false
    cfg16, _ = hf_config_from_maxtext("llama4-17b-16e", CATALOG)
    assert cfg16["moe_layers"] == list(range(48)) and cfg16["use_qk_norm"] is True
    assert cfg16["rope_parameters"] == {**MAXTEXT_LLAMA31_ROPE, "rope_theta": 500000.0}  # MaxText's constants


def test_llama4_tiny_pair_keeps_the_dense_moe_and_nope_cycle():
    from ckptmap.verify.tiny import check_tiny, derive_tiny, hf_config_from_maxtext

    hf, notes = hf_config_from_maxtext("llama4-17b-128e", CATALOG)
    yml = dict(CATALOG["models"]["llama4-17b-128e"], head_dim=128)  # base.yml's head_dim, which the yml leaves
    pair = derive_tiny("llama4-17b-128e", {"model_name": "llama4-17b-128e", "maxtext": yml, "hf": hf,
                                           "derived_notes": notes})
    assert check_tiny(pair) == []
    c = pair.hf_config
    assert c["num_hidden_layers"] == 8 and c["moe_layers"] == [1, 3, 5, 7]
    assert c["no_rope_layers"] == [1, 1, 1, 0, 1, 1, 1, 0] and c["attention_chunk_size"] == 16
    assert c["intermediate_size_mlp"] != c["intermediate_size"]  # dense and expert widths stay apart
    o = pair.overrides_dict()
    assert o["head_dim"] == "16" and o["chunk_attn_window_size"] == "16" and o["base_num_decoder_layers"] == "8"
    assert o["base_mlp_dim"] == str(c["intermediate_size_mlp"]) and o["base_moe_mlp_dim"] == str(c["intermediate_size"])
    # the committed trees are this pair's
    hf_tree = _tree("hf_params.json")
    assert hf_tree.meta["dims"]["layers"] == 8 and hf_tree.meta["dims"]["hidden"] == c["hidden_size"]


@pytest.mark.maxtext
@pytest.mark.parametrize("model,scan", [("llama4-17b-16e", True), ("llama4-17b-16e", False),
                                        ("llama4-17b-128e", True)])
def test_llama4_tiny_solves_and_verifies(tmp_path, model, scan):
    from ckptmap.verify import runners_for, search_and_verify, tiny_specs

    src_spec, tgt_spec = tiny_specs(model, directory=str(tmp_path))
    tgt_spec += f" scan_layers={'true' if scan else 'false'}"
    result = solve(read_tree(src_spec), read_tree(tgt_spec))
    assert result.mapping.unmapped_targets == [] and result.mapping.unused_sources == {}
    _gate_up_rule(result.mapping)
    src, tgt = runners_for(src_spec, tgt_spec, "cpu")
    try:
        _, report = search_and_verify(result, src, tgt)
    finally:
        src.close()
        tgt.close()
    assert report.passed and report.kl_max < 1e-6, report.table()
    assert report.logits.top1_agreement == 1.0
