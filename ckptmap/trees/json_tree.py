"""JSON trees: read `name -> shape` / `name -> {shape, dtype}` files and the ckptmap tree format, write the latter.

Accepted forms (top level is one JSON object):
- `{"model.embed_tokens.weight": [256, 64], ...}` (the fixtures' and agent_context's form; dtype float32);
- `{"name": {"shape": [256, 64], "dtype": "bfloat16", "stacked_axes": {"1": "layers"}, "tags": ["tied"]}}`;
- the ckptmap tree document `{"format": "ckptmap.tree", "version": 1, "params": {...}, "meta": {...}, ...}`
  that `tree_document` writes, so `ckptmap trees SPEC --out x.json` reads back unchanged.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ckptmap.errors import TreeError
from ckptmap.trees.model import ParamInfo, ParamTree, normalise_dtype

TREE_FORMAT = "ckptmap.tree"
TREE_FORMAT_VERSION = 1


def is_tree_document(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == TREE_FORMAT


def _shape(value: Any, file: str, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise TreeError(f"shape must be a list of non-negative integers, got {value!r}", file=file, key=name)
    return tuple(value)


def _stacked_axes(value: Any, ndim: int, file: str, name: str) -> tuple[tuple[int, str], ...]:
    if not isinstance(value, dict):
        raise TreeError(f"stacked_axes must be an object axis -> what, got {value!r}", file=file, key=name)
    out = []
    for axis_text, what in value.items():
        try:
            axis = int(axis_text)
        except ValueError:
            raise TreeError(f"stacked_axes key must be an axis number, got {axis_text!r}", file=file,
                            key=name) from None
        if not 0 <= axis < ndim or not isinstance(what, str):
            raise TreeError(f"stacked axis {axis_text!r}: {what!r} does not fit a {ndim}-d shape", file=file,
                            key=name)
        out.append((axis, what))
    return tuple(sorted(out))


def param_from_json(name: str, value: Any, file: str) -> ParamInfo:
    """One entry of a JSON tree -> ParamInfo; a bare list is a shape, an object holds shape/dtype/..."""
    if isinstance(value, list):
        return ParamInfo(name, _shape(value, file, name))
    if not isinstance(value, dict):
        raise TreeError(f"expected a shape list or an object with 'shape', got {value!r}", file=file, key=name)
    if "shape" not in value:
        raise TreeError("entry has no 'shape'", file=file, key=name)
    unknown = set(value) - {"shape", "dtype", "stacked_axes", "tags"}
    if unknown:
        raise TreeError(f"unknown field(s) {sorted(unknown)}; expected shape, dtype, stacked_axes, tags", file=file,
                        key=name)
    shape = _shape(value["shape"], file, name)
    dtype = value.get("dtype", "float32")
    if not isinstance(dtype, str):
        raise TreeError(f"dtype must be a string, got {dtype!r}", file=file, key=name)
    tags = value.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise TreeError(f"tags must be a list of strings, got {tags!r}", file=file, key=name)
    stacked = _stacked_axes(value.get("stacked_axes", {}), len(shape), file, name)
    return ParamInfo(name, shape, normalise_dtype(dtype), stacked, tuple(tags))


def naming_style(names: list[str]) -> str:
    """'maxtext' when names are `-`-joined MaxText paths (`params-decoder-...`), else 'hf' (`.`-joined)."""
    if not names:
        return "unknown"
    dashed = sum(1 for n in names if "-" in n and "." not in n)
    return "maxtext" if dashed * 2 > len(names) else "hf"


def tree_from_params_object(obj: Any, file: str, *, framework: str = "json", meta: dict | None = None) -> ParamTree:
    """A `name -> entry` object -> ParamTree, validating every entry."""
    if not isinstance(obj, dict):
        raise TreeError(f"expected a JSON object name -> shape, got a {type(obj).__name__}", file=file)
    params = [param_from_json(str(name), value, file) for name, value in obj.items()]
    tree = ParamTree.from_items(params, origin=file, framework=framework, meta=meta)
    tree.meta.setdefault("naming", naming_style(tree.names()))
    return tree


def tree_from_document(doc: dict, file: str) -> ParamTree:
    """The ckptmap tree document -> ParamTree (origin, framework and meta restored)."""
    version = doc.get("version")
    if version != TREE_FORMAT_VERSION:
        raise TreeError(f"unsupported {TREE_FORMAT} version {version!r} (this ckptmap reads "
                        f"{TREE_FORMAT_VERSION})", file=file, key="version")
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise TreeError("meta must be an object", file=file, key="meta")
    tree = tree_from_params_object(doc.get("params"), file, framework=str(doc.get("framework", "json")),
                                   meta=meta)
    tree.origin = str(doc.get("origin") or file)
    return tree


def tree_document(tree: ParamTree) -> dict:
    """ParamTree -> the JSON document `tree_from_document` reads back.

    Reader notes that are not plain JSON (an enum, a path object) are written as their `str`.
    """
    meta = json.loads(json.dumps(tree.meta, default=str))
    return {"format": TREE_FORMAT, "version": TREE_FORMAT_VERSION, "origin": tree.origin,
            "framework": tree.framework, "count": len(tree), "total_params": tree.total_params,
            "total_bytes": tree.total_bytes, "meta": meta, "params": tree.to_json()}


def sibling_config(path: str) -> str | None:
    """The `config.json` beside a tree file (the fixtures keep one per family), if there is one."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if os.path.abspath(path) != candidate and os.path.isfile(candidate):
        return candidate
    return None
