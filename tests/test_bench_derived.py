"""Derived benchmark cases (ckptmap/benchmarks/data/derived/<name>): a model in no fixture, built from its real configs by
ckptmap's own readers, with MaxText's ground truth made as for the fixtures."""

from __future__ import annotations

import json
import os

from ckptmap.benchmarks import derived
from ckptmap.benchmarks.cases import case_dir, derived_families, is_derived, load_case

DS4 = os.path.join(derived.DERIVED_DIR, "deepseek4")


def _read(name: str):
    with open(os.path.join(DS4, name)) as f:
        return json.load(f)


def test_derived_cases_are_listed_labelled_and_load_with_full_ground_truth():
    assert "derived/deepseek4" in derived_families()
    assert is_derived("derived/deepseek4") and not is_derived("llama3.1")
    assert case_dir("derived/deepseek4") == DS4
    for scan in (0, 1):
        case = load_case("derived/deepseek4", scan)
        assert not isinstance(case, str), case
        assert case.derived and case.label == f"derived/deepseek4/scan{scan}"
        assert set(case.gt.tensors) == set(case.tgt.names())  # MaxText converted every target
        assert not case.gt.failed and not case.gt.not_in_mapping
        read = {n for names in case.gt.sources_by_target().values() for n in names}
        assert read <= set(case.src.names())  # checkpoint names resolved to the tree's names


def test_the_case_is_the_tiny_pair_derive_tiny_gives_for_its_real_configs():
    from ckptmap.verify.tiny import check_tiny, derive_tiny

    config, real = _read("config.json"), _read(derived.REAL_CONFIGS)
    pair = derive_tiny(config["maxtext_model_name"], real)
    assert pair.hf_config == config["hf_config"] and pair.maxtext_overrides == config["maxtext_overrides"]
    assert check_tiny(pair) == []
    c = pair.hf_config
    assert c["num_hidden_layers"] == 6 and c["num_hash_layers"] == 2
    assert c["compress_ratios"] == [0, 4, 128, 4, 128, 4]  # lead (sliding, CSA) then two HCA/CSA cycles
    assert c["head_dim"] == 16 and c["qk_rope_head_dim"] == 4 and c["num_attention_heads"] % c["o_groups"] == 0
    overrides = pair.overrides_dict()
    assert overrides["first_num_hash_layers"] == "2" and overrides["compress_ratios"] == "[0,4,128,4,128,4]"


def test_checkpoint_names_resolve_through_transformers_renames_and_the_base_prefix():
    table, names = _read(derived.ALIASES), set(_read("hf_params.json"))
    assert derived.resolve("embed.weight", names, table) == "model.embed_tokens.weight"  # anchored rename
    assert derived.resolve("hc_head_fn", names, table) == "model.hc_head.hc_fn"
    # loading renames attn.kv_norm to self_attn.kv_norm, which transformers saves as attn.norm
    assert derived.resolve("layers.0.attn.kv_norm.weight", names, table) == "model.layers.0.attn.norm.weight"
    assert derived.resolve("layers.3.ffn.experts.1.w1.weight", names, table) == "model.layers.3.ffn.experts.1.w1.weight"
    assert derived.resolve("head.weight", names, table) == "head.weight"
    assert derived.resolve("not.a.tensor", names, table) == "not.a.tensor"
    assert derived.resolve("x", {"x"}, {}) == "x"
