"""Canonical dims: one flat `str -> int` dict of the config numbers that shape a checkpoint.

Canonical names: hidden, heads, kv_heads, head_dim, mlp, moe_mlp, layers, experts, vocab; other shape-relevant
numbers keep a descriptive name (q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim,
experts_per_tok, shared_experts, shared_mlp, first_k_dense, ...). Vision / audio towers get a `vision_` / `audio_`
prefix. Numbers that do not size tensors (max positions, sliding window, token ids) are left out, so the solver
does not mistake them for tensor dimensions.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

# canonical name <- HF config fields, first present wins
_HF_CANONICAL: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "d_model", "n_embd", "dim"),
    "heads": ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads"),
    "kv_heads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"),
    "head_dim": ("head_dim", "kv_channels"),
    "mlp": ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "encoder_ffn_dim"),
    "moe_mlp": ("moe_intermediate_size", "expert_intermediate_size"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "depth", "encoder_layers"),
    "experts": ("num_local_experts", "n_routed_experts", "num_experts"),
    "vocab": ("vocab_size",),
}

# HF fields kept under their own (or a clearer) name when present and positive
_HF_EXTRA: dict[str, str] = {
    "q_lora_rank": "q_lora_rank", "kv_lora_rank": "kv_lora_rank", "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim", "v_head_dim": "v_head_dim", "qk_head_dim": "qk_head_dim",
    "num_experts_per_tok": "experts_per_tok", "n_shared_experts": "shared_experts",
    "shared_expert_intermediate_size": "shared_mlp", "first_k_dense_replace": "first_k_dense",
    "global_head_dim": "global_head_dim", "num_global_key_value_heads": "global_kv_heads",
    "linear_num_key_heads": "linear_num_key_heads", "linear_num_value_heads": "linear_num_value_heads",
    "linear_key_head_dim": "linear_key_head_dim", "linear_value_head_dim": "linear_value_head_dim",
    "linear_conv_kernel_dim": "linear_conv_kernel_dim", "hidden_size_per_layer_input": "per_layer_hidden",
    "vocab_size_per_layer_input": "per_layer_vocab", "num_kv_shared_layers": "kv_shared_layers",
    "index_n_heads": "index_heads", "index_head_dim": "index_head_dim", "out_hidden_size": "out_hidden",
    "patch_size": "patch_size", "num_channels": "channels", "output_dim": "output_dim",
    "downsample_hidden_size": "downsample_hidden", "spatial_merge_size": "spatial_merge",
    "temporal_patch_size": "temporal_patch_size", "mm_tokens_per_image": "mm_tokens_per_image",
    "o_groups": "o_groups", "o_lora_rank": "o_lora_rank",
}

# MaxText config keys (and their base_ spellings) -> canonical names
_MAXTEXT_CANONICAL: dict[str, str] = {
    "emb_dim": "hidden", "base_emb_dim": "hidden", "num_query_heads": "heads", "base_num_query_heads": "heads",
    "num_kv_heads": "kv_heads", "base_num_kv_heads": "kv_heads", "head_dim": "head_dim", "mlp_dim": "mlp",
    "base_mlp_dim": "mlp", "moe_mlp_dim": "moe_mlp", "base_moe_mlp_dim": "moe_mlp",
    "num_decoder_layers": "layers", "base_num_decoder_layers": "layers", "vocab_size": "vocab",
    "num_experts": "experts", "num_experts_per_tok": "experts_per_tok", "shared_experts": "shared_experts",
    "first_num_dense_layers": "first_k_dense", "q_lora_rank": "q_lora_rank", "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim", "qk_rope_head_dim": "qk_rope_head_dim", "v_head_dim": "v_head_dim",
    "global_head_dim": "global_head_dim", "global_num_kv_heads": "global_kv_heads",
    "o_groups": "o_groups", "o_lora_rank": "o_lora_rank",
}


def _positive_int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        return None
    return v


def _first(cfg: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    for k in keys:
        v = _positive_int(cfg.get(k))
        if v is not None:
            return v
    return None


def dims_from_hf_dict(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, int]:
    """Dims of one (flat) HF config dict; `prefix` names a tower (`vision_`)."""
    dims: dict[str, int] = {}
    for canon, keys in _HF_CANONICAL.items():
        v = _first(cfg, keys)
        if v is not None:
            dims[canon] = v
    if "experts" in dims and dims["experts"] <= 1:
        del dims["experts"]
    if "heads" in dims and "kv_heads" not in dims and not prefix:
        dims["kv_heads"] = dims["heads"]
    if "head_dim" not in dims and "hidden" in dims and "heads" in dims and dims["hidden"] % dims["heads"] == 0:
        dims["head_dim"] = dims["hidden"] // dims["heads"]
    if "experts" not in dims:
        dims.pop("moe_mlp", None)  # a dense model's leftover moe_intermediate_size sizes no tensor
    elif "moe_mlp" not in dims and "mlp" in dims:
        dims["moe_mlp"] = dims["mlp"]  # Mixtral-style configs size each expert with intermediate_size
    for field_name, canon in _HF_EXTRA.items():
        v = _positive_int(cfg.get(field_name))
        if v is not None:
            dims.setdefault(canon, v)
    return {prefix + k: v for k, v in dims.items()}


def _as_dict(cfg: Any) -> dict:
    if isinstance(cfg, Mapping):
        return dict(cfg)
    to_dict = getattr(cfg, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else dict(vars(cfg))


def _text_part(cfg: dict) -> dict:
    """The language-model part of a (possibly composite) HF config dict."""
    for key in ("text_config", "thinker_config", "llm_config", "language_config"):
        sub = cfg.get(key)
        if isinstance(sub, dict):
            return _text_part(sub)
    return cfg


def _tower(cfg: dict, key: str) -> dict | None:
    sub = cfg.get(key)
    if isinstance(sub, dict):
        return sub
    for outer in ("thinker_config",):
        inner = cfg.get(outer)
        if isinstance(inner, dict) and isinstance(inner.get(key), dict):
            return inner[key]
    return None


def dims_from_hf_config(cfg: Any) -> dict[str, int]:
    """Dims of an HF config (object or dict): the language model's dims plus `vision_*` / `audio_*` towers."""
    d = _as_dict(cfg)
    dims = dims_from_hf_dict(_text_part(d))
    for key, prefix in (("vision_config", "vision_"), ("audio_config", "audio_")):
        tower = _tower(d, key)
        if tower:
            dims.update(dims_from_hf_dict(tower, prefix))
    return dims


