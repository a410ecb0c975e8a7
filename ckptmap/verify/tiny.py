"""Tiny configs derived from a model's real ones: an HF config dict and MaxText overrides that build small,
fast models with the structure that matters for mapping.

What is kept (issue 5): kv_heads != heads when the real model groups queries (same group size, capped at 4);
heads*head_dim vs hidden at the real ratio; at least 2 layers and at least one full cycle of inhomogeneous layers
(the period of `layer_types`, dense-then-MoE layers); >= 4 experts; a vocab padded on the MaxText side when the
real MaxText vocab is padded; a sliding window shorter than the verify sequence, so local and global layers differ;
a rotary fraction and multimodal RoPE sections (`partial_rotary_factor`, `mrope_section`) that fit the tiny head_dim
(the real fraction where it leaves a whole number of frequencies, at least one per section; the sections rescaled).

The HF config is derived first (from the real HF config's keys); each MaxText size key then takes the tiny value
of the HF key that held the same real value (or the real MaxText/HF ratio applied to it), so no per-model answer
is written down here: only which config keys name which quantity.

Modules: verify.tiny_keys (which keys name which quantity), verify.tiny_hf (the HF side shrunk), verify.tiny_translate
(MaxText's overrides and RoPE on both sides), verify.tiny_towers (a multimodal model's towers, both sides),
verify.maxtext_catalog (MaxText's ymls; HF configs derived from them).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from ckptmap.verify.config_maxtext import reconcile_activation
from ckptmap.verify.maxtext_catalog import (hf_config_from_maxtext, maxtext_catalog, maxtext_rope,
                                            real_or_derived_configs)
from ckptmap.verify.tiny_hf import tiny_hf_config, unspell_per_layer_config
from ckptmap.verify.tiny_keys import MAXTEXT_LLAMA31_ROPE, MAXTEXT_TO_HF_KEYS, MAXTEXT_TO_HF_LISTS, TinyConfigError
from ckptmap.verify.tiny_towers import text_part, tiny_composite
from ckptmap.verify.tiny_translate import (adopt_maxtext_geometry, reconcile_llama31_rope, reconcile_rope,
                                           reconcile_tied, scale_sections, tiny_maxtext_overrides, tiny_rotary)

# derive_tiny and check_tiny live here; the rest is re-exported from the modules that hold it
__all__ = ["TinyPair", "derive_tiny", "check_tiny", "TinyConfigError", "tiny_hf_config", "tiny_maxtext_overrides",
           "tiny_rotary", "scale_sections", "reconcile_rope", "reconcile_llama31_rope", "unspell_per_layer_config",
           "hf_config_from_maxtext", "maxtext_catalog", "maxtext_rope", "real_or_derived_configs",
           "MAXTEXT_TO_HF_KEYS", "MAXTEXT_TO_HF_LISTS", "MAXTEXT_LLAMA31_ROPE"]


@dataclass
class TinyPair:
    """A tiny HF config (a dict with `model_type`; a composite with its towers where MaxText builds them) and the
    MaxText overrides ("key=value") for one model."""

    maxtext_model: str
    hf_config: dict
    maxtext_overrides: list[str]
    notes: list[str] = field(default_factory=list)

    def overrides_dict(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.maxtext_overrides)

    @property
    def text_config(self) -> dict:
        """The text model's config (`hf_config` itself unless it is a composite with towers)."""
        return text_part(self.hf_config)


def derive_tiny(maxtext_model: str, real: dict | None = None) -> TinyPair:
    """MaxText model name -> TinyPair, from the real configs (read through the MaxText venv unless given; a model
    MaxText pairs with no HF config gets one derived from its yml, see hf_config_from_maxtext)."""
    if real is None:
        real = real_or_derived_configs(maxtext_model)
    maxtext_model = real.get("model_name") or maxtext_model  # a family name (`qwen3.5`) -> MaxText's name
    real = dict(real, hf=copy.deepcopy(real["hf"]))
    spelled = unspell_per_layer_config(text_part(real["hf"]))
    spelled += adopt_maxtext_geometry(text_part(real["hf"]), real["maxtext"])
    hf_cfg, notes = tiny_hf_config(real["hf"], real["maxtext"])
    notes = list(real.get("derived_notes", [])) + spelled + notes
    notes += reconcile_rope(hf_cfg, real["maxtext"])
    notes += reconcile_activation(hf_cfg, real["maxtext"])
    notes += reconcile_llama31_rope(hf_cfg, real["maxtext"], maxtext_model)
    notes += reconcile_tied(hf_cfg, real["maxtext"])
    overrides = tiny_maxtext_overrides(real["maxtext"], real["hf"], hf_cfg)
    rotary, rotary_notes = tiny_rotary(hf_cfg, text_part(real["hf"]), real["maxtext"])
    overrides += [f"{k}={v}" for k, v in rotary.items()]
    notes += rotary_notes
    hf_cfg, towers, tower_notes = tiny_composite(real["hf"], hf_cfg, real["maxtext"])
    return TinyPair(maxtext_model=maxtext_model, hf_config=hf_cfg, maxtext_overrides=overrides + towers,
                    notes=notes + tower_notes)


def check_tiny(pair: TinyPair) -> list[str]:
    """What a tiny pair must keep, as a list of violations (empty when fine)."""
    c = pair.text_config
    bad = []
    if c["num_hidden_layers"] < 2:
        bad.append("fewer than 2 layers")
    for key in ("num_local_experts", "n_routed_experts", "num_experts"):
        if c.get(key) and c[key] < 4:
            bad.append(f"{key} < 4")
    if c.get("sliding_window") and c["sliding_window"] >= 64:
        bad.append("sliding window not shorter than the verify sequence")
    if not math.isfinite(c["hidden_size"]):
        bad.append("hidden size")
    return bad
