"""Parameter trees: `read_tree(spec)` reads any SPEC form into a ParamTree (names, shapes, dtypes; no weights).

SPEC forms (see ckptmap.trees.spec): `x.json`, `hf:CONFIG.json [k=v ...]`, `hf:MODEL_TYPE [k=v ...]`,
`x.safetensors` or a directory of shards, `maxtext:MODEL_NAME [k=v ...]`, `orbax:DIR`.
"""

from __future__ import annotations

from ckptmap.errors import TreeError
from ckptmap.trees.dims import merge_dims
from ckptmap.trees.model import ParamInfo, ParamTree, ParsedName, parse_name
from ckptmap.trees.spec import TreeSpec, parse_spec

__all__ = ["ParamInfo", "ParamTree", "ParsedName", "TreeSpec", "merge_dims", "parse_name", "parse_spec",
           "read_tree", "write_tree"]


def _read_hf(spec: TreeSpec, layout: str) -> ParamTree:
    from ckptmap.trees import hf, hf_config

    if spec.kind == "hf_type":
        config, notes = hf_config.config_for_model_type(spec.target, spec.overrides, spec.text)
        origin = spec.text
    else:
        config, notes, path = hf_config.config_for_file(spec.target, spec.overrides)
        origin = spec.text if spec.overrides else path
    return hf.read_hf_tree(config, origin=origin, layout=layout, notes=notes)


def _read_json(spec: TreeSpec, layout: str) -> ParamTree:
    from ckptmap.trees import hf_config, json_tree
    from ckptmap.trees.jsonio import load_json_strict
    from ckptmap.trees.safetensors_tree import read_index
    from ckptmap.trees.sibling import dims_beside

    obj = load_json_strict(spec.target)
    if hf_config.looks_like_config(obj):
        return _read_hf(TreeSpec("hf_config", spec.target, spec.raw_overrides, spec.overrides, spec.text), layout)
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
    from ckptmap.trees.code_layouts import attach_beside

    return attach_beside(tree, spec.target)


def maxtext_spec_args(spec: TreeSpec) -> tuple[list[str], bool | None]:
    """(overrides without scan_layers, scan_layers or None) of a `maxtext:MODEL key=value ...` spec."""
    overrides = [tok for tok in spec.raw_overrides if not tok.startswith("scan_layers=")]
    scan = spec.overrides.get("scan_layers")
    if isinstance(scan, str):
        scan = scan.lower() in ("1", "true", "yes")
    return overrides, None if scan is None else bool(scan)


def _read_maxtext(spec: TreeSpec) -> ParamTree:
    try:
        from ckptmap.maxtext import read_maxtext_tree
    except ImportError as e:
        raise TreeError(f"the MaxText reader is not available ({e})", file=spec.text) from None
    return read_maxtext_tree(spec.target, *maxtext_spec_args(spec))


def read_tree(spec: str, *, hf_layout: str = "saved") -> ParamTree:
    """Read the tree a SPEC names. `hf_layout` ("saved" | "memory") picks HF checkpoint names or module names."""
    parsed = parse_spec(spec)
    if parsed.kind in ("hf_type", "hf_config"):
        return _read_hf(parsed, hf_layout)
    if parsed.kind == "json":
        return _read_json(parsed, hf_layout)
    if parsed.kind == "safetensors":
        from ckptmap.trees.safetensors_tree import read_safetensors_tree

        return read_safetensors_tree(parsed.target)
    if parsed.kind == "orbax":
        from ckptmap.trees.orbax_tree import read_orbax_tree

        return read_orbax_tree(parsed.target)
    if parsed.kind == "maxtext":
        return _read_maxtext(parsed)
    raise TreeError(f"unsupported SPEC kind {parsed.kind!r}", file=spec)


def write_tree(tree: ParamTree, path: str) -> None:
    """Write `tree` atomically as the ckptmap tree JSON document, which `read_tree(path)` reads back."""
    from ckptmap.mapping import write_json_atomic
    from ckptmap.trees.json_tree import tree_document

    write_json_atomic(path, tree_document(tree))
