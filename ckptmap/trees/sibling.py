"""Dims for a bare `name -> shape` JSON tree, from the config.json that sits beside it (as in the fixtures).

A fixture family keeps `config.json` (`hf_config`, `maxtext_config_values.scan0/scan1`, `maxtext_overrides`)
next to `hf_params.json` and `maxtext_params.scan{0,1}.json`; an HF checkpoint directory keeps its
config.json next to its exported tree. The tree's naming style picks the side.
"""

from __future__ import annotations

import os

from ckptmap.errors import CkptmapError
from ckptmap.trees.dims import dims_from_hf_config, dims_from_maxtext
from ckptmap.trees.json_tree import sibling_config
from ckptmap.trees.jsonio import load_json_strict


def dims_beside(tree_path: str, naming: str) -> tuple[dict[str, int], str]:
    """(dims, config path) from a sibling config.json, or ({}, "") when there is none or it cannot be read."""
    config = sibling_config(tree_path)
    if config is None:
        return {}, ""
    try:
        obj = load_json_strict(config)
    except CkptmapError:
        return {}, ""
    if not isinstance(obj, dict):
        return {}, ""
    if naming == "maxtext":
        values = obj.get("maxtext_config_values")
        if isinstance(values, dict) and values:
            base = os.path.basename(tree_path)
            chosen = next((v for k, v in values.items() if f".{k}." in base), next(iter(values.values())))
            if isinstance(chosen, dict):
                return dims_from_maxtext(chosen), config
        overrides = obj.get("maxtext_overrides")
        if isinstance(overrides, list):
            return dims_from_maxtext(overrides), config
        return {}, ""
    hf = obj.get("hf_config", obj)
    if isinstance(hf, dict) and (hf.get("model_type") is not None or hf.get("architectures")):
        return dims_from_hf_config(hf), config
    return {}, ""
