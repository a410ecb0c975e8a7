"""The common terms of the config diff (verify.config_diff): a Setting (one side's value, its text and where it
comes from), number formatting and comparison, RoPE descriptions, the layer kinds, and MaxText's and transformers'
fixed constants the two sides' readings need."""

from __future__ import annotations

from dataclasses import dataclass

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


KINDS = ("global", "local", "compressed")


def _fraction_text(partial: float, style: str) -> str:
    if partial >= 1:
        return "1 (every channel rotated)"
    return f"{partial:g}" + (" (proportional frequencies)" if style == "proportional" else "")


def _cap(v) -> Setting:
    v = _num(v)
    return Setting(v or 0.0, _g(v) if v else "off")


def _where(kind: str, kinds: list[str]) -> str:
    if len(kinds) == 1:
        return "all layers"
    return f"{kind} layers"


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
