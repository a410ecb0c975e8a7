"""An HF config made to compute what MaxText computes, where the two disagree on a setting outside the weights.

The benchmark's verify column runs each fixture's pair; a hand-made fixture whose HF config says something MaxText's
model does not do (gemma2's query_pre_attn_scalar 256 at head_dim 16, a softcap MaxText leaves off) fails verify
whatever the mapping. `reconcile_to_maxtext(hf_config, maxtext_values)` returns a copy of the HF config with MaxText's
value for each setting config_diff names and the HF config has a key for (query scale, norm epsilon, soft-caps,
sliding window, RoPE theta per attention kind, MLP activation), and a note per change; the settings it cannot set
(RoPE scaling, rotary fraction, tied embeddings: structure or weights) are left and named. The shapes do not change,
so a mapping solved on the fixture's trees applies as it is.
"""

from __future__ import annotations

import copy

from ckptmap.verify.config_diff import diff_configs
from ckptmap.verify.config_hf import _hf_rope_dicts, _kind_of_layer_type, _text_config
from ckptmap.verify.config_maxtext import maxtext_settings
from ckptmap.verify.config_settings import _HF_NAME_FOR

NORM_EPS_KEYS = ("rms_norm_eps", "layer_norm_eps", "norm_eps", "layer_norm_epsilon", "norm_epsilon")


def _set_rope_theta(cfg: dict, kind: str | None, theta: float) -> bool:
    """Set the RoPE base of the layers of `kind` ("global"/"local"; None: all) in place; False where the config
    keeps no theta this function can reach."""
    rp = cfg.get("rope_parameters")
    done = False
    if isinstance(rp, dict) and rp and all(isinstance(v, dict) for v in rp.values()):
        for label, params in rp.items():
            if kind is None or _kind_of_layer_type(label) == kind or str(label).lower() == "main":
                params["rope_theta"] = theta
                done = True
        return done
    if isinstance(rp, dict):
        rp["rope_theta"] = theta
        return True
    if "rope_theta" in cfg:
        cfg["rope_theta"] = theta
        return True
    return False


def _apply(cfg: dict, setting: str, value) -> str | None:
    """Set one setting on the text config `cfg` in place; the HF key set, or None where there is none to set."""
    if setting == "query scale" and "query_pre_attn_scalar" in cfg:
        cfg["query_pre_attn_scalar"] = int(value) if float(value) == int(value) else value
        return "query_pre_attn_scalar"
    if setting == "norm epsilon":
        key = next((k for k in NORM_EPS_KEYS if k in cfg), None)
        if key:
            cfg[key] = value
        return key
    if setting in ("final logit soft-cap", "attention logit soft-cap"):
        key = "final_logit_softcapping" if setting.startswith("final") else "attn_logit_softcapping"
        if key in cfg:
            cfg[key] = float(value) if value else None
            return key
        return None
    if setting == "sliding window" and "sliding_window" in cfg:
        cfg["sliding_window"] = int(value) if value else None
        return "sliding_window"
    if setting == "mlp activation" and value in _HF_NAME_FOR:
        key = next((k for k in ("hidden_activation", "hidden_act") if isinstance(cfg.get(k), str)), None)
        if key:
            cfg[key] = _HF_NAME_FOR[value]
        return key
    if setting.startswith("rope theta (") and value is not None:
        where = setting[len("rope theta ("):-1]
        kind = None if where == "all layers" else where.split()[0]
        if _hf_rope_dicts(cfg) and _set_rope_theta(cfg, kind, float(value)):
            return f"rope_theta ({where})"
    return None


def reconcile_to_maxtext(hf_config: dict, maxtext_values: dict, *, seq_len: int | None = None
                         ) -> tuple[dict, list[str], list[str]]:
    """(a copy of `hf_config` with MaxText's values where config_diff finds a disagreement that matters and the HF
    config has a key for it, notes on what was set, the disagreements left as they are). `maxtext_values`: what
    MaxTextSession.function_config() returns."""
    out = copy.deepcopy(hf_config)
    text = _text_config(out)
    mt = maxtext_settings(maxtext_values)
    notes: list[str] = []
    left: list[str] = []
    for d in diff_configs(hf_config, maxtext_values, seq_len=seq_len):
        if not d.matters:
            continue
        name = d.setting
        source = mt.get(name) or mt.get(name.replace("(all layers)", "(global)").replace(" layers)", ")"))
        key = _apply(text, name, source.value) if source is not None else None
        if key:
            notes.append(f"{key}: {d.hf} -> {d.maxtext} (MaxText's {name})")
        else:
            left.append(d.describe())
    return out, notes, left
