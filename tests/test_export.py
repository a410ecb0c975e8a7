"""export_maxtext_module: MaxText-form modules from mappings (the MaxText-run acceptance is in
test_export_maxtext.py); here the module's text, its loops and config expressions, and its hooks."""

from __future__ import annotations

import runpy

import numpy as np
import pytest

from ckptmap.apply import apply_to_dict
from ckptmap.errors import CkptmapError
from ckptmap.export import export_maxtext_module, hf_to_maxtext, is_scanned, maxtext_single_axis
from ckptmap.export.templates import config_ints, count_expression, fit_template, render_template
from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.transforms import Chain, Transpose
from test_convert_cases import fixture, fused_qkv_mapping, gpt_oss_experts_mapping, llama_mapping, mixtral_mapping, seeded


def exported(tmp_path, mappings, family, model="llama3.1-8b", **kw):
    cfg, _, mt = fixture(family)
    path = tmp_path / "module.py"
    text = export_maxtext_module(mappings, str(path), model, hf_config=cfg["hf_config"], **kw)
    assert path.read_text() == text
    return text, runpy.run_path(str(path)), cfg


def test_fit_template_recovers_affine_indices():
    t = fit_template(lambda env: f"model.layers.{2 * env['i'] + 1}.mlp.experts.{env['e']}.w1.weight",
                     [("i", range(3)), ("e", range(4))])
    assert render_template(t) == 'f"model.layers.{2 * i + 1}.mlp.experts.{e}.w1.weight"'
    assert fit_template(lambda env: ["a.0", "a.1", "b.2"][env["i"]], [("i", range(3))]) is None  # not one pattern
    # a loop over the layers a hybrid model gives linear attention: the var takes those indices directly
    skipping = fit_template(lambda env: f"model.layers.{env['i']}.linear_attn.A_log", [("i", [0, 1, 2, 4, 5, 6])])
    assert render_template(skipping) == 'f"model.layers.{i}.linear_attn.A_log"'
    assert render_template(fit_template(lambda env: "model.norm.weight", [])) == '"model.norm.weight"'


def test_count_expressions_name_config_keys_of_the_right_kind():
    cfg, _, _ = fixture("deepseek3")
    ints = config_ints(cfg["hf_config"])
    assert count_expression(3, "layer", ints) == 'config["num_hidden_layers"]'
    assert count_expression(4, "expert", ints) == 'config["n_routed_experts"]'
    assert count_expression(1, "layer", ints) == 'config["first_k_dense_replace"]'
    assert count_expression(2, "layer", ints) == 'config["num_hidden_layers"] - config["first_k_dense_replace"]'
    assert count_expression(7, "layer", ints) is None
    assert count_expression(2, None, ints) is None  # an unknown kind of loop is never matched by value alone


def test_llama_module_loops_over_config_layers_without_hard_coded_counts(tmp_path):
    text, module, cfg = exported(tmp_path, [llama_mapping(True), llama_mapping(False)], "llama3.1")
    body = text[text.index("def LLAMA3_1_8B_MAXTEXT_TO_HF_PARAM_MAPPING"):]
    assert "range(2)" not in body and 'range(config["num_hidden_layers"])' in body
    fn = module["LLAMA3_1_8B_MAXTEXT_TO_HF_PARAM_MAPPING"]
    scanned = fn(cfg["hf_config"], None, scan_layers=True)
    assert scanned["params-decoder-layers-mlp-wi_0-kernel"] == [f"model.layers.{i}.mlp.gate_proj.weight" for i in range(2)]
    assert scanned["params-token_embedder-embedding"] == "model.embed_tokens.weight"
    unscanned = fn(cfg["hf_config"], None, scan_layers=False)
    assert unscanned["params-decoder-layers_1-self_attention-query-kernel"] == "model.layers.1.self_attn.q_proj.weight"
    bigger = fn({**cfg["hf_config"], "num_hidden_layers": 32}, None, scan_layers=True)
    assert len(bigger["params-decoder-layers-mlp-wo-kernel"]) == 32
    assert module["PARAM_MAPPING"] == {"llama3.1-8b": fn}


def test_hooks_are_the_chain_and_its_inverse_per_slice(tmp_path):
    _, module, cfg = exported(tmp_path, [llama_mapping(True)], "llama3.1")
    hooks = module["HOOK_FNS"]["llama3.1-8b"](cfg["hf_config"], None, scan_layers=True, saving_to_hf=False)
    back = module["HOOK_FNS"]["llama3.1-8b"](cfg["hf_config"], None, scan_layers=True, saving_to_hf=True)
    q = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    key = "params-decoder-layers-self_attention-query-kernel"
    mt = hooks[key](q, (64, 4, 16))
    np.testing.assert_array_equal(mt, q.T.reshape(64, 4, 16))
    np.testing.assert_array_equal(back[key](mt, (64, 64)), q)
    assert "params-decoder-layers-pre_self_attention_layer_norm-scale" not in hooks  # identity: no hook


