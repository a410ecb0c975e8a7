"""Hugging Face transformers: `hf:CONFIG.json` / `hf:MODEL_TYPE [k=v ...]`, models built on the meta device."""

from __future__ import annotations

# lazy imports: read_tree registers every adapter, so an adapter imports its framework's machinery (the
# readers, which import this package back; verify's runner; code reading; export) only when asked for it:
# readers never load verify or export, and registering costs nothing.

import os

from ckptmap.frameworks import register
from ckptmap.frameworks.base import Adapter
from ckptmap.trees.spec import TreeSpec


def parse(prefix: str, target: str, rest: list[str], raw: tuple, parsed: dict, text: str) -> TreeSpec:
    looks_like_path = target.endswith(".json") or os.sep in target or os.path.exists(target)
    return TreeSpec("hf_config" if looks_like_path else "hf_type", target, raw, parsed, text)


def config_of(spec: TreeSpec):
    """The transformers config object a SPEC names (a config file, or a model type's defaults plus overrides)."""
    from ckptmap.trees import hf_config

    if spec.kind == "hf_type":
        return hf_config.config_for_model_type(spec.target, spec.overrides, spec.text)[0]
    return hf_config.config_for_file(spec.target, spec.overrides)[0]


def read_tree(spec: TreeSpec, layout: str = "saved"):
    from ckptmap.trees import hf, hf_config

    if spec.kind == "hf_type":
        config, notes = hf_config.config_for_model_type(spec.target, spec.overrides, spec.text)
        origin = spec.text
    else:
        config, notes, path = hf_config.config_for_file(spec.target, spec.overrides)
        origin = spec.text if spec.overrides else path
    return hf.read_hf_tree(config, origin=origin, layout=layout, notes=notes)


def runner(spec: TreeSpec, device: str, layout: str):
    from ckptmap.verify.hf_runner import HFRunner

    return HFRunner(config_of(spec), device=device, layout=layout)


def checkpoint_model(spec: TreeSpec, path: str, device: str, options: dict):
    """The checkpoint at `path` in transformers, configured by (first found) its own config.json, the HF config the
    options give (`--hf-config`, or the mapping's record for its HF side), the config the SPEC names."""
    import os

    from ckptmap.verify.checkpoint_models import HFCheckpointModel

    config = options.get("hf_config")
    if config is None and spec is not None and spec.kind in ADAPTER.kinds and not os.path.isfile(
            os.path.join(path, "config.json")):
        config = config_of(spec)
    return HFCheckpointModel(path, device, config=config, step=options.get("step"))


def code_layouts(spec: TreeSpec, tree, notes: list[str]) -> dict:
    from ckptmap.code_reading import hf_layouts

    return hf_layouts(config_of(spec), tree, notes)


ADAPTER = register(Adapter(name="hf", prefixes=("hf",), kinds=("hf_config", "hf_type"), parse=parse,
                           read_tree=read_tree, runner=runner, code_layouts=code_layouts,
                           checkpoint_model=checkpoint_model, storage="torch",
                           naming="."))
