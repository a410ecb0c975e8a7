"""verify names what the two configs disagree on (ckptmap.verify.config_diff), the tied-table cast is measured and
taken out (tied_cast), integer index tables get valid values (weights), and the report carries all of it.

Fast tests read MaxText's function config of each fixture from tests/data/verify/fixture_function_configs.json; the
maxtext-marked test reads it live and checks the stored file still says the same."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ckptmap.verify.config_diff import diff_configs, hf_settings, maxtext_settings
from ckptmap.verify.metrics import (KL_FLOAT32, KL_FLOAT32_RECURRENT, KL_FLOAT32_RECURRENT_LONG, KL_FLOAT32_TIED_CAST,
                                    LogitStats, kl_threshold)
from ckptmap.verify.report import VerifyReport
from ckptmap.verify.tied_cast import TiedHead, cast_effect, on_bf16_grid, round_to_bf16
from ckptmap.verify.weights import random_index_table, random_params

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "data", "maxtext_tiny")
STORED = os.path.join(HERE, "data", "verify", "fixture_function_configs.json")


def fixture(family: str) -> dict:
    with open(os.path.join(FIXTURES, family, "config.json")) as f:
        return json.load(f)


def stored(family: str) -> dict:
    with open(STORED) as f:
        return json.load(f)[family]


def by_setting(diffs) -> dict:
    return {d.setting: d for d in diffs}


# ---- the fixtures' known disagreements ---------------------------------------------------------------------------
def test_gemma2_fixture_query_pre_attn_scalar_is_named():
    d = by_setting(diff_configs(fixture("gemma2")["hf_config"], stored("gemma2"), seq_len=64))
    assert list(d) == ["query scale"]
    assert (d["query scale"].hf, d["query scale"].maxtext) == ("1/sqrt(256)", "1/sqrt(16)")
    assert "query_pre_attn_scalar" in d["query scale"].why and "folds" in d["query scale"].why


def test_gemma3_fixture_rope_theta_is_named():
    d = by_setting(diff_configs(fixture("gemma3")["hf_config"], stored("gemma3"), seq_len=64))
    theta = d["rope theta (global layers)"]
    assert (theta.hf, theta.maxtext, theta.why) == ("10000", "1000000", "rope_max_timescale")
    assert "rope theta (local layers)" not in d  # local_rope_max_timescale 10000 on both sides
    assert "rope scaling (global layers)" not in d  # linear x8 on both sides
    assert d["query scale"].hf == "1/sqrt(256)"  # the fixture also keeps the real query_pre_attn_scalar
    # MaxText's paired gemma3-4b HF config says "gelu" (transformers: exact erf); MaxText's jax.nn.gelu is tanh
    assert (d["mlp activation"].hf, d["mlp activation"].maxtext) == ("gelu (exact erf)", "gelu (tanh approximation)")


def test_tiny_pairs_take_the_activation_maxtext_computes():
    from ckptmap.verify.config_diff import reconcile_activation

    hf = {"hidden_activation": "gelu"}
    assert reconcile_activation(hf, {"mlp_activations": ["gelu", "linear"]}) and hf["hidden_activation"] == (
        "gelu_pytorch_tanh")
    hf = {"hidden_act": "silu"}
    assert reconcile_activation(hf, {}) == [] and hf["hidden_act"] == "silu"  # base.yml's silu: already the same
    hf = {"hidden_act": "silu"}
    assert reconcile_activation(hf, {"decoder_block": "gpt_oss", "mlp_activations": ["sigmoid", "linear"]}) == []


def test_olmo3_fixture_yarn_is_named():
    d = by_setting(diff_configs(fixture("olmo3")["hf_config"], stored("olmo3"), seq_len=64))
    assert list(d) == ["rope scaling (all layers)"]  # global and local layers alike: one line
    yarn = d["rope scaling (all layers)"]
    assert yarn.hf == "default" and yarn.maxtext.startswith("yarn (factor 8, original 8192")
    assert yarn.why == "rope_type yarn"


def test_qwen35_fixture_partial_rotary_is_named():
    d = by_setting(diff_configs(fixture("qwen3.5")["hf_config"], stored("qwen3.5"), seq_len=64))
    assert list(d) == ["rotary fraction (all layers)"]
    assert (d["rotary fraction (all layers)"].hf, d["rotary fraction (all layers)"].maxtext) == ("0.25", "0.5")


def test_deepseek32_fixture_indexer_ties_are_named():
    d = by_setting(diff_configs(fixture("deepseek3.2")["hf_config"], stored("deepseek3.2"), seq_len=64))
    assert list(d) == ["indexer ties"]
    assert "2 indexer heads" in d["indexer ties"].why and "top-4" in d["indexer ties"].why


def test_a_consistent_fixture_has_no_difference():
    assert diff_configs(fixture("llama3.1")["hf_config"], stored("llama3.1"), seq_len=64) == []


# ---- how MaxText decides, by hand-written configs ----------------------------------------------------------------
LLAMA_HF = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
LLAMA_MT = {"model_name": "llama3.1-8b", "decoder_block": "DecoderBlockType.LLAMA2", "head_dim": 16,
            "rope_type": "default", "rope_use_scale": True, "rope_max_timescale": 500000,
            "normalization_layer_epsilon": 1e-5, "logits_via_embedding": False, "final_logits_soft_cap": 0.0,
            "attn_logits_soft_cap": 0.0, "sliding_window_size": 0, "partial_rotary_factor": 1.0}
LLAMA3_SCALING = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_llama31_rope_scaling_applied_by_model_name_is_named():
    (d,) = diff_configs(LLAMA_HF, LLAMA_MT)
    assert d.describe() == ("rope scaling (all layers): HF default, MaxText llama3 (factor 8, low 1, high 4, "
                            "original 8192) -- applied by model name llama3.1")


def test_llama31_scaling_agrees_and_rope_use_scale_off_is_named():
    hf = dict(LLAMA_HF, rope_parameters=LLAMA3_SCALING)
    assert diff_configs(hf, LLAMA_MT) == []
    (d,) = diff_configs(hf, dict(LLAMA_MT, rope_use_scale=False))
    assert (d.hf, d.maxtext) == ("llama3 (factor 8, low 1, high 4, original 8192)", "default")
    assert d.why == "applied by model name llama3.1, rope_use_scale false"
    # another model with rope_type llama3.1 (llama4) gets the same fixed factors, by its rope_type
    (d,) = diff_configs(dict(hf, rope_parameters=dict(LLAMA3_SCALING, factor=16.0)),
                        dict(LLAMA_MT, model_name="llama4-17b-16e", rope_type="llama3.1"))
    assert d.setting == "rope scaling (all layers)" and "factor 16" in d.hf and "factor 8" in d.maxtext
    assert d.why == "rope_type llama3.1"


def test_eps_soft_caps_tied_and_windows():
    hf = dict(LLAMA_HF, rope_parameters=LLAMA3_SCALING, rms_norm_eps=1e-6, final_logit_softcapping=30.0,
              tie_word_embeddings=True, layer_types=["sliding_attention", "full_attention"], sliding_window=4096)
    mt = dict(LLAMA_MT, sliding_window_size=16, final_logits_soft_cap=0.0)
    d = by_setting(diff_configs(hf, mt, seq_len=64))
    assert (d["norm epsilon"].hf, d["norm epsilon"].maxtext) == ("1e-06", "1e-05")
    assert (d["final logit soft-cap"].hf, d["final logit soft-cap"].maxtext) == ("30", "off")
    assert (d["tied embeddings"].hf, d["tied embeddings"].maxtext) == ("tied", "untied")
    assert d["sliding window"].matters  # MaxText's 16 masks inside the 64 tokens
    d = by_setting(diff_configs(hf, dict(mt, sliding_window_size=8192), seq_len=64))
    assert not d["sliding window"].matters and "no effect" in d["sliding window"].describe()


def test_gemma_eps_is_maxtexts_fixed_one_and_gemma3_local_layers_skip_the_linear_factor():
    mt = {"model_name": "gemma3-4b", "decoder_block": "DecoderBlockType.GEMMA3", "head_dim": 16,
          "rope_type": "default", "rope_max_timescale": 1e6, "local_rope_max_timescale": 10000,
          "rope_linear_scaling_factor": 8.0, "normalization_layer_epsilon": 1e-3}
    s = maxtext_settings(mt)
    assert s["norm epsilon"].value == 1e-6 and "fixed" in s["norm epsilon"].why
    assert s["rope scaling (global)"].text == "linear (factor 8)" and s["rope scaling (local)"].text == "default"
    assert (s["rope theta (global)"].value, s["rope theta (local)"].value) == (1e6, 10000.0)


def test_deepseek_v4_rope_labels_and_compressed_layers():
    hf = {"model_type": "deepseek_v4", "hidden_size": 32, "num_attention_heads": 4, "head_dim": 16,
          "layer_types": ["sliding_attention", "compressed_sparse_attention"],
          "rope_parameters": {"main": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
                              "compress": {"rope_type": "default", "rope_theta": 160000,
                                           "partial_rotary_factor": 0.25}}}
    mt = {"model_name": "deepseek4-284b", "decoder_block": "DecoderBlockType.DEEPSEEK4", "head_dim": 16,
          "qk_rope_head_dim": 4, "rope_type": "default", "rope_max_timescale": 10000,
          "compressed_rope_max_timescale": 160000}
    assert diff_configs(hf, mt) == []
    (d,) = diff_configs(hf, dict(mt, compressed_rope_max_timescale=10000))
    assert d.setting == "rope theta (compressed layers)" and (d.hf, d.maxtext) == ("160000", "10000")


def test_hf_settings_read_older_rope_scaling_keys():
    s = hf_settings({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 10000.0,
                     "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    assert s["rope scaling (all layers)"].text == "linear (factor 2)" and s["rope theta (all layers)"].value == 1e4


# ---- the report ----------------------------------------------------------------------------------------------------
def test_report_names_each_disagreement_in_table_and_json():
    diffs = diff_configs(LLAMA_HF, LLAMA_MT)
    stats = LogitStats(kl_max=6.5e-4, kl_mean=1e-4, max_abs_diff=0.1, top1_agreement=0.98, vocab=256, tokens=64)
    report = VerifyReport(passed=False, dtype="float32", kl_threshold=KL_FLOAT32, tolerance=1e-3, logits=stats,
                          config_diff=diffs, long_range={"tokens": 1024, "kl_max": 0.58, "kl_threshold": KL_FLOAT32,
                                                         "passed": False, "top1_agreement": 0.66})
    text = report.table()
    assert "config differences (HF vs MaxText, 1):" in text
    assert "rope scaling (all layers): HF default, MaxText llama3 (factor 8, low 1, high 4, original 8192) -- " \
           "applied by model name llama3.1" in text
    assert "long sequence (1024 tokens): FAIL  max KL 0.5800" in text
    j = report.to_json()
    assert j["config_diff"][0]["setting"] == "rope scaling (all layers)" and j["config_diff"][0]["hf"] == "default"
    assert j["kl_max"] == 0.58 and report.kl_max == 0.58 and j["passed"] is False
    assert json.loads(json.dumps(j)) == j


# ---- pass marks ----------------------------------------------------------------------------------------------------
def test_pass_marks_are_set_from_the_floors():
    # measured floors of correct mappings (ckptmap/benchmarks/RESULTS.md, "Verify: pass marks from the floors")
    assert kl_threshold("float32") == KL_FLOAT32
    assert 50 * 1.5e-9 <= KL_FLOAT32 <= 3.8e-6 / 30  # above the attention models' floor, below the llama4 RoPE miss
    assert kl_threshold("float32", recurrent=True) == KL_FLOAT32_RECURRENT >= 20 * 4.3e-8
    assert kl_threshold("float32", recurrent=True, long=True) == KL_FLOAT32_RECURRENT_LONG >= 20 * 5.0e-6
    assert kl_threshold("float32", tied_cast=True) == KL_FLOAT32_TIED_CAST >= 5 * 1.8e-5
    assert kl_threshold("bfloat16") == 1e-2 and kl_threshold("bfloat16", tied_cast=True, recurrent=True) == 1e-2


# ---- the tied-table cast -------------------------------------------------------------------------------------------
def test_round_to_bf16_is_what_a_bf16_cast_keeps():
    import torch

    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 3
    x[:4] = [0.0, -0.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8]  # ties to even both ways
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.array_equal(round_to_bf16(x), want)
    assert on_bf16_grid(want) and not on_bf16_grid(x)


def test_cast_effect_takes_the_cast_out_and_reports_the_floor():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((1, 8, 32)).astype(np.float32)
    table = (rng.standard_normal((64, 32)) / np.sqrt(32)).astype(np.float32) * 5.7  # off the grid
    head = TiedHead(table="emb", normalize=True, soft_cap=30.0)
    model_logits = head.logits(y, round_to_bf16(table)).astype(np.float32)  # what MaxText computes
    effect = cast_effect(head, {"emb": table}, model_logits, {"final_norm": y})
    assert effect.exact_logits is not None and effect.reproduction_error < 1e-6
    assert np.abs(effect.exact_logits - head.logits(y, table)).max() < 1e-5
    assert effect.floor > 1e-8 and effect.floor_off_grid > 1e-8 and not effect.on_grid
    on_grid = cast_effect(head, {"emb": round_to_bf16(table)}, model_logits, {"final_norm": y})
    assert on_grid.on_grid and on_grid.floor == 0.0 and on_grid.floor_off_grid > 1e-8
    # logits that are not what the head computes: nothing is taken out
    assert cast_effect(head, {"emb": table}, model_logits * 1.01, {"final_norm": y}).exact_logits is None


def test_tied_tables_can_be_drawn_on_the_bf16_grid():
    params = random_params({"model.embed_tokens.weight": (64, 16), "model.norm.weight": (16,)}, 0,
                           {"lm_head.weight": "model.embed_tokens.weight"},
                           bf16_names={"model.embed_tokens.weight"})
    assert on_bf16_grid(params["model.embed_tokens.weight"]) and params["lm_head.weight"] is params[
        "model.embed_tokens.weight"]
    assert not on_bf16_grid(params["model.norm.weight"])


# ---- integer index tables ------------------------------------------------------------------------------------------
def test_index_tables_hold_distinct_valid_ids_per_row():
    t = random_index_table("model.layers.0.ffn.gate.tid2eid", (256, 2), 4, 0)
    assert t.dtype == np.int64 and t.shape == (256, 2) and t.min() >= 0 and t.max() <= 3
    assert all(len(set(row)) == 2 for row in t.tolist())
    assert len({tuple(r) for r in t.tolist()}) > 6  # many different expert pairs
    assert np.array_equal(t, random_index_table("model.layers.0.ffn.gate.tid2eid", (256, 2), 4, 0))
    params = random_params({"a.tid2eid": (8, 3), "a.weight": (4, 4)}, 0, integer={"a.tid2eid": 6})
    assert params["a.tid2eid"].dtype == np.int64 and params["a.weight"].dtype == np.float32


def test_deepseek_v4_hash_routing_table_gets_expert_ids():
    from ckptmap.verify.evaluate import index_ranges
    from ckptmap.verify.hf_runner import HFRunner

    path = os.path.join(HERE, "..", "ckptmap", "benchmarks", "data", "derived", "deepseek4", "config.json")
    with open(path) as f:
        hf = json.load(f)["hf_config"]
    runner = HFRunner(hf)
    ranges = index_ranges(runner)
    experts = runner.dims()["experts"]
    assert ranges and all(n.endswith("tid2eid") for n in ranges) and set(ranges.values()) == {experts}
    params = random_params(runner.param_shapes(), 0, runner.aliases, integer=ranges)
    for name in ranges:
        table = params[name]
        assert table.dtype == np.int64 and 0 <= table.min() and table.max() < experts
        assert all(len(set(row)) == len(row) for row in table.tolist())
    # the model runs on them and routes tokens to different experts
    fwd = runner.forward(params, np.arange(16, dtype=np.int32)[None, :])
    assert np.isfinite(fwd.logits).all()


# ---- live (MaxText) ------------------------------------------------------------------------------------------------
@pytest.mark.maxtext
def test_stored_function_configs_are_what_maxtext_reads():
    from ckptmap import maxtext

    with open(STORED) as f:
        families = [k for k in json.load(f) if not k.startswith("_")]
    for family in families:
        fx = fixture(family)
        s = maxtext.session(fx["maxtext_model_name"], list(fx["maxtext_overrides"]) + ["scan_layers=false"])
        try:
            live = s.function_config()
        finally:
            s.close()
        want = stored(family)
        assert {k: live.get(k) for k in want} == want, family