def test_one_scan_setting_only_refuses_the_other(tmp_path):
    _, module, cfg = exported(tmp_path, llama_mapping(True), "llama3.1")
    with pytest.raises(ValueError, match="scan_layers=True"):
        module["LLAMA3_1_8B_MAXTEXT_TO_HF_PARAM_MAPPING"](cfg["hf_config"], None, scan_layers=False)


def test_expert_grid_is_a_nested_list_experts_outside_layers_inside(tmp_path):
    text, module, cfg = exported(tmp_path, [mixtral_mapping(True), mixtral_mapping(False)], "mixtral", "mixtral-8x7b")
    m = module["MIXTRAL_8X7B_MAXTEXT_TO_HF_PARAM_MAPPING"](cfg["hf_config"], None, scan_layers=True)
    wi_0 = m["params-decoder-layers-MoeBlock_0-wi_0"]
    assert len(wi_0) == 4 and len(wi_0[0]) == 2
    assert wi_0[3][1] == "model.layers.1.block_sparse_moe.experts.3.w1.weight"
    assert 'range(config["num_local_experts"])' in text
    un = module["MIXTRAL_8X7B_MAXTEXT_TO_HF_PARAM_MAPPING"](cfg["hf_config"], None, scan_layers=False)
    assert un["params-decoder-layers_1-MoeBlock_0-wo"] == [f"model.layers.1.block_sparse_moe.experts.{e}.w2.weight"
                                                           for e in range(4)]
    # MaxText's loader stacks a list under a MoeBlock name on axis 0; the gate stacks layers on axis 1, so it is
    # written as one tuple with a hook that stacks on the right axis
    gate = m["params-decoder-layers-MoeBlock_0-gate-kernel"]
    assert gate == ("model.layers.0.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.gate.weight")
    hooks = module["MIXTRAL_8X7B_MAXTEXT_TO_HF_PARAM_HOOK_FN"](cfg["hf_config"], None, scan_layers=True)
    g = [np.full((4, 64), i, np.float32) for i in range(2)]
    stacked = hooks["params-decoder-layers-MoeBlock_0-gate-kernel"](tuple(g), (64, 2, 4))
    assert stacked.shape == (64, 2, 4) and stacked[0, 1, 0] == 1


def test_fused_qkv_gets_one_loading_hook_per_target_and_a_composite_saving_hook(tmp_path):
    mapping, hf_shapes = fused_qkv_mapping(True)
    _, module, cfg = exported(tmp_path, mapping, "llama3.1", "fused")
    m = module["FUSED_MAXTEXT_TO_HF_PARAM_MAPPING"](cfg["hf_config"], None, scan_layers=True)
    names = [f"params-decoder-layers-self_attention-{n}-kernel" for n in ("query", "key", "value")]
    assert all(m[n] == [f"model.layers.{i}.self_attn.qkv_proj.weight" for i in range(2)] for n in names)
    load = module["FUSED_MAXTEXT_TO_HF_PARAM_HOOK_FN"](cfg["hf_config"], None, scan_layers=True)
    save = module["FUSED_MAXTEXT_TO_HF_PARAM_HOOK_FN"](cfg["hf_config"], None, scan_layers=True, saving_to_hf=True)
    hf = seeded(hf_shapes)["model.layers.0.self_attn.qkv_proj.weight"]
    parts = [load[n](hf, None) for n in names]
    assert [p.shape for p in parts] == [(64, 4, 16), (64, 2, 16), (64, 2, 16)]
    np.testing.assert_array_equal(save[tuple(names)](parts, None), hf)


def test_hf_stacked_experts_loop_inside_the_hook(tmp_path):
    _, hf_shapes, _ = fixture("gpt-oss")
    mapping = gpt_oss_experts_mapping(True)
    text, module, cfg = exported(tmp_path, mapping, "gpt-oss", "gpt-oss-20b")
    m = module["GPT_OSS_20B_MAXTEXT_TO_HF_PARAM_MAPPING"](cfg["hf_config"], None, scan_layers=True)
    assert m["params-decoder-layers-layers_1-GptOssMlp-wi_0"] == ["model.layers.1.mlp.experts.gate_up_proj",
                                                                  "model.layers.3.mlp.experts.gate_up_proj"]
    assert "{2 * i + k}" in text
    hooks = module["GPT_OSS_20B_MAXTEXT_TO_HF_PARAM_HOOK_FN"](cfg["hf_config"], None, scan_layers=True)
    hf = seeded(hf_shapes)
    want = apply_to_dict(mapping, hf)["params-decoder-layers-layers_1-GptOssMlp-wi_1"]
    got = hooks["params-decoder-layers-layers_1-GptOssMlp-wi_1"](hf["model.layers.3.mlp.experts.gate_up_proj"], None)
    np.testing.assert_array_equal(got, want[:, 1])


def test_a_maxtext_to_hf_mapping_exports_the_same_module(tmp_path):
    forward, _, _ = exported(tmp_path, llama_mapping(True), "llama3.1")
    backward, _, _ = exported(tmp_path, llama_mapping(True).reversed(), "llama3.1")
    strip = lambda t: t[t.index("import numpy"):]  # noqa: E731 (the docstring names the mapping's direction)
    assert strip(forward) == strip(backward)


