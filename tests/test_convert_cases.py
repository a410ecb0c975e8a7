"""Hand-built HF -> MaxText mappings over the tiny fixtures, shared by the convert and export tests.

They stand in for the solver's output (same data model) and cover the structures convert and export must handle:
llama scanned (stacked target slots, layers at axis 1) and unscanned (per-cell slots); a fused qkv split into three
MaxText tensors; mixtral's expert grid (layers x experts, stacked on (1, 0) when scanned, per-layer tensors with
experts stacked at 0 when not) including its MoeBlock gate; gpt-oss's HF-stacked experts (the hook loops over them)
with the gate/up interleave split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.runner import seeded_tensor
from ckptmap.transforms import Chain, Parallel, Reshape, Split, Transpose

FIXTURES = Path(__file__).parent / "data" / "maxtext_tiny"
T = Transpose((1, 0))


def fixture(family: str) -> tuple[dict, dict[str, tuple], dict[int, dict[str, tuple]]]:
    """(config.json, HF name -> shape, {scan: MaxText name -> shape} for the scan settings the fixture has)."""
    d = FIXTURES / family
    config = json.loads((d / "config.json").read_text())
    hf = {k: tuple(v) for k, v in json.loads((d / "hf_params.json").read_text()).items()}
    mt = {s: {k: tuple(v) for k, v in json.loads((d / f"maxtext_params.scan{s}.json").read_text()).items()}
          for s in (0, 1) if (d / f"maxtext_params.scan{s}.json").exists()}
    return config, hf, mt


def seeded(shapes: dict[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    """Reproducible small-integer tensors: exact under every structural op."""
    return {n: seeded_tensor(n, s, seed, integer=True) for n, s in shapes.items()}


def _layer_rule(hf: str, mt: str, chain, layers: int, scanned: bool, axis: int = 1) -> Rule:
    src = Slot.per_cell([hf.format(i=i) for i in range(layers)])
    if scanned:
        return Rule((src,), (Slot.stacked(mt.format(layers="layers"), (axis,)),), chain, grid=(layers,))
    return Rule((src,), (Slot.per_cell([mt.format(layers=f"layers_{i}") for i in range(layers)]),), chain,
                grid=(layers,))


def _proj(out_heads: int, head_dim: int, hidden: int):
    """HF Linear [heads*head_dim, hidden] -> MaxText [hidden, heads, head_dim]."""
    return Chain((T, Reshape((hidden, out_heads * head_dim), (hidden, out_heads, head_dim))))


def _attention_and_norms(layers: int, scanned: bool, hidden=64, heads=4, kv=2, hd=16) -> list[Rule]:
    a = "model.layers.{i}.self_attn."
    m = "params-decoder-{layers}-self_attention-"
    out = Chain((T, Reshape((heads * hd, hidden), (heads, hd, hidden))))
    return [
        _layer_rule(a + "q_proj.weight", m + "query-kernel", _proj(heads, hd, hidden), layers, scanned),
        _layer_rule(a + "k_proj.weight", m + "key-kernel", _proj(kv, hd, hidden), layers, scanned),
        _layer_rule(a + "v_proj.weight", m + "value-kernel", _proj(kv, hd, hidden), layers, scanned),
        _layer_rule(a + "o_proj.weight", m + "out-kernel", out, layers, scanned),
        _layer_rule("model.layers.{i}.input_layernorm.weight", "params-decoder-{layers}-pre_self_attention_layer_norm-scale",
                    Chain(()), layers, scanned),
        _layer_rule("model.layers.{i}.post_attention_layernorm.weight",
                    "params-decoder-{layers}-post_self_attention_layer_norm-scale", Chain(()), layers, scanned),
    ]


def _ends() -> list[Rule]:
    return [
        Rule((Slot.single("model.embed_tokens.weight"),), (Slot.single("params-token_embedder-embedding"),), Chain(())),
        Rule((Slot.single("model.norm.weight"),), (Slot.single("params-decoder-decoder_norm-scale"),), Chain(())),
        Rule((Slot.single("lm_head.weight"),), (Slot.single("params-decoder-logits_dense-kernel"),), Chain((T,))),
    ]


def llama_mapping(scanned: bool) -> Mapping:
    """tiny llama3.1: HF -> MaxText, scanned (stacked, layers at axis 1) or unscanned (per-cell)."""
    layers = 2
    rules = _ends() + _attention_and_norms(layers, scanned) + [
        _layer_rule("model.layers.{i}.mlp.gate_proj.weight", "params-decoder-{layers}-mlp-wi_0-kernel", Chain((T,)),
                    layers, scanned),
        _layer_rule("model.layers.{i}.mlp.up_proj.weight", "params-decoder-{layers}-mlp-wi_1-kernel", Chain((T,)),
                    layers, scanned),
        _layer_rule("model.layers.{i}.mlp.down_proj.weight", "params-decoder-{layers}-mlp-wo-kernel", Chain((T,)),
                    layers, scanned),
    ]
    return Mapping(rules, source="hf:llama3.1 tiny", target=f"maxtext:llama3.1 scan{int(scanned)}")


def fused_qkv_mapping(scanned: bool) -> tuple[Mapping, dict[str, tuple]]:
    """An HF checkpoint with a fused `qkv_proj` [q+k+v, hidden] split into MaxText's query/key/value (three
    targets of unequal shapes from one source). Returns the mapping and the HF shapes it reads."""
    layers, hidden, heads, kv, hd = 2, 64, 4, 2, 16
    rules = []
    hf_shapes = {}
    for i in range(layers):
        hf_shapes[f"model.layers.{i}.self_attn.qkv_proj.weight"] = ((heads + 2 * kv) * hd, hidden)
    chain = Chain((Split(0, (heads * hd, kv * hd, kv * hd)),
                   Parallel((_proj(heads, hd, hidden), _proj(kv, hd, hidden), _proj(kv, hd, hidden)))))
    src = Slot.per_cell([f"model.layers.{i}.self_attn.qkv_proj.weight" for i in range(layers)])
    names = ["query", "key", "value"]
    if scanned:
        targets = tuple(Slot.stacked(f"params-decoder-layers-self_attention-{n}-kernel", (1,)) for n in names)
    else:
        targets = tuple(Slot.per_cell([f"params-decoder-layers_{i}-self_attention-{n}-kernel" for i in range(layers)])
                        for n in names)
    rules.append(Rule((src,), targets, chain, grid=(layers,)))
    return Mapping(rules, source="hf:fused-qkv", target=f"maxtext:llama3.1 scan{int(scanned)}"), hf_shapes


def mixtral_mapping(scanned: bool) -> Mapping:
    """tiny mixtral: attention + norms + MoE gate (per layer) + the expert grid (layers x experts)."""
    layers, experts = 2, 4
    rules = _ends() + _attention_and_norms(layers, scanned)
    gate_src = Slot.per_cell([f"model.layers.{i}.block_sparse_moe.gate.weight" for i in range(layers)])
    if scanned:
        gate_tgt = Slot.stacked("params-decoder-layers-MoeBlock_0-gate-kernel", (1,))
    else:
        gate_tgt = Slot.per_cell([f"params-decoder-layers_{i}-MoeBlock_0-gate-kernel" for i in range(layers)])
    rules.append(Rule((gate_src,), (gate_tgt,), Chain((T,)), grid=(layers,)))
    for hf_w, mt_w in (("w1", "wi_0"), ("w3", "wi_1"), ("w2", "wo")):
        src = Slot.per_cell([[f"model.layers.{i}.block_sparse_moe.experts.{e}.{hf_w}.weight" for e in range(experts)]
                             for i in range(layers)])
        if scanned:  # [experts, layers, ...]: layers (grid dim 0) at axis 1, experts (grid dim 1) at axis 0
            tgt = Slot.stacked(f"params-decoder-layers-MoeBlock_0-{mt_w}", (1, 0))
        else:  # one tensor per layer, experts stacked at axis 0
            tgt = Slot.mixed([f"params-decoder-layers_{i}-MoeBlock_0-{mt_w}" for i in range(layers)], (0,))
        rules.append(Rule((src,), (tgt,), Chain((T,)), grid=(layers, experts)))
    return Mapping(rules, source="hf:mixtral tiny", target=f"maxtext:mixtral scan{int(scanned)}")


def gpt_oss_experts_mapping(scanned: bool) -> Mapping:
    """gpt-oss' HF-stacked experts: `mlp.experts.gate_up_proj` [E, hidden, 2*mlp] (gate/up interleaved) ->
    MaxText wi_0 / wi_1, `down_proj` [E, mlp, hidden] -> wo. Experts are stacked on both sides, so the hook loops
    over them; scanned trees nest the layers as (layers_0, layers_1) pairs."""
    layers, experts = 4, 4
    rules = []
    split = Chain((Split(1, (32, 32), interleave=True),))
    groups = [(r, range(r, layers, 2)) for r in range(2)] if scanned else [(0, range(layers))]
    for r, layer_ids in groups:
        gu = Slot.mixed([f"model.layers.{i}.mlp.experts.gate_up_proj" for i in layer_ids], (0,))
        down = Slot.mixed([f"model.layers.{i}.mlp.experts.down_proj" for i in layer_ids], (0,))
        n = len(layer_ids)
        if scanned:
            pre = f"params-decoder-layers-layers_{r}-GptOssMlp-"
            wi = tuple(Slot.stacked(pre + w, (1, 0)) for w in ("wi_0", "wi_1"))
            wo = Slot.stacked(pre + "wo", (1, 0))
        else:
            wi = tuple(Slot.mixed([f"params-decoder-layers_{i}-GptOssMlp-{w}" for i in layer_ids], (0,))
                       for w in ("wi_0", "wi_1"))
            wo = Slot.mixed([f"params-decoder-layers_{i}-GptOssMlp-wo" for i in layer_ids], (0,))
        rules.append(Rule((gu,), wi, split, grid=(n, experts)))
        rules.append(Rule((down,), (wo,), Chain(()), grid=(n, experts)))
    return Mapping(rules, source="hf:gpt-oss tiny (experts)", target=f"maxtext:gpt-oss scan{int(scanned)}")


def test_hand_mappings_round_trip_through_json():
    for m in (llama_mapping(True), llama_mapping(False), fused_qkv_mapping(True)[0], mixtral_mapping(True),
              mixtral_mapping(False), gpt_oss_experts_mapping(True), gpt_oss_experts_mapping(False)):
        back = Mapping.from_json(json.loads(json.dumps(m.to_json())))
        assert back.to_json() == m.to_json()


def test_hand_mappings_produce_exactly_the_fixture_trees():
    from ckptmap.apply import apply_to_dict

    for family, build in (("llama3.1", llama_mapping), ("mixtral", mixtral_mapping)):
        _, hf, mt = fixture(family)
        for scan in (0, 1):
            out = apply_to_dict(build(bool(scan)), seeded(hf))
            assert {k: v.shape for k, v in out.items()} == mt[scan], (family, scan)
    _, hf, mt = fixture("gpt-oss")
    for scan in (0, 1):
        out = apply_to_dict(gpt_oss_experts_mapping(bool(scan)), seeded(hf))
        assert out and all(mt[scan][k] == v.shape for k, v in out.items())
