"""The vocabulary of tiny configs: which HF and MaxText config keys name the same quantity, and the tiny sizes.

Read by the HF-side shrinking (verify.tiny_hf), the MaxText-side translation (verify.tiny_translate) and the full-size
HF configs derived from MaxText's ymls (verify.maxtext_catalog). Nothing here names a model: only keys.
"""

from __future__ import annotations

from ckptmap.errors import CkptmapError

HEAD_DIM = 16
VOCAB = 256
VOCAB_PADDING = 16
SLIDING_WINDOW = 16  # < the verify sequence length (64)
# DeepSeek-V3.2's sparse-attention indexer: a top-k below the verify sequence (so that it selects), and enough heads
# that no two keys tie. Its score sums ReLUs over heads: with 2 heads many keys score exactly 0, and torch.topk and
# MaxText (first k) break such ties differently; with 16 a key scores 0 with probability 2^-16.
INDEX_TOPK = 16
INDEX_HEADS = 16
MAX_GROUP = 4  # query heads per kv head, at most

# MaxText key -> HF keys that may hold the same quantity, most likely first.
MAXTEXT_TO_HF_KEYS: dict[str, tuple[str, ...]] = {
    "base_emb_dim": ("hidden_size",),
    "base_num_query_heads": ("num_attention_heads",),
    "base_num_kv_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "global_head_dim": ("global_head_dim",),
    "base_mlp_dim": ("intermediate_size_mlp", "intermediate_size", "shared_expert_intermediate_size",
                     "moe_intermediate_size"),
    "base_moe_mlp_dim": ("moe_intermediate_size", "intermediate_size"),
    "base_num_decoder_layers": ("num_hidden_layers",),
    "first_num_dense_layers": ("first_k_dense_replace",),
    "num_experts": ("num_local_experts", "n_routed_experts", "num_experts"),
    "num_experts_per_tok": ("num_experts_per_tok", "top_k_experts", "experts_per_token"),
    "shared_experts": ("n_shared_experts",),
    "n_routing_groups": ("n_group",),
    "topk_routing_group": ("topk_group",),
    "q_lora_rank": ("q_lora_rank",),
    "kv_lora_rank": ("kv_lora_rank",),
    "qk_nope_head_dim": ("qk_nope_head_dim",),
    "qk_rope_head_dim": ("qk_rope_head_dim",),
    "v_head_dim": ("v_head_dim",),
    "gdn_conv_kernel_dim": ("linear_conv_kernel_dim",),
    "gdn_key_head_dim": ("linear_key_head_dim",),
    "gdn_value_head_dim": ("linear_value_head_dim",),
    "gdn_num_key_heads": ("linear_num_key_heads",),
    "gdn_num_value_heads": ("linear_num_value_heads",),
    "sliding_window_size": ("sliding_window",),
    "chunk_attn_window_size": ("attention_chunk_size",),
    "num_global_kv_heads": ("num_global_key_value_heads",),
    "first_num_hash_layers": ("num_hash_layers",),
    "o_lora_rank": ("o_lora_rank",),
    "o_groups": ("o_groups",),
    "indexer_topk": ("index_topk",),
    "indexer_n_heads": ("index_n_heads",),
    "indexer_head_dim": ("index_head_dim",),
    "num_kv_shared_layers": ("num_kv_shared_layers",),
    "hidden_size_per_layer_input": ("hidden_size_per_layer_input",),
    "vocab_size_per_layer_input": ("vocab_size_per_layer_input",),
}

# MaxText list keys -> HF keys holding the same per-layer list (cut to the tiny layers alike).
MAXTEXT_TO_HF_LISTS: dict[str, tuple[str, ...]] = {
    "compress_ratios": ("compress_ratios",),
}

# HF keys counting leading layers of another kind (dense before MoE, hash-routed before learned routing).
PREFIX_COUNT_KEYS = ("first_k_dense_replace", "num_hash_layers")
# HF keys counting trailing layers of another kind (Gemma 4's last layers reuse an earlier layer's keys and values).
SUFFIX_COUNT_KEYS = ("num_kv_shared_layers",)

MAXTEXT_TO_HF_SETTINGS: dict[str, tuple[str, ...]] = {
    "normalization_layer_epsilon": ("rms_norm_eps", "layer_norm_eps", "norm_eps"),
    "logits_via_embedding": ("tie_word_embeddings",),
    "nope_layer_interval": ("no_rope_layer_interval",),
    "temperature_tuning": ("attn_temperature_tuning",),
    "use_qk_norm": ("use_qk_norm",),
    "interleave_moe_layer_step": ("interleave_moe_layer_step",),
    "routed_scaling_factor": ("routed_scaling_factor",),
    "vocab_size": ("vocab_size",),
    "compressed_rope_max_timescale": ("compress_rope_theta",),
}
# Windows MaxText turns off with 0 (base.yml): off there means None on the HF side.
MAXTEXT_WINDOWS: dict[str, str] = {"sliding_window_size": "sliding_window", "chunk_attn_window_size":
                                   "attention_chunk_size"}
# MaxText's YaRN keys -> the HF rope dict's keys.
MAXTEXT_TO_HF_YARN: dict[str, tuple[str, ...]] = {
    "rope_factor": ("factor",),
    "original_max_position_embeddings": ("original_max_position_embeddings",),
    "beta_fast": ("beta_fast",),
    "beta_slow": ("beta_slow",),
    "mscale": ("mscale", "mscale_all_dim"),
}
# MaxText's llama3.1 RoPE scaling is fixed in its code (`LLaMARotaryEmbedding._apply_scaling_factor`): these are
# its constants, written as transformers' `llama3` rope parameters.
MAXTEXT_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}

# Keys of a per-layer override (transformers' `per_layer_config`) -> the config key naming the same quantity for the
# full-attention (global) layers.
PER_LAYER_TO_GLOBAL = {"head_dim": "global_head_dim", "num_key_value_heads": "num_global_key_value_heads"}


class TinyConfigError(CkptmapError):
    """Tiny configs could not be derived."""


def _round_to(x: float, step: int, minimum: int) -> int:
    return max(minimum, int(round(x / step)) * step)


def _num(d: dict, key: str):
    v = d.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
