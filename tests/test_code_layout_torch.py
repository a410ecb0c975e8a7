"""Fused-parameter layouts read off the forward code by a traced CPU forward pass (ckptmap.tracing.hf_layouts).

Sizes are picked so that no two candidate readings give the same numbers (hidden 40, 2I 48, Dk 8, Dv 12, ...).
"""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ckptmap.errors import CkptmapError
from ckptmap.tracing.hf_layouts import CodeLayoutError, fused_layouts_hf, main
from ckptmap.tracing.torch_dataflow import fused_layouts_from_module

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = os.path.join(os.path.dirname(__file__), "data", "maxtext_tiny")

_TOKENS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)
GPT_OSS = dict(model_type="gpt_oss", vocab_size=96, hidden_size=40, intermediate_size=24, num_hidden_layers=2,
               num_local_experts=3, num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2,
               head_dim=10, layer_types=["sliding_attention", "full_attention"], sliding_window=4, **_TOKENS)
MIXTRAL = dict(model_type="mixtral", vocab_size=96, hidden_size=40, intermediate_size=24, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=10, num_local_experts=3,
               num_experts_per_tok=2, **_TOKENS)
PHI3 = dict(model_type="phi3", vocab_size=96, hidden_size=40, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, **_TOKENS)
QWEN3_NEXT = dict(model_type="qwen3_next", vocab_size=96, hidden_size=40, intermediate_size=24,
                  num_hidden_layers=2, layer_types=["linear_attention", "full_attention"], num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                  linear_key_head_dim=8, linear_value_head_dim=12, linear_conv_kernel_dim=4, num_experts=3,
                  num_experts_per_tok=2, moe_intermediate_size=14, shared_expert_intermediate_size=16,
                  decoder_sparse_step=1, mlp_only_layers=[], **_TOKENS)
LLAMA = dict(model_type="llama", vocab_size=96, hidden_size=40, intermediate_size=24, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=10, **_TOKENS)
QWEN3 = dict(model_type="qwen3", vocab_size=96, hidden_size=40, intermediate_size=24, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=10, **_TOKENS)


def _tree(config: dict, layout: str):
    from ckptmap.trees.hf import read_hf_tree
    from ckptmap.trees.hf_config import build_config, reconcile

    cfg, _ = reconcile(dict(config))
    return read_hf_tree(build_config(cfg, "test"), origin="test", layout=layout)


def _check_sizes(found: dict, tree) -> None:
    """Each layout's axis exists on the stored tensor and R * sum(blocks) is its size."""
    for name, lay in found.items():
        shape = tree[name].shape
        assert 0 <= lay["axis"] < len(shape), name
        assert lay["rounds"] * sum(lay["blocks"]) == shape[lay["axis"]], (name, shape, lay)


# --- traced toy modules: the reading rules, without transformers --------------------------------------------------

