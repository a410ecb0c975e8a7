"""What the HF config and the MaxText config say about the function the two models compute, and where they disagree.

A mapping moves weights; it cannot make two models compute the same function when their configs disagree on
something outside the weights: the RoPE type, base (theta) and scaling, the rotary fraction, norm epsilon, soft-caps,
the query scale, sliding windows, the MLP activation, tied embeddings. When verify fails (or passes while such a
setting differs, e.g. one only long contexts reach), the report names each disagreement:

    rope scaling (all layers): HF default, MaxText llama3 (factor 8, low 1, high 4, original 8192) -- applied by
    model name llama3.1

Pure functions over plain dicts: `hf_settings(hf_config_dict)`, `maxtext_settings(maxtext_config_dict)` (the values
`MaxTextSession.function_config()` reads off MaxText's pyconfig) and `diff_configs(hf, maxtext)`. How MaxText
decides follows its own code (MaxText 0.2.5, `layers/attentions.py` `init_rotary_embedding` and the decoder
layers): llama3.1 RoPE scaling by model name (`model_name` starting with `llama3.1`, or rope_type `llama3.1`; the
factors are fixed in `LLaMARotaryEmbedding`: 8, 1, 4, 8192; `rope_use_scale` turns it off), YaRN by `rope_type`,
`local_rope_max_timescale` for sliding layers of plain RoPE only, gemma3's linear factor on global layers only,
gemma4's per-kind timescales and proportions, gemma's hard-coded norm epsilon, and where the query scale lives
(folded into the query kernel by MaxText's own conversion, or applied at run time by a few decoders).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# MaxText's LLaMARotaryEmbedding hard-codes the llama3.1 scaling (embeddings.py `_apply_scaling_factor`).
MAXTEXT_LLAMA3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}
# HF defaults of YaRN parameters a config may leave out (transformers' `_compute_yarn_parameters`).
HF_YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": True}
# Decoders whose RMSNorms take MaxText's default epsilon, not `normalization_layer_epsilon` (their layers build
# RMSNorm without passing one).
MAXTEXT_FIXED_EPS_DECODERS = {"gemma": 1e-6, "gemma2": 1e-6, "gemma3": 1e-6, "gemma4": 1e-6, "gemma4_small": 1e-6}
# Decoders that scale the query at run time (MaxText's conversion then leaves the kernel unscaled); every other
# decoder relies on its conversion folding 1/sqrt(head_dim) into the query kernel.
MAXTEXT_RUNTIME_QUERY_SCALE = ("gemma3", "olmo3", "qwen2", "gpt_oss", "llama4")

_RELATIVE = 1e-6  # numbers equal up to this relative difference are the same setting


@dataclass(frozen=True)
class Setting:
    """One setting's value on one side: `value` (compared), `text` (shown), `why` (where it comes from)."""

    value: object
    text: str
    why: str = ""


@dataclass(frozen=True)
class Disagreement:
    """A setting the two configs give different values; `matters` is False where it cannot change these runs'
    outputs (a sliding window longer than every sequence verify runs)."""

    setting: str
    hf: str
    maxtext: str
    why: str = ""
    matters: bool = True

    def describe(self) -> str:
        text = f"{self.setting}: HF {self.hf}, MaxText {self.maxtext}"
        if self.why:
            text += f" -- {self.why}"
        if not self.matters:
            text += " (no effect at the lengths verify runs)"
        return text

    def to_json(self) -> dict:
        return asdict(self)


def _num(x):
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x)
    try:
        return float(str(x))
    except ValueError:
        return None


def _g(x) -> str:
    x = _num(x)
    if x is None:
        return "-"
    return f"{int(x)}" if x == int(x) and abs(x) < 1e7 else f"{x:g}"


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= _RELATIVE * max(abs(a), abs(b))
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _text_config(cfg: dict) -> dict:
    text = cfg.get("text_config")
    return text if isinstance(text, dict) and (text.get("hidden_size") or text.get("num_hidden_layers")) else cfg


