"""Tiny pairs of multimodal models (verify.tiny_towers): the composite HF config keeps its towers, shrunk, and MaxText's
`*_for_vit` / `*_for_audio` keys follow through the tower keys that held the same real values; a paired HF config
that describes another model than MaxText's yml (Qwen3-Omni's thinker) takes the yml's attention sizes."""

from __future__ import annotations

import os

from ckptmap.verify.tiny import check_tiny, derive_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_qwen3_vl_keeps_its_vision_tower_shrunk_on_both_sides(real_configs):
    pair = derive_tiny("qwen3-vl-2b", real_configs["qwen3-vl-2b"])
    c, o = pair.hf_config, pair.overrides_dict()
    assert c["model_type"] == "qwen3_vl" and check_tiny(pair) == []
    v = c["vision_config"]
    assert (v["hidden_size"], v["num_heads"], v["depth"], v["intermediate_size"]) == (32, 2, 2, 128)
    assert v["out_hidden_size"] == pair.text_config["hidden_size"] == 64  # what the tower hands the text model
    assert v["deepstack_visual_indexes"] == [0, 1] and v["patch_size"] == 16  # taps on tiny layers; input kept
    assert {k: o[k] for k in o if k.endswith("_for_vit")} == {
        "hidden_size_for_vit": "32", "intermediate_size_for_vit": "128", "num_attention_heads_for_vit": "2",
        "num_hidden_layers_for_vit": "2", "out_hidden_size_for_vit": "64", "deepstack_visual_indexes_for_vit": "[0,1]"}


def test_qwen3_omni_thinker_takes_maxtexts_sizes_and_shrinks_both_towers(real_configs):
    pair = derive_tiny("qwen3-omni-30b-a3b", real_configs["qwen3-omni-30b-a3b"])
    thinker, o = pair.hf_config["thinker_config"], pair.overrides_dict()
    assert pair.hf_config["model_type"] == "qwen3_omni_moe" and check_tiny(pair) == []
    # the paired thinker says 28 heads, vocab 3584 and no head_dim; MaxText's yml 32 x 128, vocab 152064
    assert any("MaxText's sizes taken" in n for n in pair.notes)
    text = pair.text_config
    assert text is thinker["text_config"] and text["num_attention_heads"] == 8 and text["head_dim"] == 16
    assert o["base_num_query_heads"] == "8" and o["head_dim"] == "16" and text["vocab_size"] == 256
    a = thinker["audio_config"]
    assert (a["d_model"], a["encoder_layers"], a["encoder_attention_heads"]) == (32, 2, 2)
    assert o["d_model_for_audio"] == "32" and o["encoder_layers_for_audio"] == "2"
    # the towers' outputs have the tiny text width on MaxText's side too (the paired config says 3584, MaxText 2048)
    assert o["out_hidden_size_for_vit"] == o["output_dim_for_audio"] == str(text["hidden_size"])
    # the talker (speech output) is switched off: the model verify builds is the thinker MaxText mirrors
    assert pair.hf_config["enable_audio_output"] is False
    from ckptmap.verify.hf_runner import HFRunner

    assert HFRunner(pair.hf_config).model_class.__name__ == "Qwen3OmniMoeThinkerForConditionalGeneration"


def test_a_yml_without_use_multimodal_keeps_the_text_model_only(real_configs):
    pair = derive_tiny("gemma3-4b", real_configs["gemma3-4b"])  # its yml describes a tower MaxText leaves out
    assert pair.hf_config["model_type"] == "gemma3_text" and pair.text_config is pair.hf_config
    assert not [o for o in pair.maxtext_overrides if "_for_vit" in o]


def test_the_tiny_pair_ties_embeddings_as_maxtext_does(real_configs):
    # the paired Qwen3-VL-30B-A3B config's text part says tied; MaxText's yml (base.yml) does not tie
    pair = derive_tiny("qwen3-vl-30b-a3b", real_configs["qwen3-vl-30b-a3b"])
    assert pair.text_config["tie_word_embeddings"] is False and pair.hf_config["tie_word_embeddings"] is False
    assert derive_tiny("qwen3-vl-2b", real_configs["qwen3-vl-2b"]).text_config["tie_word_embeddings"] is True