class _Toy(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.fused = torch.nn.Linear(6, 24)
        self.plain = torch.nn.Linear(6, 10, bias=False)

    def forward(self, x):
        y = self.fused(x)  # [B, S, 24]
        if self.kind == "contiguous":
            a, b, c = y.split([4, 8, 12], dim=-1)
            out = a.sum(-1) + b.sum(-1) + c.sum(-1)
        elif self.kind == "interleave":
            out = (y[..., ::2] * torch.sigmoid(y[..., 1::2])).sum(-1)
        elif self.kind == "grouped":
            g = y.view(*y.shape[:-1], 3, 8)  # 3 groups of [2 | 6]
            a, b = torch.split(g, [2, 6], dim=-1)
            out = a.sum((-1, -2)) + b.sum((-1, -2))
        elif self.kind == "grouped_after_transpose":  # GPT-NeoX: view per head, transpose, then chunk
            g = y.view(*y.shape[:-1], 3, 8).transpose(1, 2)
            a, b = g.split([2, 6], dim=-1)
            out = a.sum((1, -1)) + b.sum((1, -1))
        elif self.kind == "picked":  # Falcon: per group [q q | k | v] picked by slice and by index lists
            g = y.view(*y.shape[:-1], 2, 3, 4)
            q, k, v = g[:, :, :, :-2], g[:, :, :, [-2]], g[:, :, :, [-1]]
            out = q.sum((-1, -2, -3)) + k.sum((-1, -2, -3)) * v.sum((-1, -2, -3))
        elif self.kind == "used_whole_too":  # cut, but the whole tensor is used as well
            a, b = y.chunk(2, dim=-1)
            out = (a * b).sum(-1) + y.pow(2).sum(-1)
        elif self.kind == "half_only":  # only part of the axis is taken
            out = y[..., :12].sum(-1)
        elif self.kind == "rotate":  # cut, rotated, concatenated back: a transform, not a fusion
            a, b = y.chunk(2, dim=-1)
            out = torch.cat((a * 0.5 - b, b * 0.5 + a), dim=-1).sum(-1)
        elif self.kind == "after_activation":  # the first thing done is an activation: no reading
            a, b = torch.nn.functional.silu(y).chunk(2, dim=-1)
            out = (a * b).sum(-1)
        else:
            raise ValueError(self.kind)
        # a per-head reshape that is never cut gives nothing
        return out + self.plain(x).view(*x.shape[:-1], 2, 5).transpose(-1, -2).sum((-1, -2))


def _toy(kind: str, names=None) -> dict:
    m = _Toy(kind)
    x = torch.randn(1, 5, 6)
    with torch.no_grad():
        return fused_layouts_from_module(m, lambda: m(x), names)


def test_toy_contiguous_split_reads_weight_and_bias():
    assert _toy("contiguous") == {"fused.bias": {"axis": 0, "rounds": 1, "blocks": [4, 8, 12]},
                                  "fused.weight": {"axis": 0, "rounds": 1, "blocks": [4, 8, 12]}}


def test_toy_interleave_and_names():
    got = _toy("interleave", names={"fused.weight": "ckpt.w"})
    assert got == {"ckpt.w": {"axis": 0, "rounds": 12, "blocks": [1, 1]},
                   "fused.bias": {"axis": 0, "rounds": 12, "blocks": [1, 1]}}


def test_toy_grouped():
    assert _toy("grouped")["fused.weight"] == {"axis": 0, "rounds": 3, "blocks": [2, 6]}


def test_toy_grouped_after_transpose():
    assert _toy("grouped_after_transpose")["fused.weight"] == {"axis": 0, "rounds": 3, "blocks": [2, 6]}


def test_toy_index_lists_cut_too():
    assert _toy("picked")["fused.weight"] == {"axis": 0, "rounds": 2, "blocks": [4, 4, 4]}


@pytest.mark.parametrize("kind", ["used_whole_too", "half_only", "rotate", "after_activation"])
def test_toy_no_layout(kind):
    assert _toy(kind) == {}


# --- HF models ------------------------------------------------------------------------------------------------------

def test_gpt_oss_interleaved_gate_up_and_bias():
    found = fused_layouts_hf(GPT_OSS)
    expected = {}
    for i in range(2):
        # transformers 5.24 stores gate_up_proj as [E, H, 2I] = [3, 40, 48]: the interleaved axis is 2
        expected[f"model.layers.{i}.mlp.experts.gate_up_proj"] = {"axis": 2, "rounds": 24, "blocks": [1, 1]}
        # the bias [E, 2I] is added before _apply_gate's [..., ::2] / [..., 1::2]: cut the same way
        expected[f"model.layers.{i}.mlp.experts.gate_up_proj_bias"] = {"axis": 1, "rounds": 24, "blocks": [1, 1]}
    assert found == expected
    tree = _tree(GPT_OSS, "saved")  # checkpoint names and shapes, as the hf: reader gives them
    assert tree["model.layers.0.mlp.experts.gate_up_proj"].shape == (3, 40, 48)
    _check_sizes(found, tree)


def test_mixtral_fused_experts_contiguous_under_module_name():
    found = fused_layouts_hf(MIXTRAL)
    assert found == {f"model.layers.{i}.mlp.experts.gate_up_proj": {"axis": 1, "rounds": 1, "blocks": [24, 24]}
                     for i in range(2)}
    # checkpoints hold per-expert w1 / w3, so the fused tensor keeps its module name (the hf: reader's memory layout)
    assert "model.layers.0.mlp.experts.gate_up_proj" not in _tree(MIXTRAL, "saved")
    tree = _tree(MIXTRAL, "memory")
    assert tree["model.layers.0.mlp.experts.gate_up_proj"].shape == (3, 48, 40)
    _check_sizes(found, tree)


def test_phi3_qkv_and_gate_up_contiguous():
    found = fused_layouts_hf(PHI3)
    expected = {}
    for i in range(2):
        expected[f"model.layers.{i}.self_attn.qkv_proj.weight"] = {"axis": 0, "rounds": 1, "blocks": [40, 10, 10]}
        expected[f"model.layers.{i}.mlp.gate_up_proj.weight"] = {"axis": 0, "rounds": 1, "blocks": [24, 24]}
    assert found == expected
    _check_sizes(found, _tree(PHI3, "saved"))


def test_qwen3_next_grouped_per_key_head():
    found = fused_layouts_hf(QWEN3_NEXT)
    # linear attention (layer 0): Hk = 2 groups of [Dk | Dk | VpK*Dv | VpK*Dv] = [8, 8, 24, 24], and [VpK | VpK]
    assert found["model.layers.0.linear_attn.in_proj_qkvz.weight"] == {"axis": 0, "rounds": 2,
                                                                       "blocks": [8, 8, 24, 24]}
    assert found["model.layers.0.linear_attn.in_proj_ba.weight"] == {"axis": 0, "rounds": 2, "blocks": [2, 2]}
    # full attention (layer 1): q_proj holds [query | gate] per head
    assert found["model.layers.1.self_attn.q_proj.weight"] == {"axis": 0, "rounds": 4, "blocks": [16, 16]}
    for i in range(2):
        assert found[f"model.layers.{i}.mlp.experts.gate_up_proj"] == {"axis": 1, "rounds": 1, "blocks": [14, 14]}
    assert len(found) == 5
    _check_sizes({k: v for k, v in found.items() if "experts" not in k}, _tree(QWEN3_NEXT, "saved"))
    _check_sizes(found, _tree(QWEN3_NEXT, "memory"))


def test_gpt_neox_qkv_grouped_per_head_after_the_transpose():
    config = {"model_type": "gpt_neox", "vocab_size": 96, "hidden_size": 40, "num_attention_heads": 4,
              "intermediate_size": 24, "num_hidden_layers": 1, "rotary_pct": 0.5, **_TOKENS}
    per_head = {"axis": 0, "rounds": 4, "blocks": [10, 10, 10]}  # [B, S, H, 3D] -> transpose -> chunk(3, -1)
    assert fused_layouts_hf(config) == {"gpt_neox.layers.0.attention.query_key_value.bias": per_head,
                                        "gpt_neox.layers.0.attention.query_key_value.weight": per_head}


def test_deepseek_mla_latent_and_kv_b_but_not_the_rope_split_of_q():
    with open(os.path.join(DATA, "deepseek3", "config.json")) as f:
        config = json.load(f)["hf_config"]
    config.update(num_hidden_layers=2, first_k_dense_replace=1, v_head_dim=12)
    found = fused_layouts_hf(config)
    heads, kv_lora, rope, nope = (config[k] for k in ("num_attention_heads", "kv_lora_rank", "qk_rope_head_dim",
                                                      "qk_nope_head_dim"))
    for i in range(2):
        assert found[f"model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight"] == {
            "axis": 0, "rounds": 1, "blocks": [kv_lora, rope]}
        # per head [k_nope | v]
        assert found[f"model.layers.{i}.self_attn.kv_b_proj.weight"] == {"axis": 0, "rounds": heads,
                                                                         "blocks": [nope, 12]}
        # q_b_proj's [nope | rope] split is put back together after RoPE: no layout
        assert f"model.layers.{i}.self_attn.q_b_proj.weight" not in found


@pytest.mark.parametrize("config", [LLAMA, QWEN3], ids=["llama", "qwen3"])
def test_unfused_models_have_none(config):
    # per-head reshapes of q/k/v and RoPE's rotate_half (q used whole beside it) give nothing
    assert fused_layouts_hf(config) == {}


def test_composite_config_uses_the_readers_names():
    with open(os.path.join(DATA, "qwen3.5", "config.json")) as f:
        wrapped = json.load(f)  # {"hf_config": {...}} fixture wrapper, a composite (text_config) config
    found = fused_layouts_hf(wrapped)
    assert found, "qwen3.5 has fused experts and a gated q_proj"
    tree = _tree(wrapped["hf_config"], "memory")
    assert all(name.startswith("model.language_model.") and name in tree for name in found)
    _check_sizes(found, tree)


def test_too_large_is_refused_naming_the_config():
    with pytest.raises(CodeLayoutError) as e:
        fused_layouts_hf(LLAMA, max_params=1000)
    assert isinstance(e.value, CkptmapError)
    assert "llama" in str(e.value) and "max_params" in str(e.value)


def test_cli_prints_json(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(PHI3))
    assert main([str(path), "num_hidden_layers=1"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == {"model.layers.0.self_attn.qkv_proj.weight": {"axis": 0, "rounds": 1, "blocks": [40, 10, 10]},
                   "model.layers.0.mlp.gate_up_proj.weight": {"axis": 0, "rounds": 1, "blocks": [24, 24]}}
    assert main([str(path), "--max-params", "10"]) == 2
    assert "max_params" in capsys.readouterr().err