# ---- RoPE descriptions -------------------------------------------------------------------------------------------
def _rope_text(kind: str, params: dict) -> str:
    if kind in ("default", "none"):
        return kind
    inner = ", ".join(f"{k.replace('_freq_factor', '').replace('original_max_position_embeddings', 'original')} "
                      f"{_g(v) if not isinstance(v, bool) else str(v).lower()}"
                      for k, v in params.items() if v is not None)
    return f"{kind} ({inner})" if inner else kind


def _rope_setting(kind: str, params: dict, why: str = "") -> Setting:
    value = (kind, tuple(sorted((k, _num(v) if not isinstance(v, bool) else v) for k, v in params.items())))
    return Setting(value, _rope_text(kind, params), why)


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


KINDS = ("global", "local", "compressed")


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


def _fraction_text(partial: float, style: str) -> str:
    if partial >= 1:
        return "1 (every channel rotated)"
    return f"{partial:g}" + (" (proportional frequencies)" if style == "proportional" else "")


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


def _cap(v) -> Setting:
    v = _num(v)
    return Setting(v or 0.0, _g(v) if v else "off")


def _where(kind: str, kinds: list[str]) -> str:
    if len(kinds) == 1:
        return "all layers"
    return f"{kind} layers"


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


# ---- MLP activation ------------------------------------------------------------------------------------------------
# HF ACT2FN names -> what they compute; "gelu" is the exact (erf) GELU there.
_HF_ACTIVATIONS = {"gelu": "gelu (exact erf)", "gelu_pytorch_tanh": "gelu (tanh approximation)",
                   "gelu_new": "gelu (tanh approximation)", "gelu_fast": "gelu (tanh approximation)",
                   "gelu_python_tanh": "gelu (tanh approximation)", "silu": "silu", "swish": "silu", "relu": "relu",
                   "sigmoid": "sigmoid"}
# MaxText mlp_activations names (jax.nn functions) -> what they compute; jax.nn.gelu approximates by default.
_MAXTEXT_ACTIVATIONS = {"gelu": "gelu (tanh approximation)", "silu": "silu", "swish": "silu", "relu": "relu",
                        "sigmoid": "sigmoid"}
# The HF name that computes each MaxText activation (for tiny pairs: reconcile_activation).
_HF_NAME_FOR = {"gelu (tanh approximation)": "gelu_pytorch_tanh", "silu": "silu", "relu": "relu"}
# Decoders whose MLP does not use mlp_activations as a plain gated activation (gpt-oss's clamped SwiGLU).
_CUSTOM_MLP_DECODERS = ("gpt_oss",)


def _hf_activation(cfg: dict) -> tuple[str, str] | None:
    for key in ("hidden_activation", "hidden_act"):
        name = cfg.get(key)
        if isinstance(name, str) and name:
            return key, name
    return None


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


# ---- the diff ----------------------------------------------------------------------------------------------------
def diff_configs(hf_config: dict, maxtext_config: dict, *, seq_len: int | None = None) -> list[Disagreement]:
    """Every setting the HF config and the MaxText config values give differently, in a fixed order, then the
    known implementation differences these configs reach (`implementation_hazards`).

    `seq_len`: the longest sequence verify runs (a sliding window at least that long cannot change its outputs)."""
    hf = hf_settings(hf_config)
    mt = maxtext_settings(maxtext_config)
    kinds = _hf_layer_kinds(_text_config(hf_config))
    out: list[Disagreement] = []
    for what in ("rope scaling", "rope theta", "rotary fraction"):
        found = []
        for kind in kinds:
            where = _where(kind, kinds)
            a, b = hf.get(f"{what} ({where})"), mt.get(f"{what} ({kind})")
            if a is not None and b is not None and not _same(a.value, b.value):
                found.append(Disagreement(f"{what} ({where})", a.text, b.text, b.why))
        if len(kinds) > 1 and len(found) == len(kinds) and len({(d.hf, d.maxtext, d.why) for d in found}) == 1:
            found = [Disagreement(f"{what} (all layers)", found[0].hf, found[0].maxtext, found[0].why)]
        out.extend(found)
    for what in ("norm epsilon", "final logit soft-cap", "attention logit soft-cap", "query scale",
                 "sliding window", "mlp activation", "tied embeddings"):
        a, b = hf.get(what), mt.get(what)
        if a is None or b is None or _same(a.value, b.value):
            continue
        matters = True
        if what == "sliding window" and seq_len:
            # a window at least as long as the sequence masks nothing
            matters = min(x for x in (a.value or math.inf, b.value or math.inf)) < seq_len
        why = b.why
        if what in ("query scale", "mlp activation"):
            why = f"HF: {a.why}; MaxText: {b.why}"
        out.append(Disagreement(what, a.text, b.text, why, matters))
    return out + implementation_hazards(_text_config(hf_config), maxtext_config, seq_len=seq_len)


