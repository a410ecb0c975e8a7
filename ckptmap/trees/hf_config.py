"""HF configs as plain dicts: load (config.json or a fixture wrapping one), override, reconcile, build.

A config built by shrinking a real one (`num_hidden_layers=2`, `vocab_size=256`) keeps fields derived from the
old sizes; `reconcile` brings those back in line so transformers accepts the config, and says what it changed.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from ckptmap.errors import TreeError
from ckptmap.trees.jsonio import load_json_strict

_SPECIAL_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id")


def config_path(target: str) -> str:
    """`dir` -> `dir/config.json`; a file path is returned as is."""
    return os.path.join(target, "config.json") if os.path.isdir(target) else target


def unwrap_config(obj: Any, file: str) -> dict:
    """A config.json object, or the fixtures' `{"hf_config": {...}, "maxtext_config_values": ...}` wrapper."""
    if not isinstance(obj, dict):
        raise TreeError(f"expected a JSON object (an HF config), got a {type(obj).__name__}", file=file)
    if isinstance(obj.get("hf_config"), dict):
        return copy.deepcopy(obj["hf_config"])
    return copy.deepcopy(obj)


def looks_like_config(obj: Any) -> bool:
    """True for an HF config.json object or the fixture wrapper (as opposed to a `name -> shape` tree)."""
    if not isinstance(obj, dict):
        return False
    if isinstance(obj.get("hf_config"), dict):
        return True
    return isinstance(obj.get("model_type"), str) or isinstance(obj.get("architectures"), list)


def load_config_dict(target: str) -> dict:
    path = config_path(target)
    return unwrap_config(load_json_strict(path), path)


def apply_overrides(cfg: dict, overrides: dict[str, Any]) -> dict:
    """Set `key=value` overrides; a dotted key (`text_config.num_hidden_layers`) reaches into a sub-config."""
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _reconcile_one(cfg: dict, where: str, notes: list[str]) -> None:
    n_layers = cfg.get("num_hidden_layers")
    layer_types = cfg.get("layer_types")
    if isinstance(n_layers, int) and isinstance(layer_types, list) and len(layer_types) != n_layers:
        if len(layer_types) > n_layers:
            # the pattern starts at layer 0, so the first n entries are the shrunk model's pattern
            cfg["layer_types"] = layer_types[:n_layers]
            notes.append(f"{where}layer_types cut from {len(layer_types)} to num_hidden_layers={n_layers}")
        else:
            cfg.pop("layer_types")
            notes.append(f"{where}layer_types ({len(layer_types)}) shorter than num_hidden_layers={n_layers}: "
                         "left to the config class to derive")
    if "per_layer_config" in cfg and cfg["per_layer_config"] is None:
        # null means "not given": the config class then derives the per-layer table from layer_types
        cfg.pop("per_layer_config")
        notes.append(f"{where}per_layer_config null: derived by the config class")
    vocab = cfg.get("vocab_size")
    if isinstance(vocab, int):
        for key in _SPECIAL_TOKEN_KEYS:
            tok = cfg.get(key)
            if isinstance(tok, int) and not isinstance(tok, bool) and tok >= vocab:
                cfg[key] = None
                notes.append(f"{where}{key}={tok} outside vocab_size={vocab}: dropped")
    for key, sub in cfg.items():
        if isinstance(sub, dict) and key.endswith("_config"):
            _reconcile_one(sub, f"{where}{key}.", notes)


def reconcile(cfg: dict) -> tuple[dict, list[str]]:
    """Fix fields left stale by shrinking overrides; returns the new dict and one note per change."""
    out = copy.deepcopy(cfg)
    notes: list[str] = []
    _reconcile_one(out, "", notes)
    return out, notes


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    return transformers


def config_class_for(cfg: dict, file: str):
    """The transformers config class for a dict: by `model_type`, else by the class named in `architectures`."""
    transformers = _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = cfg.get("model_type") or ""
    if model_type:
        if model_type not in CONFIG_MAPPING:
            raise TreeError(f"unknown model_type {model_type!r} (transformers {transformers.__version__})",
                            file=file, key="model_type")
        return CONFIG_MAPPING[model_type]
    for arch in cfg.get("architectures") or []:
        cls = getattr(transformers, str(arch), None)
        if cls is not None and getattr(cls, "config_class", None) is not None:
            return cls.config_class
    raise TreeError("config has no model_type and no architectures class known to transformers "
                    f"{transformers.__version__}", file=file, key="model_type")


def build_config(cfg: dict, file: str):
    """A transformers PretrainedConfig from a (reconciled) dict; construction errors become one-line TreeErrors."""
    cls = config_class_for(cfg, file)
    kwargs = {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version")}
    try:
        return cls(**kwargs)
    except Exception as e:  # transformers raises many kinds (ValueError, validation errors, TypeError)
        first_line = " ".join(str(e).split())[:300]
        raise TreeError(f"transformers rejects this {cls.__name__}: {type(e).__name__}: {first_line}",
                        file=file) from None


def config_for_model_type(model_type: str, overrides: dict[str, Any], spec: str):
    """`hf:MODEL_TYPE key=value ...` -> (config object, notes): the class defaults plus the overrides."""
    cfg, notes = reconcile(apply_overrides({"model_type": model_type}, overrides))
    return build_config(cfg, spec), notes


def config_for_file(target: str, overrides: dict[str, Any]):
    """`hf:CONFIG.json key=value ...` -> (config object, notes, path)."""
    path = config_path(target)
    cfg, notes = reconcile(apply_overrides(load_config_dict(target), overrides))
    return build_config(cfg, path), notes, path
