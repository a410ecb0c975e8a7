"""verify against MaxText (needs .venv-maxtext): tiny Llama 3.1, HF -> MaxText, from a structural mapping written
by hand here (test data), to a verified mapping whose value ops the search found."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.transforms import Chain, Reshape, Transpose
from ckptmap.verify import runners_for, search_and_verify, tiny_specs, verify_mapping
from ckptmap.verify.candidates import strip_value_ops

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.maxtext


def llama_structural(dims: dict, scan: bool) -> Mapping:
    """HF Llama -> MaxText, shapes only: transposes and head reshapes, no RoPE, no query scale."""
    E, H, KV, D, L = (dims[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "layers"))
    T = Transpose((1, 0))

    def hf(part):
        return Slot.per_cell([f"model.layers.{i}.{part}" for i in range(L)])

    def mt(part):
        if scan:
            return Slot.stacked(f"params-decoder-layers-{part}", (1,))
        return Slot.per_cell([f"params-decoder-layers_{i}-{part}" for i in range(L)])

    def layer(src, tgt, *ops):
        return Rule((hf(src),), (mt(tgt),), Chain(ops), grid=(L,))

    return Mapping(source="hf", target="maxtext", rules=[
        Rule((Slot.single("model.embed_tokens.weight"),), (Slot.single("params-token_embedder-embedding"),), Chain(())),
        Rule((Slot.single("lm_head.weight"),), (Slot.single("params-decoder-logits_dense-kernel"),), Chain((T,))),
        Rule((Slot.single("model.norm.weight"),), (Slot.single("params-decoder-decoder_norm-scale"),), Chain(())),
        layer("self_attn.q_proj.weight", "self_attention-query-kernel", T, Reshape((E, H * D), (E, H, D))),
        layer("self_attn.k_proj.weight", "self_attention-key-kernel", T, Reshape((E, KV * D), (E, KV, D))),
        layer("self_attn.v_proj.weight", "self_attention-value-kernel", T, Reshape((E, KV * D), (E, KV, D))),
        layer("self_attn.o_proj.weight", "self_attention-out-kernel", T, Reshape((H * D, E), (H, D, E))),
        layer("mlp.gate_proj.weight", "mlp-wi_0-kernel", T),
        layer("mlp.up_proj.weight", "mlp-wi_1-kernel", T),
        layer("mlp.down_proj.weight", "mlp-wo-kernel", T),
        layer("input_layernorm.weight", "pre_self_attention_layer_norm-scale"),
        layer("post_attention_layernorm.weight", "post_self_attention_layer_norm-scale"),
    ])


@pytest.fixture(scope="module")
def llama_unscanned(tmp_path_factory):
    t0 = time.perf_counter()
    src_spec, tgt_spec = tiny_specs("llama3.1-8b", directory=str(tmp_path_factory.mktemp("tiny")))
    src, tgt = runners_for(src_spec, tgt_spec + " scan_layers=false", device="cpu")
    yield src, tgt, t0
    tgt.close()


def _decision(report, word: str) -> str:
    return next(d.choice for d in report.decisions if word in d.targets[0])


def test_search_finds_rope_and_query_scale_on_tiny_llama(llama_unscanned):
    src, tgt, t0 = llama_unscanned
    structural = llama_structural(src.dims(), scan=False)
    assert not verify_mapping(structural, src, tgt, diagnose=False).passed
    mapping, report = search_and_verify(structural, src, tgt)
    seconds = time.perf_counter() - t0
    print(f"\ntiny llama3.1 HF -> MaxText (unscanned), worker start included: {seconds:.1f} s\n{report.table(2)}")
    assert report.passed and report.kl_max < 1e-4 and report.logits.top1_agreement == 1.0
    assert _decision(report, "query-kernel") == "rope half_to_interleaved on axis 2, scale 1/sqrt(head_dim)"
    assert _decision(report, "key-kernel") == "rope half_to_interleaved on axis 2"
    assert {d.targets[0].split("-")[-2] for d in report.decisions} == {"query", "key"}
    assert any(not t.accepted and t.kl_max > 1e-2 for t in report.trials)  # alternatives tried are on record
    assert seconds < 180  # target: under 90 s end to end on a quiet 2-core machine


def test_dropping_the_rope_permutation_fails_and_names_query_and_key(llama_unscanned):
    src, tgt, _ = llama_unscanned
    mapping, _ = search_and_verify(llama_structural(src.dims(), scan=False), src, tgt)
    assert verify_mapping(mapping, src, tgt).passed
    no_rope = replace(mapping, rules=[
        replace(r, chain=Chain((Transpose((1, 0)), Reshape(r.chain.ops[1].in_shape, r.chain.ops[1].out_shape))))
        if "key-kernel" in r.target_names()[0] else r for r in mapping.rules])
    report = verify_mapping(no_rope, src, tgt)
    assert not report.passed and report.first_divergence == "layer_0"
    named = {t for b in report.broken for t in b["targets"]}
    assert "params-decoder-layers_0-self_attention-key-kernel" in named
    assert all("rope" in b["fix"] for b in report.broken)


def test_scanned_llama_gets_the_same_value_ops(tmp_path):
    src_spec, tgt_spec = tiny_specs("llama3.1-8b", directory=str(tmp_path))
    src, tgt = runners_for(src_spec, tgt_spec + " scan_layers=true")
    try:
        mapping, report = search_and_verify(llama_structural(src.dims(), scan=True), src, tgt)
    finally:
        tgt.close()
    assert report.passed and report.kl_max < 1e-4
    assert _decision(report, "query-kernel") == "rope half_to_interleaved on axis 2, scale 1/sqrt(head_dim)"
    q = next(r for r in mapping.rules if "query-kernel" in r.target_names()[0])
    assert q.targets[0].axes == (1,) and strip_value_ops(q.chain) != q.chain
