"""Bundled tiny model pairs (HF tree, MaxText trees, configs) for the demo and `solve MODEL --tiny`.

Each family folder holds `config.json` (the HF config and the MaxText overrides of a tiny model),
`hf_params.json` and `maxtext_params.scan{0,1}.json` (name -> shape), taken from the real models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ckptmap.errors import CkptmapError

BUNDLED_DIR = os.path.join(os.path.dirname(__file__), "data", "maxtext_tiny")


@dataclass
class BundledModel:
    family: str
    folder: str
    config: dict

    @property
    def maxtext_model_name(self) -> str:
        return self.config["maxtext_model_name"]

    def hf_tree_path(self) -> str:
        return os.path.join(self.folder, "hf_params.json")

    def maxtext_tree_path(self, scan: bool) -> str:
        return os.path.join(self.folder, f"maxtext_params.scan{int(scan)}.json")

    def config_path(self) -> str:
        return os.path.join(self.folder, "config.json")


def families() -> list[str]:
    return sorted(d for d in os.listdir(BUNDLED_DIR) if os.path.isfile(os.path.join(BUNDLED_DIR, d, "config.json")))


def find(model: str) -> BundledModel:
    """A bundled family by family name (`llama3.1`) or MaxText model name (`llama3.1-8b`)."""
    for fam in families():
        folder = os.path.join(BUNDLED_DIR, fam)
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        if model in (fam, cfg.get("maxtext_model_name")):
            return BundledModel(fam, folder, cfg)
    raise CkptmapError(f"no bundled tiny model {model!r}; bundled: {', '.join(families())}")
