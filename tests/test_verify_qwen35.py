"""verify for qwen3.5 (HF `qwen3_5_moe`, MaxText `qwen3.5-35b-a3b`): gated-delta-net linear attention + full
attention with partial rotary and multimodal RoPE sections, MoE, a composite (text + vision) HF config.

Without MaxText: the tiny rotary derivation, the name resolution of real configs, the HF runner on the composite
fixture config (text part only, under the composite's names, both layouts). With MaxText (`maxtext` mark): MaxText's
own conversion of the HF runner's seeded tensors, run through the MaxText model, gives the HF logits (both scan
settings), at the derived tiny configs and at the fixture's configs; the benchmark's verify column runs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ckptmap.verify import HFRunner
from ckptmap.verify.hf_runner import causal_lm_config, hf_config, rename_into
from ckptmap.verify.real_configs import ConfigError, model_key, resolve_model_name
from ckptmap.verify.tiny import TinyConfigError, derive_tiny, scale_sections, tiny_rotary
from ckptmap.verify.weights import random_params, random_tokens

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXTURE = os.path.join(DATA, "maxtext_tiny", "qwen3.5")
MODEL = "qwen3.5-35b-a3b"


@pytest.fixture(scope="module")
def real():
    with open(os.path.join(DATA, "verify", "real_configs.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def fixture_config():
    with open(os.path.join(FIXTURE, "config.json")) as f:
        return json.load(f)


# ---- tiny rotary derivation ---------------------------------------------------------------------------------

def test_scale_sections_keeps_every_section_and_the_total():
    assert scale_sections([11, 11, 10], 3) == [1, 1, 1]
    assert scale_sections([11, 11, 10], 4) == [2, 1, 1]
    assert scale_sections([24, 20, 20], 8) == [3, 3, 2]  # the qwen3-vl fixtures' choice
    assert scale_sections([24, 20, 20], 64) == [24, 20, 20]  # the real size: unchanged
    assert scale_sections([3, 0, 2], 2) == [1, 0, 1]  # an empty section stays empty
    with pytest.raises(TinyConfigError):
        scale_sections([11, 11, 10], 2)


def test_qwen35_tiny_rotary_fits_the_tiny_head_dim_on_both_sides(real):
    pair = derive_tiny(MODEL, real[MODEL])
    c, mt = pair.hf_config, pair.overrides_dict()
    rp = c["rope_parameters"]
    assert c["model_type"] == "qwen3_5_moe_text" and c["head_dim"] == 16
    # real: 0.25 of head_dim 256 = 64 channels, 32 frequencies in [11, 11, 10]; tiny head_dim 16 at 0.25 would
    # leave 2 frequencies for 3 sections: raised to 3 (fraction 6/16), one per section
    assert rp["partial_rotary_factor"] == 0.375 and rp["mrope_section"] == [1, 1, 1]
    assert rp["mrope_interleaved"] is True and rp["rope_theta"] == 10000000
    assert mt["partial_rotary_factor"] == "0.375" and mt["mrope_section"] == "[1,1,1]"
    assert mt["head_dim"] == "16"
    # MaxText's check (sum(mrope_section) == int(head_dim * factor) / 2) holds, with MaxText's own int()
    assert sum(json.loads(mt["mrope_section"])) == int(int(mt["head_dim"]) * float(mt["partial_rotary_factor"])) // 2
    assert any("partial_rotary_factor 0.25 -> 0.375" in n for n in pair.notes)
    # transformers keeps the values (its config class defaults partial_rotary_factor to 0.25 when absent)
    cfg = hf_config(c)
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.375 and cfg.rope_parameters["mrope_section"] == [1, 1, 1]
    runner = HFRunner(c, layout="memory")
    rotary = runner._model.model.rotary_emb
    assert rotary.inv_freq.shape == (3,) and rotary.mrope_section == [1, 1, 1]


def test_tiny_rotary_changes_nothing_that_already_fits(real):
    vl = derive_tiny("qwen3-vl-2b", real["qwen3-vl-2b"])  # full rotary, sections of 64 frequencies -> 8
    # the tiny pair keeps the composite config; the rotary lives in its text part
    assert vl.hf_config["text_config"]["rope_parameters"]["mrope_section"] == [3, 3, 2]
    assert vl.overrides_dict()["mrope_section"] == "[3,3,2]" and "partial_rotary_factor" not in vl.overrides_dict()
    nxt = derive_tiny("qwen3-next-80b-a3b", real["qwen3-next-80b-a3b"])  # 0.25 of 16 = 4 channels: fits
    assert nxt.hf_config["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert not {"partial_rotary_factor", "mrope_section"} & set(nxt.overrides_dict())
    llama = derive_tiny("llama3.1-8b", real["llama3.1-8b"])
    assert "partial_rotary_factor" not in llama.hf_config["rope_parameters"]
    assert not {"partial_rotary_factor", "mrope_section"} & set(llama.overrides_dict())


def test_tiny_rotary_where_the_fraction_lives_at_the_top_level():
    tiny = {"head_dim": 16, "partial_rotary_factor": 0.125, "rope_scaling": {"mrope_section": [16, 24, 24]}}
    real_text = {"head_dim": 128, "partial_rotary_factor": 0.125, "rope_scaling": {"mrope_section": [16, 24, 24]}}
    overrides, notes = tiny_rotary(tiny, real_text, {"partial_rotary_factor": 0.125, "mrope_section": [16, 24, 24]})
    assert tiny["partial_rotary_factor"] == 0.375 and "partial_rotary_factor" not in tiny["rope_scaling"]
    assert tiny["rope_scaling"]["mrope_section"] == [1, 1, 1]
    assert overrides == {"partial_rotary_factor": "0.375", "mrope_section": "[1,1,1]"} and len(notes) == 2


# ---- real config names -------------------------------------------------------------------------------------

def test_family_names_resolve_to_maxtexts_model_names():
    known = ["qwen3.5-35b-a3b", "qwen3.5-35b-a3b-fp8", "qwen3.5-397b-a17b", "qwen3-next-80b-a3b", "llama3.1-8b"]
    assert resolve_model_name("qwen3.5") == MODEL  # the bundled fixture family
    assert model_key("qwen3.5", known) == MODEL
    assert model_key(MODEL, known) == MODEL
    assert model_key("qwen3-next", known) == "qwen3-next-80b-a3b"  # a prefix naming one model
    with pytest.raises(ConfigError, match="several MaxText models"):
        model_key("qwen3.5-397b", known + ["qwen3.5-397b-a17b-fp8"])
    with pytest.raises(ConfigError, match="no HF config"):
        model_key("nothing-like-it", known)


# ---- the HF runner on the composite fixture config -----------------------------------------------------------

def test_rename_into_finds_the_composite_prefix():
    names = ["model.embed_tokens.weight", "model.layers.0.mlp.gate.weight", "lm_head.weight"]
    known = {"model.language_model.embed_tokens.weight", "model.language_model.layers.0.mlp.gate.weight",
             "lm_head.weight", "model.visual.blocks.0.mlp.gate.weight"}
    assert rename_into(names, known) == {
        "model.embed_tokens.weight": "model.language_model.embed_tokens.weight",
        "model.layers.0.mlp.gate.weight": "model.language_model.layers.0.mlp.gate.weight",
        "lm_head.weight": "lm_head.weight"}
    assert rename_into(names, {"lm_head.weight"}) is None


@pytest.fixture(scope="module")
def fixture_runners(fixture_config):
    return {layout: HFRunner(fixture_config["hf_config"], layout=layout) for layout in ("saved", "memory")}


def test_composite_config_runs_its_text_part_under_the_composite_names(fixture_config, fixture_runners):
    cfg = hf_config(fixture_config["hf_config"])
    build, text_only = causal_lm_config(cfg)
    assert type(cfg).__name__ == "Qwen3_5MoeConfig" and type(build).__name__ == "Qwen3_5MoeTextConfig" and text_only
    with open(os.path.join(FIXTURE, "hf_params.json")) as f:
        fixture_tree = json.load(f)
    memory, saved = fixture_runners["memory"], fixture_runners["saved"]
    assert memory.model_class.__name__ == "Qwen3_5MoeForCausalLM" and memory.vocab == 256 and memory.n_layers == 8
    # the fixture names the tensors as the modules hold them (fused experts): exactly the memory layout
    assert memory.param_shapes() == {n: tuple(s) for n, s in fixture_tree.items()}
    shapes = saved.param_shapes()
    assert len(shapes) == 221 and "model.language_model.layers.0.mlp.experts.3.gate_proj.weight" in shapes
    assert not any(n.startswith("model.visual") for n in shapes)
    assert memory.dims()["vocab"] == 256 and memory.dims()["experts"] == 4


def test_both_layouts_compute_the_same_logits(fixture_runners):
    saved, memory = fixture_runners["saved"], fixture_runners["memory"]
    params = random_params(saved.param_shapes(), seed=0, aliases=saved.aliases)
    tokens = random_tokens(saved.vocab, 64, 1, 0)
    a = saved.forward(params, tokens)
    modules = saved.module_params(params)
    assert set(modules) == set(memory.param_shapes())
    gate_up = modules["model.language_model.layers.0.mlp.experts.gate_up_proj"]  # [experts, 2 * moe_mlp, hidden]
    expert = "model.language_model.layers.0.mlp.experts.2."
    np.testing.assert_array_equal(gate_up[2, :32], params[expert + "gate_proj.weight"])
    np.testing.assert_array_equal(gate_up[2, 32:], params[expert + "up_proj.weight"])
    b = memory.forward(modules, tokens)
    assert a.logits.shape == (1, 64, 256) and np.isfinite(a.logits).all() and a.logits.std() > 0.5
    np.testing.assert_array_equal(a.logits, b.logits)
    assert sorted(a.activations) == sorted(["embed", "final_norm"] + [f"layer_{i}" for i in range(8)])


def test_gated_delta_net_runs_on_torch_without_the_kernels(fixture_runners):
    """The linear-attention layers fall back to transformers' torch code (no fla / causal-conv1d here); the chunked
    and the recurrent torch rules agree on a sequence, so the fallback is not an accident of one path."""
    import importlib.util

    import torch
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as m

    # Behaviour only: no kernel package is installed, the layer is the gated delta net, and the public torch
    # rules run (how transformers wires its kernel-or-torch choice is its own business and changes by release).
    assert importlib.util.find_spec("fla") is None and importlib.util.find_spec("causal_conv1d") is None
    layer = fixture_runners["memory"]._model.model.layers[0].linear_attn
    assert type(layer).__name__ == "Qwen3_5MoeGatedDeltaNet"
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 70, 2, 16, generator=g) for _ in range(2))
    v = torch.randn(1, 70, 2, 16, generator=g)
    decay = -torch.rand(1, 70, 2, generator=g)
    beta = torch.rand(1, 70, 2, generator=g)
    chunked, _ = m.torch_chunk_gated_delta_rule(q, k, v, decay, beta, use_qk_l2norm_in_kernel=True)
    recurrent, _ = m.torch_recurrent_gated_delta_rule(q, k, v, decay, beta, use_qk_l2norm_in_kernel=True)
    assert torch.allclose(chunked, recurrent, atol=1e-5) and chunked.abs().max() > 0.1


# ---- with MaxText ------------------------------------------------------------------------------------------

@pytest.mark.maxtext
@pytest.mark.parametrize("scan", [False, True])
def test_maxtexts_own_conversion_matches_hf_at_the_tiny_configs(scan):
    from ckptmap.verify.e2e import run_reference

    out = run_reference("qwen3.5", scan=scan)  # the family name resolves to qwen3.5-35b-a3b
    assert "error" not in out and "forward_error" not in out, out
    assert out["kl_max"] < 1e-6, out  # measured 2.1e-9 (untied; the gated-delta-net chunking sets the floor)
    assert out["top1"] == 1.0


@pytest.mark.maxtext
def test_maxtext_builds_the_fixture_overrides_and_agrees_once_the_rotary_does(fixture_config, tmp_path):
    """The fixture's MaxText overrides (partial_rotary_factor=0.5, mrope_section=[2,1,1]) build; its HF config keeps
    the real 0.25, so the two models differ in the full-attention layers even with MaxText's own conversion; with
    the HF rotary made the same, they agree."""
    from ckptmap.benchmarks.cases import load_case
    from ckptmap.benchmarks.suite import fixture_specs
    from ckptmap.verify import runners_for
    from ckptmap.verify.e2e import compare_with_reference

    src_spec, tgt_spec = fixture_specs(load_case("qwen3.5", 1), str(tmp_path))
    assert "partial_rotary_factor=0.5" in tgt_spec and "mrope_section=[2,1,1]" in tgt_spec
    src, tgt = runners_for(src_spec, tgt_spec, "cpu")
    try:
        as_is = compare_with_reference(None, src, tgt)
        assert as_is["kl_max"] > 1e-2, as_is
        with open(src_spec[3:]) as f:
            cfg = json.load(f)
        cfg["text_config"]["rope_parameters"].update(partial_rotary_factor=0.5, mrope_section=[2, 1, 1])
        (tmp_path / "agreeing.json").write_text(json.dumps(cfg))
        agreeing = compare_with_reference(None, HFRunner(str(tmp_path / "agreeing.json")), tgt)
        assert agreeing["kl_max"] < 1e-6 and agreeing["top1"] == 1.0, agreeing
    finally:
        tgt.close()


@pytest.mark.maxtext
@pytest.mark.slow
def test_bench_verify_column_runs_on_the_qwen35_fixture():
    from ckptmap.benchmarks.cases import load_case
    from ckptmap.benchmarks.suite import run_verify
    from ckptmap.solver import solve

    case = load_case("qwen3.5", 1)
    _, numbers = run_verify(case, solve(case.src, case.tgt))
    assert "not_run" not in numbers, numbers
    assert numbers["forwards"] >= 1 and np.isfinite(numbers["max_kl"])
