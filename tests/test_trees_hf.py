"""hf: trees built on the meta device match the fixtures' hf_params.json, family by family.

The fixtures' HF names were written by MaxText's hand-made shape tables (checkpoint_conversion/utils/hf_shape.py),
not by transformers, so a few families differ from what transformers 5.24 really builds and saves. Each such
difference is pinned below exactly (by name template), with the reason; everything else must match name for name
and shape for shape.
"""

from __future__ import annotations

import json
import os

import pytest

from ckptmap.errors import TreeError
from ckptmap.trees import read_tree
from ckptmap.trees.model import parse_name

DATA = os.path.join(os.path.dirname(__file__), "data", "maxtext_tiny")
FAMILIES = sorted(os.listdir(DATA))

# Families whose config.json must be read with an extra override.
EXTRA_OVERRIDES = {
    # transformers 5.24 cannot build the Qwen3-Omni talker from this config (its talker text config lacks
    # shared_expert_intermediate_size, which the talker's MoE block reads); the fixture holds the thinker only.
    "qwen3-omni": "enable_audio_output=false",
}

# family -> (fixture-only templates, ours-only templates, {template: (fixture shape, our shape)},
#            renames applied to our names before comparing, tower prefixes the fixture leaves out entirely)
KNOWN = {
    # HF DeepseekV2 routes without a score-correction bias; the fixture table shares DeepSeek-V3's gate.
    "deepseek2": ({"model.layers.{i}.mlp.gate.e_score_correction_bias"}, set(), {}, {}, ()),
    # save_pretrained reverts Gemma3 to the llava checkpoint layout (language_model.model.*, vision_tower.*);
    # the fixture uses the module layout with SigLIP's vision_model level. The fixture also lists the tied
    # lm_head and attention / MLP biases that Gemma3 (attention_bias=False) does not have.
    "gemma3": ({"lm_head.weight"} | {f"model.language_model.layers.{{i}}.{m}.bias" for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}, set(), {},
        {"language_model.model.": "model.language_model.", "vision_tower.": "model.vision_tower.vision_model.",
         "multi_modal_projector.": "model.multi_modal_projector."}, ()),
    # Gemma4's v_norm has no scale (with_scale=False) and its full-attention layers share k as v
    # (attention_k_eq_v=True): no v_norm.weight anywhere, no v_proj on layers 5 and 11.
    "gemma4-dense": ({"model.language_model.layers.{i}.self_attn.v_norm.weight",
                      "model.language_model.layers.{i}.self_attn.v_proj.weight"}, set(), {}, {}, ()),
    "gemma4-moe": ({"model.language_model.layers.{i}.self_attn.v_norm.weight",
                    "model.language_model.layers.{i}.self_attn.v_proj.weight"}, set(), {}, {}, ()),
    # As above for v_norm; the fixture also leaves out the vision and audio towers the config describes.
    "gemma4-small": ({"model.language_model.layers.{i}.self_attn.v_norm.weight"}, set(), {}, {},
                     ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.")),
    # Qwen2 has no q_norm / k_norm; the fixture table shares Qwen3's attention.
    "qwen2.5": ({"model.layers.{i}.self_attn.q_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"},
                set(), {}, {}, ()),
    # tie_word_embeddings=True: save_pretrained does not write lm_head; the fixture lists it.
    "qwen3": ({"lm_head.weight"}, set(), {}, {}, ()),
    "qwen3-vl": ({"lm_head.weight"}, set(), {}, {}, ()),
    # The fixture lists both per-expert and fused expert tensors, the fused down_proj as [E, I, H]; transformers
    # 5.24 saves only the fused ones, down_proj as its module holds it, [E, H, I] (the load-time transpose is
    # shape-checked, so saving never transposes back).
    "qwen3-vl-moe": ({f"model.language_model.layers.{{i}}.mlp.experts.{{i}}.{p}_proj.weight"
                      for p in ("gate", "up", "down")}, set(),
                     {"model.language_model.layers.{i}.mlp.experts.down_proj": ((4, 32, 64), (4, 64, 32))}, {}, ()),
    # transformers 5.24 saves Qwen3.5-MoE experts one tensor per expert; the fixture has the fused form, and no
    # vision tower.
    "qwen3.5": ({"model.language_model.layers.{i}.mlp.experts.gate_up_proj",
                 "model.language_model.layers.{i}.mlp.experts.down_proj"},
                {f"model.language_model.layers.{{i}}.mlp.experts.{{i}}.{p}_proj.weight"
                 for p in ("gate", "up", "down")}, {}, {}, ("model.visual.",)),
}


def _rename(name: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _template(name: str) -> str:
    return parse_name(name).template


def fixture_params(family: str) -> dict[str, tuple[int, ...]]:
    with open(os.path.join(DATA, family, "hf_params.json")) as f:
        return {k: tuple(v) for k, v in json.load(f).items()}


def hf_spec(family: str) -> str:
    spec = f"hf:{os.path.join(DATA, family, 'config.json')}"
    return f"{spec} {EXTRA_OVERRIDES[family]}" if family in EXTRA_OVERRIDES else spec


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_tree_matches_fixture_names_and_shapes(family):
    expected = fixture_params(family)
    fixture_only, ours_only, shape_diffs, renames, absent_towers = KNOWN.get(family, (set(), set(), {}, {}, ()))
    tree = read_tree(hf_spec(family))
    ours = {_rename(n, renames): p.shape for n, p in tree.params.items()}

    if absent_towers:
        assert any(n.startswith(absent_towers) for n in ours)
        assert not any(n.startswith(absent_towers) for n in expected)
        ours = {n: shape for n, shape in ours.items() if not n.startswith(absent_towers)}
    assert {_template(n) for n in expected if n not in ours} == fixture_only
    assert {_template(n) for n in ours if n not in expected} == ours_only
    differing = {_template(n): (expected[n], ours[n]) for n in expected if n in ours and expected[n] != ours[n]}
    assert differing == shape_diffs


def test_families_without_known_differences_match_exactly():
    exact = [f for f in FAMILIES if f not in KNOWN]
    assert exact == ["deepseek3", "deepseek3.2", "gemma2", "gpt-oss", "llama3.1", "mixtral", "olmo3", "qwen3-moe",
                     "qwen3-next", "qwen3-omni"]
    for family in ("llama3.1", "mixtral"):
        assert read_tree(hf_spec(family)).shapes() == fixture_params(family)


def test_tied_embedding_is_reported_not_listed():
    tree = read_tree(hf_spec("gemma2"))
    assert "lm_head.weight" not in tree
    assert tree.meta["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert tree["model.embed_tokens.weight"].tags == ("tied",)


def test_untied_lm_head_is_a_parameter():
    tree = read_tree(hf_spec("llama3.1"))
    assert tree.meta["tied"] == {}
    assert tree["lm_head.weight"].shape == (256, 64)
    assert tree["model.embed_tokens.weight"].tags == ()


def test_non_persistent_buffers_are_meta_only():
    tree = read_tree(hf_spec("llama3.1"))
    assert tree.meta["buffers"]["model.rotary_emb.inv_freq"] == {"shape": [8], "dtype": "float32"}
    assert not any("rotary" in n for n in tree.names())


def test_persistent_buffers_are_saved_and_tagged():
    tree = read_tree(hf_spec("gemma4-dense"))
    scalar = tree["model.language_model.layers.0.layer_scalar"]
    assert scalar.shape == (1,) and scalar.tags == ("buffer",)


def test_fixture_config_dims_and_reconcile_notes():
    tree = read_tree(hf_spec("gemma2"))
    assert tree.meta["dims"] == {"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "mlp": 128, "layers": 4,
                                 "vocab": 256}
    assert tree.meta["notes"] == ["layer_types cut from 26 to num_hidden_layers=4"]
    assert tree.meta["hf"]["class"] == "Gemma2ForCausalLM"


def test_mla_dims():
    dims = read_tree(hf_spec("deepseek3")).meta["dims"]
    assert {k: dims[k] for k in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                                 "v_head_dim", "experts", "moe_mlp", "shared_experts", "first_k_dense")} == {
        "q_lora_rank": 24, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
        "experts": 4, "moe_mlp": 32, "shared_experts": 1, "first_k_dense": 1}


def test_model_type_with_overrides():
    tree = read_tree("hf:qwen3 num_hidden_layers=3 hidden_size=32 num_attention_heads=2 num_key_value_heads=1 "
                     "head_dim=16 intermediate_size=48 vocab_size=100 tie_word_embeddings=false")
    assert len(tree) == 3 + 3 * 11
    assert tree["model.layers.2.self_attn.k_proj.weight"].shape == (16, 32)
    assert tree["model.layers.0.self_attn.q_norm.weight"].shape == (16,)
    assert tree["lm_head.weight"].shape == (100, 32)
    assert tree.meta["dims"]["layers"] == 3


def test_dotted_override_reaches_a_sub_config():
    tree = read_tree("hf:gemma3 text_config.num_hidden_layers=1 text_config.vocab_size=64 "
                     "text_config.hidden_size=32 vision_config.num_hidden_layers=1")
    names = tree.names()
    assert sum(".layers.0." in n for n in names) > 0 and not any(".layers.1." in n for n in names)
    assert tree.meta["dims"]["vocab"] == 64


def test_memory_layout_keeps_fused_experts():
    saved = read_tree(hf_spec("mixtral"))
    memory = read_tree(hf_spec("mixtral"), hf_layout="memory")
    assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in saved
    fused = memory["model.layers.0.mlp.experts.gate_up_proj"]
    assert fused.shape == (4, 256, 64)
    assert fused.stacked_axes == ((0, "experts"),)
    assert saved.total_params == memory.total_params


def test_fused_expert_tensors_carry_their_expert_axis():
    tree = read_tree(hf_spec("gpt-oss"))  # GPT-OSS checkpoints keep experts fused
    assert tree["model.layers.0.mlp.experts.gate_up_proj"].stacked_axes == ((0, "experts"),)
    assert tree["model.layers.0.mlp.experts.down_proj"].shape == (4, 32, 64)
    assert tree["model.layers.0.mlp.router.weight"].stacked_axes == ()


def test_unknown_model_type_names_the_key():
    with pytest.raises(TreeError) as e:
        read_tree("hf:no_such_model_type")
    assert e.value.key == "model_type"
    assert "unknown model_type 'no_such_model_type'" in e.value.one_line()


def test_unbuildable_config_is_one_line_error():
    with pytest.raises(TreeError) as e:
        read_tree(f"hf:{os.path.join(DATA, 'qwen3-omni', 'config.json')}")
    msg = e.value.one_line()
    assert "\n" not in msg
    assert "Qwen3OmniMoeForConditionalGeneration" in msg and "shared_expert_intermediate_size" in msg
