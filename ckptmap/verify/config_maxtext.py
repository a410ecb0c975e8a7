"""What MaxText's config values say about the function its model computes (verify.config_diff), following MaxText
0.2.5's own code (see config_diff's docstring), as Settings; and the MLP activation made the same on a tiny HF config
(reconcile_activation)."""

from __future__ import annotations

from ckptmap.verify.config_hf import _hf_activation
from ckptmap.verify.config_settings import (_CUSTOM_MLP_DECODERS, _HF_ACTIVATIONS, _HF_NAME_FOR, _MAXTEXT_ACTIVATIONS,
                                            KINDS, MAXTEXT_FIXED_EPS_DECODERS, MAXTEXT_LLAMA3_SCALING,
                                            MAXTEXT_RUNTIME_QUERY_SCALE, Setting, _cap, _fraction_text, _g, _num,
                                            _rope_setting)

# ---- MaxText -----------------------------------------------------------------------------------------------------
def decoder_block(mt: dict) -> str:
    """`DecoderBlockType.GEMMA2` (as config_values writes an enum) or `gemma2` -> `gemma2`."""
    block = str(mt.get("decoder_block", "") or "")
    return block.split(".")[-1].lower()


def _maxtext_rope(mt: dict, kind: str) -> tuple[Setting, Setting | None, Setting]:
    """(scaling, theta, rotary fraction) MaxText's attention of one kind gets, following init_rotary_embedding."""
    name = str(mt.get("model_name", "") or "")
    block = decoder_block(mt)
    rope_type = str(mt.get("rope_type", "default") or "default").lower()
    theta = _num(mt.get("rope_max_timescale"))
    if block == "deepseek4":
        # attention_compressed.py: compressed_rope_max_timescale on CSA / HCA layers, rope_max_timescale on the
        # sliding ones; the rotated part is qk_rope_head_dim of head_dim
        key = "compressed_rope_max_timescale" if kind == "compressed" else "rope_max_timescale"
        use = _num(mt.get(key)) or theta
        rope, head = _num(mt.get("qk_rope_head_dim")), _num(mt.get("head_dim"))
        frac = rope / head if rope and head else 1.0
        return (_rope_setting("default", {}), Setting(use, _g(use), key),
                Setting((frac, "truncated" if frac < 1 else ""), _fraction_text(frac, "truncated"),
                        "qk_rope_head_dim / head_dim"))
    local_theta = _num(mt.get("local_rope_max_timescale")) or -1.0
    partial = _num(mt.get("partial_rotary_factor"))
    partial = 1.0 if partial is None else partial
    if block in ("gemma4", "gemma4_small"):
        key = "global_rope_max_timescale" if kind == "global" else "local_rope_max_timescale"
        t = _num(mt.get(key)) or -1.0
        use = t if t > 0 else theta
        prop = _num(mt.get("global_rope_proportion" if kind == "global" else "local_rope_proportion"))
        prop = (0.25 if kind == "global" else 1.0) if prop is None else prop
        why = f"{key}" if t > 0 else "rope_max_timescale"
        return (_rope_setting("default", {}), Setting(use, _g(use), why),
                Setting((prop, "proportional" if prop < 1 else ""), _fraction_text(prop, "proportional"),
                        f"{'global' if kind == 'global' else 'local'}_rope_proportion"))
    fraction = Setting((partial, "truncated" if partial < 1 else ""), _fraction_text(partial, "truncated"),
                       "partial_rotary_factor")
    theta_s = Setting(theta, _g(theta), "rope_max_timescale")
    if mt.get("use_mrope"):
        return _rope_setting("default", {}, "use_mrope"), theta_s, fraction
    if name.startswith("llama3.1") or rope_type.startswith("llama3.1"):
        why = ("applied by model name llama3.1" if name.startswith("llama3.1") and not rope_type.startswith("llama3.1")
               else "rope_type llama3.1")
        if mt.get("rope_use_scale") is False:
            return _rope_setting("default", {}, f"{why}, rope_use_scale false"), theta_s, fraction
        return _rope_setting("llama3", dict(MAXTEXT_LLAMA3_SCALING), why), theta_s, fraction
    if rope_type.startswith("yarn"):
        params = {"factor": mt.get("rope_factor"),
                  "original_max_position_embeddings": mt.get("original_max_position_embeddings"),
                  "beta_fast": mt.get("beta_fast"), "beta_slow": mt.get("beta_slow"),
                  "truncate": bool(mt.get("rope_truncate", True))}
        return _rope_setting("yarn", params, "rope_type yarn"), theta_s, fraction
    if block in ("qwen3_next", "qwen3_5") or partial < 1:
        return _rope_setting("default", {}), theta_s, fraction
    if kind == "local" and local_theta > 0:
        theta_s = Setting(local_theta, _g(local_theta), "local_rope_max_timescale")
    factor = _num(mt.get("rope_linear_scaling_factor")) or 1.0
    if block == "gemma3" and kind == "local":
        factor = 1.0  # gemma3: the linear factor does not apply to local sliding layers
    if factor != 1.0:
        return _rope_setting("linear", {"factor": factor}, "rope_linear_scaling_factor"), theta_s, fraction
    return _rope_setting("default", {}), theta_s, fraction


