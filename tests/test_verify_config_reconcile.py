"""An HF config made to compute what MaxText computes (verify.config_reconcile), as the benchmark's verify column
does before it runs a hand-made fixture's pair: settings outside the weights take MaxText's values, settings that
are structure or weights are named and left."""

from __future__ import annotations

from ckptmap.verify.config_diff import diff_configs
from ckptmap.verify.config_reconcile import reconcile_to_maxtext

GEMMA2_HF = {"model_type": "gemma2", "hidden_size": 64, "num_attention_heads": 4, "head_dim": 16,
             "query_pre_attn_scalar": 256, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
             "rms_norm_eps": 1e-6, "hidden_activation": "gelu", "rope_theta": 10000.0, "sliding_window": 4096,
             "layer_types": ["sliding_attention", "full_attention"], "tie_word_embeddings": True}
GEMMA2_MAXTEXT = {"decoder_block": "DecoderBlockType.GEMMA2", "head_dim": 16, "final_logits_soft_cap": 30.0,
                  "attn_logits_soft_cap": 50.0, "rope_max_timescale": 10000, "mlp_activations": ["gelu", "linear"],
                  "sliding_window_size": 4096, "logits_via_embedding": True}


def test_a_fixtures_query_scale_and_activation_become_maxtexts():
    fixed, notes, left = reconcile_to_maxtext(GEMMA2_HF, GEMMA2_MAXTEXT, seq_len=1024)
    assert fixed["query_pre_attn_scalar"] == 16 and fixed["hidden_activation"] == "gelu_pytorch_tanh"
    assert GEMMA2_HF["query_pre_attn_scalar"] == 256  # the input is not changed
    assert len(notes) == 2 and any("query_pre_attn_scalar: 1/sqrt(256) -> 1/sqrt(16)" in n for n in notes)
    assert left == [] and diff_configs(fixed, GEMMA2_MAXTEXT, seq_len=1024) == []


def test_rope_theta_is_set_per_attention_kind_and_tied_embeddings_are_left():
    hf = dict(GEMMA2_HF, query_pre_attn_scalar=16, hidden_activation="gelu_pytorch_tanh", rope_theta=None,
              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    mt = dict(GEMMA2_MAXTEXT, rope_max_timescale=1_000_000, local_rope_max_timescale=10000,
              decoder_block="DecoderBlockType.GEMMA3", logits_via_embedding=False)
    fixed, notes, left = reconcile_to_maxtext(hf, mt, seq_len=1024)
    assert fixed["rope_parameters"]["full_attention"]["rope_theta"] == 1e6
    assert fixed["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
    assert any(n.startswith("rope_theta (global layers)") for n in notes)
    assert [d for d in left if d.startswith("tied embeddings")]  # weights, not a setting: named, not changed
