"""What an HF config dict says about the function its model computes (verify.config_diff): RoPE per layer kind,
norm epsilon, soft-caps, query scale, sliding window, MLP activation, tied embeddings, as Settings."""

from __future__ import annotations

from ckptmap.verify.config_settings import (_HF_ACTIVATIONS, HF_YARN_DEFAULTS, KINDS, Setting, _cap, _fraction_text,
                                            _g, _num, _rope_setting, _where)

def _text_config(cfg: dict) -> dict:
    text = cfg.get("text_config")
    return text if isinstance(text, dict) and (text.get("hidden_size") or text.get("num_hidden_layers")) else cfg


def _hf_rope_dicts(cfg: dict) -> dict[str, dict]:
    """{"global": params, "local": params} (per attention kind the config has) from `rope_parameters`
    (transformers 5; flat or per layer type) or `rope_scaling` + `rope_theta` (older configs)."""
    rp = cfg.get("rope_parameters")
    out: dict[str, dict] = {}
    if isinstance(rp, dict) and rp and all(isinstance(v, dict) for v in rp.values()):
        for label, params in rp.items():
            if str(label).lower() == "main":  # DeepSeek-V4: keyed by rope labels, `main` for uncompressed layers
                out.setdefault("global", dict(params))
                out.setdefault("local", dict(params))
            else:
                out[_kind_of_layer_type(label)] = dict(params)
        return out
    if isinstance(rp, dict) and rp:
        params = dict(rp)
    else:
        params = dict(cfg.get("rope_scaling") or {})
        if "rope_theta" not in params and _num(cfg.get("rope_theta")) is not None:
            params["rope_theta"] = cfg["rope_theta"]
    out["global"] = params
    local = dict(params)
    if _num(cfg.get("rope_local_base_freq")) is not None:  # older gemma3 configs
        local = {"rope_type": "default", "rope_theta": cfg["rope_local_base_freq"]}
    out["local"] = local
    return out


def _kind_of_layer_type(layer_type: str) -> str:
    """An HF layer type (or RoPE label) -> "local" (sliding, chunked), "compressed" (DeepSeek-V4's CSA / HCA) or
    "global" (full attention)."""
    t = str(layer_type).lower()
    if "compress" in t:
        return "compressed"
    return "local" if ("sliding" in t or "local" in t or "chunk" in t) else "global"


def _hf_layer_kinds(cfg: dict) -> list[str]:
    """The attention kinds the HF model has: "global" (full attention), "local" (sliding / chunked)."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        kinds = {_kind_of_layer_type(t) for t in types if "linear" not in str(t) and "mamba" not in str(t)}
        return [k for k in KINDS if k in kinds] or ["global"]
    return ["global"]


def _hf_partial(cfg: dict, params: dict) -> float:
    for source in (params, cfg):
        v = _num(source.get("partial_rotary_factor"))
        if v is not None:
            return v
    return 1.0


def _hf_rope(cfg: dict, params: dict) -> tuple[Setting, Setting | None, Setting]:
    """(scaling, theta, rotary fraction) of one attention kind of an HF config."""
    kind = str(params.get("rope_type") or params.get("type") or "default").lower()
    theta = _num(params.get("rope_theta"))
    partial = _hf_partial(cfg, params)
    style = "proportional" if kind == "proportional" else "truncated"
    if kind == "proportional":  # Gemma 4: the full head_dim in the frequencies' denominator, no scaling
        kind = "default"
    extra: dict = {}
    if kind == "linear" or kind == "dynamic":
        extra = {"factor": params.get("factor")}
    elif kind == "llama3":
        extra = {k: params.get(k) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                             "original_max_position_embeddings")}
    elif kind == "yarn":
        extra = {"factor": params.get("factor"),
                 "original_max_position_embeddings": params.get("original_max_position_embeddings"
                                                                ) or cfg.get("original_max_position_embeddings"),
                 **{k: params.get(k, d) for k, d in HF_YARN_DEFAULTS.items()}}
    elif kind not in ("default",):
        extra = {k: v for k, v in params.items() if k not in ("rope_type", "type", "rope_theta",
                                                               "partial_rotary_factor") and not isinstance(v, list)}
    scaling = _rope_setting(kind, extra)
    theta_s = Setting(theta, _g(theta)) if theta is not None else None
    fraction = Setting((partial, style if partial < 1 else ""), _fraction_text(partial, style))
    return scaling, theta_s, fraction


def hf_settings(hf_config: dict) -> dict[str, Setting]:
    """Setting name -> Setting for an HF config dict (a composite's text part)."""
    cfg = _text_config(hf_config)
    out: dict[str, Setting] = {}
    kinds = _hf_layer_kinds(cfg)
    ropes = _hf_rope_dicts(cfg)
    for kind in kinds:
        params = ropes.get(kind) or ropes.get("global") or ropes.get("local") or {}
        scaling, theta, fraction = _hf_rope(cfg, params)
        where = _where(kind, kinds)
        out[f"rope scaling ({where})"] = scaling
        if theta is not None:
            out[f"rope theta ({where})"] = theta
        out[f"rotary fraction ({where})"] = fraction
    for key in ("rms_norm_eps", "layer_norm_eps", "norm_eps", "layer_norm_epsilon", "norm_epsilon"):
        if _num(cfg.get(key)) is not None:
            out["norm epsilon"] = Setting(_num(cfg[key]), _g(cfg[key]) if cfg[key] >= 1e-3 else f"{cfg[key]:g}",
                                          key)
            break
    out["final logit soft-cap"] = _cap(cfg.get("final_logit_softcapping"))
    out["attention logit soft-cap"] = _cap(cfg.get("attn_logit_softcapping"))
    head_dim = _num(cfg.get("head_dim")) or (_num(cfg.get("hidden_size")) or 0) / (_num(
        cfg.get("num_attention_heads")) or 1)
    qpas = _num(cfg.get("query_pre_attn_scalar"))
    if qpas is not None and not _num(cfg.get("kv_lora_rank")):
        out["query scale"] = Setting(qpas, f"1/sqrt({_g(qpas)})", "query_pre_attn_scalar")
    elif head_dim and not _num(cfg.get("kv_lora_rank")):
        out["query scale"] = Setting(head_dim, f"1/sqrt({_g(head_dim)})", "head_dim")
    if "local" in kinds or (cfg.get("use_sliding_window") and _num(cfg.get("sliding_window"))):
        window = _num(cfg.get("sliding_window"))
        out["sliding window"] = Setting(window or 0.0, _g(window) if window else "none")
    act = _hf_activation(cfg)
    if act is not None:
        out["mlp activation"] = Setting(_HF_ACTIVATIONS.get(act[1], act[1]), _HF_ACTIVATIONS.get(act[1], act[1]),
                                        f"{act[0]} {act[1]}")
    tied = cfg.get("tie_word_embeddings", hf_config.get("tie_word_embeddings"))
    if isinstance(tied, bool):
        out["tied embeddings"] = Setting(tied, "tied" if tied else "untied", "tie_word_embeddings")
    return out


def _hf_activation(cfg: dict) -> tuple[str, str] | None:
    for key in ("hidden_activation", "hidden_act"):
        name = cfg.get(key)
        if isinstance(name, str) and name:
            return key, name
    return None