# Below this many indexer heads, DeepSeek-V3.2's indexer scores (a sum of ReLUs over heads) are often exactly 0
# for several keys at random weights (each key with probability 2^-heads).
INDEXER_TIE_HEADS = 8


def implementation_hazards(hf: dict, mt: dict, *, seq_len: int | None = None) -> list[Disagreement]:
    """Settings on which the configs agree but the two implementations differ, where these configs reach it.

    - DeepSeek-V3.2's sparse-attention indexer: HF's torch.topk and MaxText's exact top-k
      (`indexer_mask_exact_topk`: the first k of equal scores) break ties differently; with few indexer heads many
      keys score exactly 0 (ReLU), so at a top-k below the sequence length the two models attend to different
      keys. (The indexer top-k itself is compared too.)"""
    out: list[Disagreement] = []
    hf_topk, mt_topk = _num(hf.get("index_topk")), _num(mt.get("indexer_topk"))
    if hf_topk is None or mt_topk is None or mt.get("use_indexer") is False:
        return out
    if hf_topk != mt_topk:
        out.append(Disagreement("indexer top-k", _g(hf_topk), _g(mt_topk), "indexer_topk"))
    heads = _num(hf.get("index_n_heads")) or _num(mt.get("indexer_n_heads"))
    shortest = min(hf_topk, mt_topk)
    if heads is not None and heads < INDEXER_TIE_HEADS and (seq_len is None or shortest < seq_len):
        out.append(Disagreement(
            "indexer ties", "torch.topk (ties in any order)",
            "the first k of equal scores" if mt.get("indexer_mask_exact_topk", True) else "every tied score",
            f"{_g(heads)} indexer heads: keys whose every head's ReLU is 0 score exactly 0, and the two pick "
            f"different ones among them at top-{_g(shortest)}"))
    return out


def diff_runners(src_runner, tgt_runner, *, seq_len: int | None = None) -> list[Disagreement]:
    """diff_configs for a pair of runners where one is an HF runner (`.config`) and the other a MaxText runner
    (`.function_config()`); [] for any other pair (or when a side cannot say)."""
    hf = mt = None
    for runner in (src_runner, tgt_runner):
        if getattr(runner, "framework", "") == "hf" and getattr(runner, "config", None) is not None:
            hf = runner
        elif getattr(runner, "framework", "") == "maxtext" and callable(getattr(runner, "function_config", None)):
            mt = runner
    if hf is None or mt is None:
        return []
    try:
        mt_values = mt.function_config()
    except Exception:  # noqa: BLE001 - a diagnosis must not break verify
        return []
    if not mt_values:
        return []
    return diff_configs(hf_runner_config_dict(hf), mt_values, seq_len=seq_len)


def hf_runner_config_dict(runner) -> dict:
    """The HF config the runner built, as a dict (its text part for a composite)."""
    config = getattr(runner, "text_config", None) or runner.config
    try:
        return config.to_dict()
    except Exception:  # noqa: BLE001
        return dict(getattr(config, "__dict__", {}))
