"""Hint templates and prompts: one line per repeated parameter, whatever the depth of the model."""

from pathlib import Path

from ckptmap.llm_hints import build_prompt, cache_key, group_templates, hint_template
from ckptmap.llm_hints.record import read_spec
from ckptmap.llm_hints.templates import compact_ranges, fingerprint, template_set

DATA = Path(__file__).parent / "data"


def tree(rel: str, dims: dict | None = None):
    t = read_spec(str(DATA / rel))
    t.meta["dims"] = dict(dims or {})
    return t


def test_hint_template_keeps_non_layer_indices():
    assert hint_template("model.layers.31.mlp.up_proj.weight") == "model.layers.{i}.mlp.up_proj.weight"
    assert hint_template("params-decoder-layers_7-mlp-wi_0-kernel") == "params-decoder-layers_{i}-mlp-wi_0-kernel"
    assert hint_template("params-decoder-layers_7-mlp-wi_1-kernel") == "params-decoder-layers_{i}-mlp-wi_1-kernel"
    assert (hint_template("model.layers.2.block_sparse_moe.experts.5.w1.weight")
            == "model.layers.{i}.block_sparse_moe.experts.{i}.w1.weight")
    # a numbered norm is not a repeated layer
    assert (hint_template("model.layers.0.pre_feedforward_layernorm_2.weight")
            == "model.layers.{i}.pre_feedforward_layernorm_2.weight")


def test_hint_template_is_idempotent_and_reads_answer_placeholders():
    t = "params-decoder-layers_{i}-self_attention-query-kernel"
    assert hint_template(t) == t
    assert hint_template("params-decoder-layers_*-self_attention-query-kernel") == t
    assert hint_template("model.layers.{layer}.self_attn.q_proj.weight") == "model.layers.{i}.self_attn.q_proj.weight"
    assert hint_template("model.layers.<N>.self_attn.q_proj.weight") == "model.layers.{i}.self_attn.q_proj.weight"


def test_a_32_layer_tree_gives_one_layer_template():
    src = tree("agent_context/llama3/hf_params.json")
    assert len(src) == 291
    groups = {g.template: g for g in group_templates(src)}
    assert len(groups) == 12  # 9 per-layer templates + embed, final norm, lm_head
    q = groups["model.layers.{i}.self_attn.q_proj.weight"]
    assert (q.count, q.indices, q.index_names, q.shapes) == (32, (tuple(range(32)),), ("layers",),
                                                            (((4096, 4096), 32),))


def test_prompt_lists_each_template_once_with_ranges_shapes_and_dims():
    src = tree("agent_context/llama3/hf_params.json", {"hidden": 4096, "heads": 32})
    tgt = tree("agent_context/llama3/maxtext_params.json", {"kv_heads": 8, "rope_theta": 500000})
    prompt = build_prompt(src, tgt)
    lines = prompt.splitlines()
    q_lines = [ln for ln in lines if "q_proj" in ln]
    assert q_lines == ["model.layers.{i}.self_attn.q_proj.weight  [4096, 4096]  x32  layers 0-31"]
    assert "params-decoder-layers_{i}-self_attention-query-kernel  [4096, 32, 128]  x32  layers 0-31" in lines
    assert "params-decoder-layers_{i}-mlp-wi_0-kernel  [4096, 14336]  x32  layers 0-31" in lines
    assert "layers.5." not in prompt and "layers_5" not in prompt
    assert "Config: hidden=4096, heads=32, kv_heads=8, rope_theta=500000" in prompt
    assert len(lines) < 60


def test_prompt_dims_argument_overrides_tree_dims_and_changes_the_key():
    src = tree("maxtext_tiny/qwen3/hf_params.json", {"hidden": 64})
    tgt = tree("maxtext_tiny/qwen3/maxtext_params.scan0.json")
    p1 = build_prompt(src, tgt)
    p2 = build_prompt(src, tgt, {"hidden": 65})
    assert "Config: hidden=64" in p1 and "Config: hidden=65" in p2
    assert build_prompt(src, tgt) == p1  # deterministic
    assert cache_key(p1, "gemini-2.5-pro") != cache_key(p2, "gemini-2.5-pro")
    assert cache_key(p1, "gemini-2.5-pro") != cache_key(p1, "gemini-2.5-flash")
    assert len(cache_key(p1, "m")) == 64


def test_inhomogeneous_index_ranges_are_compact():
    assert compact_ranges((0, 1, 2, 4, 5, 6)) == "0-2,4-6"
    assert compact_ranges((3,)) == "3"
    tgt = tree("maxtext_tiny/qwen3-next/maxtext_params.scan0.json")
    a_log = {g.template: g for g in group_templates(tgt)}["params-decoder-layers_{i}-attention-A_log"]
    assert compact_ranges(a_log.indices[0]) == "0-2,4-6"


def test_fingerprint_ignores_depth_and_width():
    tiny = tree("maxtext_tiny/llama3.1/hf_params.json")
    full = tree("agent_context/llama3/hf_params.json")
    assert len(tiny) != len(full)
    assert fingerprint(template_set(tiny)) == fingerprint(template_set(full))
    scanned = tree("maxtext_tiny/llama3.1/maxtext_params.scan1.json")
    unscanned = tree("maxtext_tiny/llama3.1/maxtext_params.scan0.json")
    assert fingerprint(template_set(scanned)) != fingerprint(template_set(unscanned))
