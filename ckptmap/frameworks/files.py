"""Files with no model code behind them: tree JSON, safetensors (file or shards), Orbax checkpoints (`orbax:DIR`).

They have no runner; a config JSON given as a bare path is read (and run) as `hf:` would.
"""

from __future__ import annotations

# lazy imports: read_tree registers every adapter, so an adapter imports its framework's machinery (the
# readers, which import this package back; verify's runner; code reading; export) only when asked for it:
# readers never load verify or export, and registering costs nothing.

from ckptmap.errors import TreeError
from ckptmap.frameworks import register
from ckptmap.frameworks.base import Adapter, _no_runner
from ckptmap.trees.spec import TreeSpec


def parse(prefix: str, target: str, rest: list[str], raw: tuple, parsed: dict, text: str) -> TreeSpec:
    if rest:
        raise TreeError("orbax: takes no key=value overrides", file=text)
    return TreeSpec("orbax", target, (), {}, text)


def _as_hf(spec: TreeSpec) -> TreeSpec:
    return TreeSpec("hf_config", spec.target, spec.raw_overrides, spec.overrides, spec.text)


def _is_config(spec: TreeSpec) -> bool:
    from ckptmap.trees import hf_config
    from ckptmap.trees.jsonio import load_json_strict

    return spec.kind == "json" and hf_config.looks_like_config(load_json_strict(spec.target))


def _read_json(spec: TreeSpec, layout: str):
    from ckptmap.frameworks import hf
    from ckptmap.trees import json_tree
    from ckptmap.trees.code_layouts import attach_beside
    from ckptmap.trees.jsonio import load_json_strict
    from ckptmap.trees.safetensors_tree import read_index
    from ckptmap.trees.sibling import dims_beside

    if _is_config(spec):
        return hf.read_tree(_as_hf(spec), layout)
    obj = load_json_strict(spec.target)
    if spec.overrides:
        raise TreeError("key=value overrides apply to a config, and this file is a parameter tree",
                        file=spec.target)
    if isinstance(obj, dict) and isinstance(obj.get("weight_map"), dict):
        return read_index(spec.target)
    if json_tree.is_tree_document(obj):
        return json_tree.tree_from_document(obj, spec.target)
    tree = json_tree.tree_from_params_object(obj, spec.target)
    dims, source = dims_beside(spec.target, tree.meta.get("naming", ""))
    if dims:
        tree.meta["dims"] = dims
        tree.meta["dims_from"] = source
    return attach_beside(tree, spec.target)


def read_tree(spec: TreeSpec, layout: str = "saved"):
    if spec.kind == "json":
        return _read_json(spec, layout)
    if spec.kind == "safetensors":
        from ckptmap.trees.safetensors_tree import read_safetensors_tree

        return read_safetensors_tree(spec.target)
    from ckptmap.trees.orbax_tree import read_orbax_tree

    return read_orbax_tree(spec.target)


def runner(spec: TreeSpec, device: str, layout: str):
    if _is_config(spec):
        from ckptmap.frameworks import hf

        return hf.runner(_as_hf(spec), device, layout)
    return _no_runner(spec, device, layout)


def code_layouts(spec: TreeSpec, tree, notes: list[str]) -> dict:
    if spec.kind == "json" and tree.meta.get("hf"):
        from ckptmap.frameworks import hf

        return hf.code_layouts(_as_hf(spec), tree, notes)
    return {}


ADAPTER = register(Adapter(name="files", prefixes=("orbax",), kinds=("json", "safetensors", "orbax"), parse=parse,
                           read_tree=read_tree, runner=runner, code_layouts=code_layouts))
