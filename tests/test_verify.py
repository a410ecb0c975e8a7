"""verify without MaxText: HF -> HF mappings through two transformers models, planted bugs, metrics, tiny configs.

The models are tiny llamas built from configs (offline); every forward pass takes milliseconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.runner import Forward
from ckptmap.transforms import Chain, Offset, RopePermute, Transpose
from ckptmap.trees.model import parse_name
from ckptmap.verify import HFRunner, compare_logits, search_and_verify, verify_mapping
from ckptmap.transforms.value_kinds import rope_on_axis
from ckptmap.verify.candidates import value_options
from ckptmap.verify.localise import layer_alignment, rule_layers, rules_in_stage, stage_errors
from ckptmap.verify.search import layer_template
from ckptmap.verify.weights import random_params, random_tokens

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 256}


@pytest.fixture(scope="module")
def llama():
    return HFRunner(LLAMA)


def identity_mapping(names) -> Mapping:
    """HF -> the same HF model: one rule per name template, a grid over layers."""
    groups: dict[str, list] = {}
    for n in names:
        p = parse_name(n)
        groups.setdefault(p.template, []).append((p.layer_index, n))
    rules = []
    for items in groups.values():
        if items[0][0] is None:
            slot = Slot.single(items[0][1])
            rules.append(Rule((slot,), (slot,), Chain(())))
        else:
            keys = [n for _, n in sorted(items)]
            rules.append(Rule((Slot.per_cell(keys),), (Slot.per_cell(keys),), Chain(()), grid=(len(keys),)))
    return Mapping(rules=rules, source="hf:llama", target="hf:llama")


def planted(mapping: Mapping, word: str, change) -> Mapping:
    return replace(mapping, rules=[change(r) if word in r.target_names()[0] else r for r in mapping.rules])


def rule_for(mapping: Mapping, word: str) -> int:
    return next(i for i, r in enumerate(mapping.rules) if word in r.target_names()[0])


def swap_sources(mapping: Mapping, a: str, b: str) -> Mapping:
    i, j = rule_for(mapping, a), rule_for(mapping, b)
    rules = list(mapping.rules)
    rules[i] = replace(rules[i], sources=mapping.rules[j].sources)
    rules[j] = replace(rules[j], sources=mapping.rules[i].sources)
    return replace(mapping, rules=rules)


# ---- metrics ------------------------------------------------------------------------------------------------

def test_kl_is_zero_for_equal_logits_and_shift_invariant():
    logits = np.random.default_rng(0).standard_normal((1, 8, 32)).astype(np.float32)
    s = compare_logits(logits, logits + 3.0)
    assert s.kl_max < 1e-12 and s.top1_agreement == 1.0 and s.max_abs_diff == pytest.approx(3.0)


def test_kl_grows_with_a_perturbation_and_top1_counts_flips():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 16, 50))
    b = a + 0.5 * rng.standard_normal(a.shape)
    s = compare_logits(a, b)
    assert 1e-3 < s.kl_mean <= s.kl_max
    assert s.tokens == 32 and 0.0 < s.top1_agreement < 1.0


def test_a_padded_vocab_is_cut_off_before_the_softmax():
    a = np.random.default_rng(2).standard_normal((1, 4, 240))
    padded = np.concatenate([a, np.zeros((1, 4, 16))], axis=-1)
    s = compare_logits(a, padded)
    assert s.vocab == 240 and s.kl_max < 1e-12


# ---- random weights ---------------------------------------------------------------------------------------

def test_random_params_are_seeded_and_every_tensor_varies(llama):
    a = random_params(llama.param_shapes(), seed=3)
    b = random_params(llama.param_shapes(), seed=3)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    norm = a["model.layers.0.input_layernorm.weight"]
    assert norm.std() > 0.1 and abs(norm.mean() - 1.0) < 0.2  # non-constant, around 1
    q = a["model.layers.0.self_attn.q_proj.weight"]
    assert q.std() == pytest.approx(1 / 8, rel=0.15)  # 1/sqrt(fan_in=64)
    c = random_params(llama.param_shapes(), seed=4)
    assert not np.array_equal(a["model.norm.weight"], c["model.norm.weight"])


def test_a_per_layer_gain_is_drawn_near_one_not_as_a_bias():
    """Gemma 4's `layer_scalar` [1] multiplies each layer's output: drawn as a bias (~0.1 N) it shrinks the residual
    stream layer by layer; drawn as a norm scale is, it stays near 1. A bias stays a small vector."""
    shapes = {f"model.layers.{i}.layer_scalar": (1,) for i in range(16)} | {"model.layers.0.mlp.up_proj.bias": (64,)}
    p = random_params(shapes, seed=0)
    gains = np.concatenate([p[f"model.layers.{i}.layer_scalar"] for i in range(16)])
    assert gains.min() > 0.2 and abs(gains.mean() - 1.0) < 0.2
    assert abs(p["model.layers.0.mlp.up_proj.bias"]).max() < 0.5


def test_tied_names_share_one_array():
    runner = HFRunner({**LLAMA, "tie_word_embeddings": True})
    assert runner.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    params = random_params(runner.param_shapes(), 0, runner.aliases)
    assert params["lm_head.weight"] is params["model.embed_tokens.weight"]


# ---- the HF runner ----------------------------------------------------------------------------------------

def test_hf_runner_gives_logits_and_every_stage(llama):
    fwd = llama.forward(random_params(llama.param_shapes(), 0), random_tokens(256, 64))
    assert fwd.logits.shape == (1, 64, 256)
    assert sorted(fwd.activations) == ["embed", "final_norm", "layer_0", "layer_1"]
    assert fwd.activations["layer_1"].shape == (1, 64, 64)
    assert 0.3 < float(fwd.logits.std()) < 5.0  # sane scale for KL to see bugs


def test_hf_runner_takes_checkpoint_names_of_fused_experts():
    runner = HFRunner({"model_type": "mixtral", **{k: v for k, v in LLAMA.items() if k != "model_type"},
                       "num_local_experts": 4, "num_experts_per_tok": 2})
    names = runner.param_shapes()
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in names
    assert names["model.layers.1.block_sparse_moe.experts.3.w2.weight"] == (64, 128)
    fwd = runner.forward(random_params(names, 0), random_tokens(256, 64))
    assert np.isfinite(fwd.logits).all()


def test_gemma_embed_stage_is_after_the_embedding_scale():
    runner = HFRunner({"model_type": "gemma2", **{k: v for k, v in LLAMA.items() if k != "model_type"}})
    params = random_params(runner.param_shapes(), 0, runner.aliases)
    tokens = random_tokens(256, 64)
    fwd = runner.forward(params, tokens)
    table = params["model.embed_tokens.weight"]
    np.testing.assert_allclose(fwd.activations["embed"][0], table[tokens[0]] * np.float32(8.0), rtol=1e-6)


# ---- verify_mapping: identity and planted bugs ------------------------------------------------------------

def test_identity_mapping_passes_with_zero_kl(llama):
    report = verify_mapping(identity_mapping(llama.param_shapes()), llama, llama)
    assert report.passed
    assert report.kl_max < 1e-12 and report.logits.top1_agreement == 1.0
    assert set(report.stages) == {"embed", "layer_0", "layer_1", "final_norm", "logits"}
    assert max(report.stages.values()) < 1e-6 and report.first_divergence is None


@pytest.mark.parametrize("bug, expected, fix", [
    ("o_proj transposed", "self_attn.o_proj.weight", "transposed"),
    ("gate and up swapped", "mlp.gate_proj.weight", "sources of rule"),
    ("norm offset", "input_layernorm.weight", "without its value ops"),
    ("rope permutation on q", "self_attn.q_proj.weight", "without its value ops"),
])
def test_a_planted_bug_fails_and_names_the_broken_parameter(llama, bug, expected, fix):
    good = identity_mapping(llama.param_shapes())
    if bug == "o_proj transposed":
        bad = planted(good, "o_proj", lambda r: replace(r, chain=Chain((Transpose((1, 0)),))))
    elif bug == "gate and up swapped":
        bad = swap_sources(good, "gate_proj", "up_proj")
    elif bug == "norm offset":
        bad = planted(good, "input_layernorm", lambda r: replace(r, chain=Chain((Offset(1.0),))))
    else:
        bad = planted(good, "q_proj", lambda r: replace(r, chain=rope_on_axis((64, 64), 0, 16, "half_to_interleaved")))
    report = verify_mapping(bad, llama, llama)
    assert not report.passed and report.kl_max > 1e-2
    assert report.first_divergence == "layer_0"
    assert f"model.layers.0.{expected}" in report.suspects
    assert report.broken, report.table()
    named = [t for b in report.broken for t in b["targets"]]
    assert f"model.layers.0.{expected}" in named
    assert all(b["repairs_stage"] for b in report.broken)
    assert any(fix in b["fix"] for b in report.broken)
    # the diagnosis names only the broken rule(s), not the whole layer
    assert len({n.split(".")[-2] for n in named}) <= 2


def test_search_repairs_several_planted_bugs_at_once(llama):
    good = identity_mapping(llama.param_shapes())
    bad = planted(good, "o_proj", lambda r: replace(r, chain=Chain((Transpose((1, 0)),))))
    bad = planted(bad, "post_attention_layernorm", lambda r: replace(r, chain=Chain((Offset(-1.0),))))
    bad = swap_sources(bad, "gate_proj", "up_proj")
    mapping, report = search_and_verify(bad, llama, llama)
    assert report.passed and report.kl_max < 1e-10, report.table()
    fixed = {d.targets[0].split(".")[-2] for d in report.decisions}
    assert {"o_proj", "post_attention_layernorm", "gate_proj", "up_proj"} <= fixed
    assert all(t.kl_max == t.kl_max for t in report.trials) and len(report.trials) > 10
    assert verify_mapping(mapping, llama, llama).passed
    assert mapping.meta["verify"]["passed"] is True


def test_a_mapping_that_misses_a_target_is_reported_not_crashed(llama):
    good = identity_mapping(llama.param_shapes())
    short = replace(good, rules=[r for r in good.rules if "model.norm" not in r.target_names()[0]])
    report = verify_mapping(short, llama, llama)
    assert not report.passed and "model.norm.weight" in report.error


# ---- localisation -----------------------------------------------------------------------------------------

def test_rule_layers_reads_per_cell_names_and_treats_stacks_as_all_layers():
    per_cell = Rule((Slot.per_cell(["model.layers.0.x.weight", "model.layers.1.x.weight"]),),
                    (Slot.stacked("params-decoder-layers-x-kernel", (1,)),), Chain(()), grid=(2,))
    assert rule_layers(per_cell) == {0, 1}
    stacked = Rule((Slot.stacked("params-decoder-layers-x-kernel", (1,)),),
                   (Slot.stacked("other-layers-x", (0,)),), Chain(()), grid=(2,))
    assert rule_layers(stacked) == set()
    glob = Rule((Slot.single("model.embed_tokens.weight"),), (Slot.single("params-token_embedder-embedding"),),
                Chain(()))
    assert rule_layers(glob) is None
    m = Mapping(rules=[per_cell, stacked, glob])
    assert rules_in_stage(m, "layer_1") == [0, 1] and rules_in_stage(m, "embed") == [2]


def test_grouped_blocks_align_with_their_last_layer():
    assert layer_alignment(4, 2) == {"embed": "embed", "final_norm": "final_norm", "layer_1": "layer_0",
                                     "layer_3": "layer_1"}
    ref = Forward(np.zeros((1, 2, 4)), {f"layer_{i}": np.full((1, 2, 3), i + 1.0) for i in range(4)})
    other = Forward(np.zeros((1, 2, 4)), {"layer_0": np.full((1, 2, 3), 2.0), "layer_1": np.full((1, 2, 3), 4.0)})
    errs = stage_errors(ref, other)
    assert errs["layer_1"] == 0.0 and errs["layer_3"] == 0.0 and "layer_0" not in errs


def test_layer_template_keeps_indices_that_name_different_tensors():
    assert layer_template("model.layers.7.mlp.up_proj.weight") == "model.layers.{i}.mlp.up_proj.weight"
    assert layer_template("params-decoder-layers_3-mlp-wi_0-kernel") == "params-decoder-layers_{i}-mlp-wi_0-kernel"
    assert layer_template("params-decoder-layers-mlp-wi_1-kernel") == "params-decoder-layers-mlp-wi_1-kernel"


# ---- candidates -------------------------------------------------------------------------------------------

def test_rope_on_a_merged_heads_axis_equals_rope_on_the_head_dim():
    x = np.arange(8 * 16 * 6, dtype=np.float32).reshape(8 * 16, 6)  # [heads*head_dim, hidden], torch layout
    got = rope_on_axis(x.shape, 0, 16, "half_to_interleaved").apply((x,))[0]
    per_head = x.reshape(8, 16, 6).transpose(0, 2, 1)
    want = RopePermute("half_to_interleaved").apply((per_head,))[0].transpose(0, 2, 1).reshape(x.shape)
    np.testing.assert_array_equal(got, want)


def test_value_options_follow_the_roles_names_suggest():
    dims = {"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16}
    q = value_options("params-decoder-layers-self_attention-query-kernel",
                      ["model.layers.0.self_attn.q_proj.weight"], (64, 4, 16), dims)
    assert sorted(q) == ["rope", "scale"]
    assert {o.label for o in q["scale"]} == {"scale 1/sqrt(head_dim)", "scale sqrt(head_dim)"}
    assert all(o.key.endswith(":2") for o in q["rope"])  # the head_dim axis
    k = value_options("params-decoder-layers-self_attention-key-kernel",
                      ["model.layers.0.self_attn.k_proj.weight"], (64, 2, 16), dims)
    assert sorted(k) == ["rope"]
    norm = value_options("params-decoder-layers-pre_self_attention_layer_norm-scale",
                         ["model.layers.0.input_layernorm.weight"], (64,), dims)
    assert [o.op.value for o in norm["offset"]] == [1.0, -1.0]
    emb = value_options("params-token_embedder-embedding", ["model.embed_tokens.weight"], (256, 64), dims)
    assert {o.label for o in emb["scale"]} >= {"scale sqrt(hidden)", "scale sqrt(hidden) (bf16)"}
    assert value_options("params-decoder-layers-mlp-wo-kernel", ["model.layers.0.mlp.down_proj.weight"],
                         (128, 64), dims) == {}


# ---- the CLI ----------------------------------------------------------------------------------------------

def _spec(cfg: dict) -> str:
    return "hf:llama " + " ".join(f"{k}={v}" for k, v in cfg.items() if k != "model_type")


def test_cli_verify_passes_fails_and_rejects_bad_input(tmp_path, llama, capsys):
    from ckptmap.cli import main

    good = identity_mapping(llama.param_shapes())
    good_path, bad_path = str(tmp_path / "good.json"), str(tmp_path / "bad.json")
    good.save(good_path)
    planted(good, "o_proj", lambda r: replace(r, chain=Chain((Transpose((1, 0)),)))).save(bad_path)
    args = ["verify", "--source", _spec(LLAMA), "--target", _spec(LLAMA)]
    assert main([*args, "--mapping", good_path, "--report", str(tmp_path / "r.json")]) == 0
    saved = json.load(open(tmp_path / "r.json"))
    assert saved["passed"] is True and saved["logits"]["kl_max"] < 1e-12
    assert (tmp_path / "r.txt").read_text().startswith("verify: PASS")
    assert main([*args, "--mapping", bad_path]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "broken: model.layers.0.self_attn.o_proj.weight" in out
    assert main([*args, "--mapping", str(tmp_path / "missing.json")]) == 2
    assert main(["verify", "--mapping", good_path, "--source", "hf:no_such_type", "--target", _spec(LLAMA)]) == 2


def test_search_on_a_mapping_that_cannot_be_applied_stops_at_once(llama):
    good = identity_mapping(llama.param_shapes())
    short = replace(good, rules=[r for r in good.rules if "model.norm" not in r.target_names()[0]])
    mapping, report = search_and_verify(short, llama, llama)
    assert not report.passed and report.forwards == 0 and report.trials == []
    assert "model.norm.weight" in report.error


# ---- tiny configs -----------------------------------------------------------------------------------------
# tests/data/verify/real_configs.json: MaxText's model ymls and paired HF configs, dumped from .venv-maxtext with
# `python -m ckptmap.verify.real_configs MODEL` for every fixture family.

REAL = os.path.join(os.path.dirname(__file__), "data", "verify", "real_configs.json")
FIXTURES = os.path.join(os.path.dirname(__file__), "data", "maxtext_tiny")
ACCEPTANCE = ["llama3.1-8b", "qwen3-0.6b", "qwen3-30b-a3b", "mixtral-8x7b", "gemma2-2b", "gemma3-4b",
              "deepseek2-16b", "gpt-oss-20b", "olmo3-7b", "qwen3.5-35b-a3b"]


@pytest.fixture(scope="module")
def real_configs():
    with open(REAL) as f:
        return json.load(f)


def _fixture_overrides(model: str) -> set[str]:
    for family in os.listdir(FIXTURES):
        with open(os.path.join(FIXTURES, family, "config.json")) as f:
            cfg = json.load(f)
        if cfg["maxtext_model_name"] == model:
            return {o.split("=", 1)[0] for o in cfg["maxtext_overrides"]}
    raise KeyError(model)


@pytest.mark.parametrize("model", ACCEPTANCE)
def test_tiny_pair_keeps_what_matters_and_builds(real_configs, model):
    from ckptmap.verify.tiny import check_tiny, derive_tiny

    pair = derive_tiny(model, real_configs[model])
    assert check_tiny(pair) == []
    real = real_configs[model]["hf"].get("text_config") or real_configs[model]["hf"]
    c = pair.hf_config
    if real.get("num_key_value_heads", real["num_attention_heads"]) < real["num_attention_heads"]:
        assert c["num_key_value_heads"] < c["num_attention_heads"]
    if "kv_lora_rank" not in real:
        real_ratio = real["num_attention_heads"] * (real.get("head_dim") or real["hidden_size"] // real["num_attention_heads"]) / real["hidden_size"]
        assert c["num_attention_heads"] * c["head_dim"] / c["hidden_size"] == pytest.approx(real_ratio, rel=0.15)
    # the MaxText keys are the kind the fixtures' valid tiny pairs set (plus the sliding window we shorten)
    keys = {o.split("=", 1)[0] for o in pair.maxtext_overrides}
    assert keys <= _fixture_overrides(model) | {"sliding_window_size"}
    runner = HFRunner(c)
    assert runner.n_layers == c["num_hidden_layers"] >= 2


def test_tiny_configs_keep_inhomogeneous_cycles_and_padding(real_configs):
    from ckptmap.verify.tiny import derive_tiny

    g3 = derive_tiny("gemma3-4b", real_configs["gemma3-4b"])
    assert g3.hf_config["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert g3.hf_config["sliding_window"] == 16 and "base_num_decoder_layers=6" in g3.maxtext_overrides
    assert g3.hf_config["rope_parameters"]["full_attention"]["rope_theta"] == 1e6  # MaxText's yml value
    g2 = derive_tiny("gemma2-2b", real_configs["gemma2-2b"]).overrides_dict()
    assert derive_tiny("gemma2-2b", real_configs["gemma2-2b"]).hf_config["vocab_size"] == 240
    assert g2["vocab_size"] == "256" and g2["base_num_decoder_layers"] == "1"  # local+global pairs, 2 HF layers
    ds = derive_tiny("deepseek2-16b", real_configs["deepseek2-16b"])
    assert ds.hf_config["num_hidden_layers"] == 3 and ds.hf_config["first_k_dense_replace"] == 1
    assert ds.hf_config["n_routed_experts"] == 4 and "first_num_dense_layers=1" in ds.maxtext_overrides
    nxt = derive_tiny("qwen3-next-80b-a3b", real_configs["qwen3-next-80b-a3b"])
    assert nxt.hf_config["layer_types"][-1] == "full_attention" and nxt.hf_config["num_hidden_layers"] == 4
    olmo = derive_tiny("olmo3-7b", real_configs["olmo3-7b"])
    assert olmo.hf_config["rope_parameters"]["full_attention"]["rope_type"] == "yarn"
