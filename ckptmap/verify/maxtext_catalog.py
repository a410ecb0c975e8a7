"""MaxText's model catalog and full-size HF configs derived from it.

`maxtext_catalog()`: base.yml, every model yml and the names MaxText pairs with an HF config, read in the MaxText
venv. `hf_config_from_maxtext(name)`: for a MaxText model that ships no paired HF config (mistral-7b, llama2/llama3,
llama4, gemma-7b, kimi-k2, ...), a full-size HF config dict with the values MaxText runs with.

    python -m ckptmap.verify.maxtext_catalog catalog   # in the MaxText venv: the catalog as one JSON line
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import sys

from ckptmap.verify.tiny_hf import _index_lists
from ckptmap.verify.tiny_keys import (MAXTEXT_LLAMA31_ROPE, MAXTEXT_TO_HF_KEYS, MAXTEXT_TO_HF_LISTS,
                                      MAXTEXT_TO_HF_SETTINGS, MAXTEXT_TO_HF_YARN, MAXTEXT_WINDOWS, TinyConfigError,
                                      _num)
from ckptmap.verify.real_configs import ConfigError, _json_safe, last_line_in_maxtext_venv, real_configs

# MaxText models that ship without a paired HF config (mistral-7b, llama2/llama3, llama4, gemma-7b, kimi-k2, ...):
# the HF config is derived from MaxText's own yml. The HF model type comes from MaxText's `decoder_block`: the HF
# config of the sibling MaxText model with the same decoder block whose yml agrees best (llama2-7b -> llama3.1-8b's
# LlamaConfig, kimi-k2 -> deepseek3's DeepseekV3Config), else the transformers model type spelled like the block
# (`mistral`, `gemma`, `llama4`). Its values are then those MaxText runs with: the yml over base.yml, written
# through the key tables below (which keys name which quantity), and the RoPE MaxText's attention picks.

# MaxText keys -> HF keys, for quantities that are not sizes (read from the yml over base.yml).


def maxtext_catalog() -> dict:
    """{"base": base.yml, "models": {name: model yml}, "hf_models": [names with a paired HF config]} of the
    installed MaxText (in-process when MaxText imports, else through the MaxText venv; cached per process)."""
    return json.loads(_catalog_json())


@functools.lru_cache(maxsize=1)
def _catalog_json() -> str:
    try:
        import maxtext  # noqa: F401
        return json.dumps(_read_catalog())
    except ImportError:
        pass

    return last_line_in_maxtext_venv(["ckptmap.verify.maxtext_catalog", "catalog"], "reading MaxText's model configs")


def _read_catalog() -> dict:
    import yaml
    from maxtext.checkpoint_conversion.utils.hf_model_configs import HF_MODEL_CONFIGS

    root = importlib.resources.files("maxtext") / "configs"
    models = {}
    for f in sorted((root / "models").iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yml"):
            models[f.name[:-4]] = _json_safe(yaml.safe_load(f.read_text()) or {})
    return {"base": _json_safe(yaml.safe_load((root / "base.yml").read_text()) or {}), "models": models,
            "hf_models": sorted(k for k in HF_MODEL_CONFIGS if k in models)}


def _yaml_value(v):
    """A yml scalar as MaxText reads it: YAML 1.1 leaves `1e-05` (no dot) a string; MaxText's config makes it a
    number."""
    if isinstance(v, str):
        try:
            return int(v) if v.strip().lstrip("-").isdigit() else float(v)
        except ValueError:
            return v
    return v


def _agreement(a: dict, b: dict) -> int:
    """How well two model ymls agree: keys with equal values, less keys only one of them sets."""
    return sum(1 for k in a if k in b and a[k] == b[k]) - len(set(a) ^ set(b))


def hf_template(model_name: str, catalog: dict) -> tuple[dict, str]:
    """(an HF config dict to start from, where it came from) for a MaxText model without a paired HF config."""
    yml = catalog["models"][model_name]
    block = yml.get("decoder_block")
    siblings = [m for m in catalog["hf_models"] if catalog["models"][m].get("decoder_block") == block]
    if siblings:
        best = max(siblings, key=lambda m: (_agreement(yml, catalog["models"][m]), m))

        hf = real_configs(best)["hf"]
        return hf, f"HF config of {best} (same decoder block {block!r})"
    from transformers import CONFIG_MAPPING

    if not isinstance(block, str) or block not in CONFIG_MAPPING:
        raise TinyConfigError(f"{model_name}: MaxText pairs no HF config with it and its decoder block {block!r} is "
                              "no transformers model type", key=model_name)
    return CONFIG_MAPPING[block]().to_dict(), f"transformers' {block} config (MaxText's decoder block)"


def maxtext_rope(model_name: str, merged: dict, template_rope: dict | None) -> dict:
    """The HF rope parameters of the RoPE MaxText's attention uses for this model (`attentions.py`: llama3.1
    scaling by model name or rope_type, YaRN, else plain), at its theta."""
    theta = float(merged.get("rope_max_timescale", 10000))
    kind = str(merged.get("rope_type", "default")).lower()
    if model_name.startswith("llama3.1") or kind.startswith("llama3.1"):
        rope = dict(MAXTEXT_LLAMA31_ROPE) if merged.get("rope_use_scale", True) else {"rope_type": "default"}
    elif kind.startswith("yarn"):
        rope = {"rope_type": "yarn"}
        if template_rope and template_rope.get("rope_type", template_rope.get("type")) == "yarn":
            rope = {k: v for k, v in template_rope.items() if k != "type"}
        for mt_key, hf_keys in MAXTEXT_TO_HF_YARN.items():
            if _num(merged, mt_key) is not None:
                for k in hf_keys:
                    rope[k] = merged[mt_key]
    else:
        rope = {"rope_type": "default"}
    if template_rope and _num(template_rope, "partial_rotary_factor"):
        rope["partial_rotary_factor"] = template_rope["partial_rotary_factor"]
    rope["rope_theta"] = theta
    return rope


def hf_config_from_maxtext(model_name: str, catalog: dict | None = None) -> tuple[dict, list[str]]:
    """(full-size HF config dict, notes) for a MaxText model that ships no paired HF config: see above."""
    catalog = catalog or maxtext_catalog()
    if model_name not in catalog["models"]:
        raise TinyConfigError(f"MaxText has no model yml {model_name!r}", key=model_name)
    yml = {k: _yaml_value(v) for k, v in catalog["models"][model_name].items()}
    merged = {**{k: _yaml_value(v) for k, v in catalog["base"].items()}, **yml}
    template, origin = hf_template(model_name, catalog)
    notes = [f"HF config derived from MaxText's yml, starting from the {origin}"]
    if isinstance(template.get("text_config"), dict) and "model_type" in template["text_config"]:
        template = template["text_config"]
    cfg = copy.deepcopy(template)
    for k in ("architectures", "auto_map", "_name_or_path", "transformers_version", "id2label", "label2id",
              "dtype", "torch_dtype", "quantization_config"):
        cfg.pop(k, None)
    n_template = _num(cfg, "num_hidden_layers")
    claimed: set[str] = set()
    for table, source in ((MAXTEXT_TO_HF_KEYS, yml), (MAXTEXT_TO_HF_SETTINGS, merged)):
        for mt_key, hf_keys in table.items():
            v = source.get(mt_key)
            if v is None or isinstance(v, (list, dict)):
                continue
            hf_key = next((k for k in hf_keys if k in cfg and k not in claimed), None)
            if hf_key is None:
                continue
            if table is MAXTEXT_TO_HF_KEYS and (not isinstance(v, (int, float)) or v <= 0):
                continue
            claimed.add(hf_key)
            if cfg.get(hf_key) != v:
                cfg[hf_key] = v
    for k, v in yml.items():
        # a yml key spelled as the HF config spells it (use_qk_norm, norm_topk_prob, ...) names the same quantity
        if k in cfg and k not in claimed and k != "model_type" and isinstance(v, (bool, int, float)) \
                and isinstance(cfg[k], (bool, int, float)) and isinstance(v, bool) == isinstance(cfg[k], bool):
            cfg[k] = v
    for mt_key, hf_key in MAXTEXT_WINDOWS.items():
        if hf_key in cfg and not (_num(merged, mt_key) or 0) > 0:
            cfg[hf_key] = None
    kept_lists = set()
    for mt_key, hf_keys in MAXTEXT_TO_HF_LISTS.items():
        if isinstance(yml.get(mt_key), list):
            for k in hf_keys:
                if k in cfg:
                    cfg[k] = list(yml[mt_key])
                    kept_lists.add(k)
    rope_key = "rope_parameters" if "rope_parameters" in cfg or "rope_scaling" not in cfg else "rope_scaling"
    template_rope = cfg.get(rope_key) if isinstance(cfg.get(rope_key), dict) else None
    if template_rope and any(isinstance(v, dict) for v in template_rope.values()):
        notes.append("per-layer-type RoPE kept from the template")
    else:
        cfg[rope_key] = maxtext_rope(model_name, merged, template_rope)
        cfg.pop("rope_theta", None)
        notes.append(f"RoPE {cfg[rope_key]['rope_type']} at theta {cfg[rope_key]['rope_theta']:g} (MaxText's)")
    # per-layer lists (layer_types, no_rope_layers, moe_layers) are the template's: the config class recomputes
    # them from the counts and intervals just set
    if n_template:
        for k, v in list(cfg.items()):
            if k not in kept_lists and isinstance(v, list) \
                    and (len(v) == n_template or k in _index_lists(template, int(n_template))):
                cfg.pop(k)
    from transformers import AutoConfig

    model_type = cfg.pop("model_type")
    built = AutoConfig.for_model(model_type, **cfg).to_dict()
    for k in ("architectures", "transformers_version", "id2label", "label2id", "_name_or_path", "dtype"):
        built.pop(k, None)
    respelled = {k: v for k, v in cfg.items() if k not in built}
    if respelled:
        # the class re-expressed keys set here in its own spelling (DeepSeek-V4's compress_ratios / num_hash_layers
        # -> layer_types / mlp_layer_types, a flat rope dict -> per-layer-type ones): keep the spelling the paired
        # configs use, as set here
        built = {**cfg, "model_type": model_type}
    return built, notes


def real_or_derived_configs(model_name: str) -> dict:
    """`real_configs(model_name)`, or for a MaxText model that ships only a yml, the same dict with the HF config
    derived from it (hf_config_from_maxtext; "derived_notes" says how)."""
    try:
        return real_configs(model_name)
    except ConfigError:
        catalog = maxtext_catalog()
        if model_name not in catalog["models"]:
            raise
    hf, notes = hf_config_from_maxtext(model_name, catalog)
    yml = {k: _yaml_value(v) for k, v in catalog["models"][model_name].items()}
    for mt_key, hf_keys in MAXTEXT_TO_HF_KEYS.items():
        # a size the yml leaves at base.yml's value (llama4's head_dim) is still a size the tiny model changes
        base = _num({mt_key: _yaml_value(catalog["base"].get(mt_key))}, mt_key)
        if mt_key not in yml and base and base > 0 and any(hf.get(k) == base for k in hf_keys):
            yml[mt_key] = base
    return {"model_name": model_name, "maxtext": yml, "hf": hf, "derived_notes": notes}


if __name__ == "__main__":  # in the MaxText venv: `python -m ckptmap.verify.maxtext_catalog catalog`
    if sys.argv[1:] == ["catalog"]:
        print(json.dumps(_read_catalog()))
        sys.exit(0)
    print("usage: python -m ckptmap.verify.maxtext_catalog catalog", file=sys.stderr)
    sys.exit(2)