def _maxtext_query_scalar(mt: dict) -> Setting | None:
    """The x in the 1/sqrt(x) MaxText's model (with its own conversion) scales queries by."""
    if str(mt.get("attention_type", "")).lower().endswith("mla"):
        return None
    block = decoder_block(mt)
    head_dim = _num(mt.get("head_dim"))
    name = str(mt.get("model_name", "") or "")
    if block == "gemma3" and name == "gemma3-27b":
        emb, heads = _num(mt.get("base_emb_dim") or mt.get("emb_dim")), _num(
            mt.get("base_num_query_heads") or mt.get("num_query_heads"))
        if emb and heads:
            return Setting(float(emb // heads), f"1/sqrt({_g(emb // heads)})", "by model name gemma3-27b")
    if head_dim is None:
        return None
    if block in ("gemma4", "gemma4_small"):
        return None  # query norms and scale 1.0 on both sides
    why = ("applied at run time (head_dim)" if block in MAXTEXT_RUNTIME_QUERY_SCALE
           else "MaxText's own conversion folds 1/sqrt(head_dim) into the query kernel")
    return Setting(head_dim, f"1/sqrt({_g(head_dim)})", why)


def maxtext_settings(mt: dict) -> dict[str, Setting]:
    """Setting name -> Setting for MaxText config values (MaxTextSession.function_config()), for the attention
    kinds in `kinds` (the HF side's: global, local)."""
    out: dict[str, Setting] = {}
    for kind in KINDS:
        scaling, theta, fraction = _maxtext_rope(mt, kind)
        out[f"rope scaling ({kind})"] = scaling
        if theta is not None:
            out[f"rope theta ({kind})"] = theta
        out[f"rotary fraction ({kind})"] = fraction
    block = decoder_block(mt)
    if block in MAXTEXT_FIXED_EPS_DECODERS:
        eps = MAXTEXT_FIXED_EPS_DECODERS[block]
        out["norm epsilon"] = Setting(eps, f"{eps:g}", f"fixed in MaxText's {block} layers")
    elif _num(mt.get("normalization_layer_epsilon")) is not None:
        eps = _num(mt["normalization_layer_epsilon"])
        out["norm epsilon"] = Setting(eps, f"{eps:g}", "normalization_layer_epsilon")
    out["final logit soft-cap"] = _cap(mt.get("final_logits_soft_cap"))
    out["attention logit soft-cap"] = _cap(mt.get("attn_logits_soft_cap"))
    q = _maxtext_query_scalar(mt)
    if q is not None:
        out["query scale"] = q
    window = _num(mt.get("sliding_window_size")) or 0.0
    out["sliding window"] = Setting(window, _g(window) if window else "none", "sliding_window_size")
    act = _maxtext_activation(mt)
    if act is not None:
        what = _MAXTEXT_ACTIVATIONS.get(act, act)
        out["mlp activation"] = Setting(what, what, f"mlp_activations {act}"
                                        + (" (jax.nn.gelu approximates by default)" if act == "gelu" else ""))
    if "logits_via_embedding" in mt:
        tied = bool(mt["logits_via_embedding"])
        out["tied embeddings"] = Setting(tied, "tied" if tied else "untied", "logits_via_embedding")
    return out


def _maxtext_activation(mt: dict) -> str | None:
    if decoder_block(mt) in _CUSTOM_MLP_DECODERS:
        return None
    acts = mt.get("mlp_activations")
    if isinstance(acts, str):
        acts = [a.strip(" '\"") for a in acts.strip("[]").split(",")]
    if not acts:
        acts = ["silu", "linear"]  # MaxText's base.yml
    return str(acts[0])


def reconcile_activation(tiny_hf: dict, real_maxtext: dict) -> list[str]:
    """Make a tiny HF config's MLP activation the one MaxText computes (MaxText's paired gemma3-4b HF config says
    "gelu", the exact GELU in transformers, while MaxText's jax.nn.gelu is the tanh approximation, as real Gemma 3
    checkpoints say with "gelu_pytorch_tanh"). Changes tiny_hf in place; returns notes."""
    found, mt_name = _hf_activation(tiny_hf), _maxtext_activation(real_maxtext)
    if found is None or mt_name is None:
        return []
    key, name = found
    want = _MAXTEXT_ACTIVATIONS.get(mt_name)
    if want is None or _HF_ACTIVATIONS.get(name, name) == want or want not in _HF_NAME_FOR:
        return []
    tiny_hf[key] = _HF_NAME_FOR[want]
    return [f"{key} {name} -> {tiny_hf[key]} (MaxText's {mt_name} computes the {want})"]
