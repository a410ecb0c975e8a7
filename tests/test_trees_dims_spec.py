"""Canonical dims from HF configs and MaxText values, merge_dims, and SPEC parsing."""

from __future__ import annotations

import json
import os

import pytest

from ckptmap.errors import TreeError
from ckptmap.trees import merge_dims, parse_spec, read_tree
from ckptmap.trees.dims import dims_from_hf_config, dims_from_maxtext

DATA = os.path.join(os.path.dirname(__file__), "data", "maxtext_tiny")


def fixture_config(family: str) -> dict:
    with open(os.path.join(DATA, family, "config.json")) as f:
        return json.load(f)


def test_hf_and_maxtext_dims_agree_for_llama():
    cfg = fixture_config("llama3.1")
    hf = dims_from_hf_config(cfg["hf_config"])
    mt = dims_from_maxtext(cfg["maxtext_config_values"]["scan1"])
    assert hf == mt == {"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "mlp": 128, "layers": 2,
                        "vocab": 256}


def test_maxtext_unset_sentinels_are_dropped():
    assert dims_from_maxtext({"emb_dim": 8, "moe_mlp_dim": -1, "num_experts": 1, "q_lora_rank": 0}) == {"hidden": 8}


def test_maxtext_override_strings():
    assert dims_from_maxtext(fixture_config("deepseek3")["maxtext_overrides"]) == {
        "hidden": 64, "heads": 4, "kv_heads": 4, "mlp": 128, "moe_mlp": 32, "layers": 3, "first_k_dense": 1,
        "experts": 4, "experts_per_tok": 2, "shared_experts": 1, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8, "v_head_dim": 16, "vocab": 256, "q_lora_rank": 24}


def test_composite_config_takes_the_language_model_and_prefixes_towers():
    dims = dims_from_hf_config(fixture_config("qwen3-vl")["hf_config"])
    assert (dims["hidden"], dims["layers"], dims["vocab"]) == (64, 2, 256)
    assert (dims["vision_hidden"], dims["vision_layers"], dims["vision_heads"]) == (32, 2, 2)


def test_dense_model_drops_leftover_moe_size():
    dims = dims_from_hf_config(fixture_config("gemma4-dense")["hf_config"])
    assert "moe_mlp" not in dims and "experts" not in dims


def test_merge_dims_keeps_both_values_of_a_conflict():
    cfg = fixture_config("deepseek3")
    hf = dims_from_hf_config(cfg["hf_config"])
    mt = dims_from_maxtext(cfg["maxtext_config_values"]["scan0"])
    merged = merge_dims(hf, mt)
    assert merged["head_dim"] == 8 and merged["head_dim_alt"] == 128
    assert merged["q_lora_rank"] == 24 and "hidden_alt" not in merged
    assert merge_dims({"a": 1}, {"b": 2}) == {"a": 1, "b": 2}


@pytest.mark.parametrize("spec, kind, target, overrides", [
    ("hf:llama num_hidden_layers=2 rope_theta=1e6 name=x", "hf_type", "llama",
     {"num_hidden_layers": 2, "rope_theta": 1e6, "name": "x"}),
    (f"hf:{DATA}/llama3.1/config.json tie_word_embeddings=true", "hf_config", f"{DATA}/llama3.1/config.json",
     {"tie_word_embeddings": True}),
    ("maxtext:llama3.1-8b base_emb_dim=64 scan_layers=false", "maxtext", "llama3.1-8b",
     {"base_emb_dim": 64, "scan_layers": False}),
    ("orbax:/some/dir", "orbax", "/some/dir", {}),
    (f"{DATA}/llama3.1/hf_params.json", "json", f"{DATA}/llama3.1/hf_params.json", {}),
    ("x.safetensors", "safetensors", "x.safetensors", {}),
])
def test_parse_spec(spec, kind, target, overrides):
    parsed = parse_spec(spec)
    assert (parsed.kind, parsed.target, parsed.overrides) == (kind, target, overrides)


@pytest.mark.parametrize("spec, message", [
    ("", "empty SPEC"),
    ("hf:", "nothing after 'hf:'"),
    ("hf:llama layers", "expected key=value after the model, got 'layers'"),
    ("hf:llama a=1 a=2", "override given twice"),
    ("orbax:/d a=1", "orbax: takes no key=value overrides"),
    ("/no/such/thing", "no such file"),
    ("x.safetensors a=1", "key=value overrides only apply to configs"),
])
def test_bad_specs(spec, message):
    with pytest.raises(TreeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_tree(spec)


@pytest.mark.maxtext
@pytest.mark.parametrize("scan", [0, 1])
def test_maxtext_spec_reproduces_the_llama_fixture(scan):
    cfg = fixture_config("llama3.1")
    spec = " ".join([f"maxtext:{cfg['maxtext_model_name']}", *cfg["maxtext_overrides"],
                     f"scan_layers={'true' if scan else 'false'}"])
    with open(os.path.join(DATA, "llama3.1", f"maxtext_params.scan{scan}.json")) as f:
        expected = {k: tuple(v) for k, v in json.load(f).items()}
    tree = read_tree(spec)
    assert tree.framework == "maxtext" and tree.shapes() == expected