def test_scan_setting_is_read_from_the_rules():
    assert is_scanned(llama_mapping(True)) and not is_scanned(llama_mapping(False))
    assert is_scanned(mixtral_mapping(True)) and not is_scanned(mixtral_mapping(False))
    assert hf_to_maxtext(llama_mapping(True).reversed()).target == llama_mapping(True).target


def test_maxtext_stacking_axis_rules():
    assert maxtext_single_axis("params-decoder-layers-mlp-wo-kernel", 3, True, 1, loading=True) == 1
    assert maxtext_single_axis("params-decoder-layers-MoeBlock_0-gate-kernel", 3, True, 1, loading=True) == 0
    assert maxtext_single_axis("params-decoder-layers-MoeBlock_0-gate-kernel", 3, True, 1, loading=False) == 1
    assert maxtext_single_axis("params-x", 1, True, 1, loading=True) == 0  # per-layer scalars stack on 0
    assert maxtext_single_axis("params-x", None, True, 1, loading=True) is None
    assert maxtext_single_axis("params-decoder-layers_0-MoeBlock_0-wi_0", 3, False, 1, loading=True) == 0


def test_unexpressible_mappings_raise_a_named_error(tmp_path):
    # MaxText names vary per expert while HF stacks the experts in one tensor: no MaxText value form slices it
    bad = Mapping([Rule((Slot.stacked("model.experts.w", (0,)),),
                        (Slot.per_cell([f"params-decoder-e_{e}-w" for e in range(2)]),), Chain(()), grid=(2,))])
    with pytest.raises(CkptmapError, match="cannot slice an HF tensor") as e:
        export_maxtext_module(bad, str(tmp_path / "m.py"), "x")
    assert e.value.key == "params-decoder-e_0-w"
    assert not (tmp_path / "m.py").exists()
    with pytest.raises(CkptmapError, match="which side is MaxText"):
        export_maxtext_module(Mapping([Rule((Slot.single("a.b"),), (Slot.single("c.d"),), Chain((Transpose((1, 0)),)))]),
                              None, "x")


def test_a_stack_of_expert_sources_becomes_a_grid_dim():
    from ckptmap.export import lift_stacked_sources
    from ckptmap.transforms import Stack

    experts, layers = 3, 2
    sources = tuple(Slot.per_cell([f"model.layers.{i}.mlp.experts.{e}.w1.weight" for i in range(layers)])
                    for e in range(experts))
    rule = Rule(sources, (Slot.stacked("params-decoder-layers-MoeBlock_0-wi_0", (1,)),),
                Chain((Stack(0, experts), Transpose((0, 2, 1)))), grid=(layers,))
    lifted = lift_stacked_sources(rule)
    assert lifted.grid == (layers, experts)
    assert lifted.targets[0].axes == (1, 0)  # layers at 1 as before, experts where the stack put them
    assert lifted.sources[0].keys[1][2] == "model.layers.1.mlp.experts.2.w1.weight"
    assert lifted.chain.to_json() == Chain((Transpose((1, 0)),)).to_json()
    arrays = {n: np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32) + k
              for k, n in enumerate(sorted({n for s in sources for n in s.names()}))}
    m0, m1 = Mapping([rule]), Mapping([lifted])
    out0, out1 = apply_to_dict(m0, arrays), apply_to_dict(m1, arrays)
    np.testing.assert_array_equal(out0["params-decoder-layers-MoeBlock_0-wi_0"], out1["params-decoder-layers-MoeBlock_0-wi_0"])


def test_a_cast_to_bfloat16_imports_ml_dtypes_in_the_module(tmp_path):
    from ckptmap.transforms import Cast

    m = Mapping([Rule((Slot.single("model.norm.weight"),), (Slot.single("params-decoder-decoder_norm-scale"),),
                      Chain((Cast("bfloat16", "float32"),)))])
    text = export_maxtext_module(m, str(tmp_path / "m.py"), "x")
    assert "import ml_dtypes" in text
    hooks = runpy.run_path(str(tmp_path / "m.py"))["X_MAXTEXT_TO_HF_PARAM_HOOK_FN"]({}, None)
    assert str(hooks["params-decoder-decoder_norm-scale"](np.ones(2, np.float32), (2,)).dtype) == "bfloat16"


def test_skipped_layers_are_listed_from_the_configs_layer_types():
    from ckptmap.export.templates import sequence_expression

    cfg, _, _ = fixture("qwen3-next")
    expr = sequence_expression([0, 1, 2, 4, 5, 6], cfg["hf_config"])
    assert expr == '[i for i, t in enumerate(config["layer_types"]) if t == "linear_attention"]'
    assert eval(expr, {"config": cfg["hf_config"]}) == [0, 1, 2, 4, 5, 6]
    assert sequence_expression([0, 2, 5], cfg["hf_config"]) is None