def dims_from_maxtext(values: Mapping[str, Any] | Iterable[str]) -> dict[str, int]:
    """Dims of MaxText config values: a dict (`{"emb_dim": 64, ...}`) or `key=value` override strings.

    Unset sentinels (`moe_mlp_dim=-1`, `num_experts=1` for a dense model, `q_lora_rank=0`) are left out.
    """
    if not isinstance(values, Mapping):
        pairs = {}
        for tok in values:
            k, _, v = str(tok).partition("=")
            try:
                pairs[k] = int(v)
            except ValueError:
                continue
        values = pairs
    dims: dict[str, int] = {}
    # base_ spellings first, so a derived value (emb_dim) wins when both are present
    for key in sorted(values, key=lambda k: not k.startswith("base_")):
        canon = _MAXTEXT_CANONICAL.get(key)
        v = _positive_int(values[key])
        if canon is None or v is None:
            continue
        dims[canon] = v
    if dims.get("experts", 0) <= 1:
        dims.pop("experts", None)
    return dims


def merge_dims(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Combine the dims of both sides of a mapping.

    Names found on one side are copied; equal values are kept once. When both sides disagree (MaxText's unused
    `head_dim` beside an MLA model's HF `head_dim`), `a`'s value keeps the name and `b`'s is added as
    `<name>_alt`, so no number the solver may need is lost.
    """
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif out[k] != v:
            alt = f"{k}_alt"
            if out.get(alt, v) == v:
                out[alt] = v
    return out
