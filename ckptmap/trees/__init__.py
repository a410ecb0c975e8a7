"""Parameter trees: `read_tree(spec)` reads any SPEC form into a ParamTree (names, shapes, dtypes; no weights).

SPEC forms (see ckptmap.trees.spec): `x.json`, `hf:CONFIG.json [k=v ...]`, `hf:MODEL_TYPE [k=v ...]`,
`x.safetensors` or a directory of shards, `maxtext:MODEL_NAME [k=v ...]`, `orbax:DIR`.
"""

from __future__ import annotations

from ckptmap.atomic import write_json_atomic
from ckptmap.errors import TreeError
from ckptmap.trees.dims import merge_dims
from ckptmap.trees.json_tree import tree_document
from ckptmap.trees.model import ParamInfo, ParamTree, ParsedName, parse_name
from ckptmap.trees.spec import TreeSpec, parse_spec

__all__ = ["ParamInfo", "ParamTree", "ParsedName", "TreeSpec", "merge_dims", "parse_name", "parse_spec",
           "read_tree", "write_tree"]


def read_tree(spec: str, *, hf_layout: str = "saved") -> ParamTree:
    """Read the tree a SPEC names. `hf_layout` ("saved" | "memory") picks HF checkpoint names or module names.
    The framework adapter that owns the SPEC's kind reads it (ckptmap.frameworks)."""
    from ckptmap import frameworks  # lazy: the adapters import the readers of this package (a cycle)

    parsed = parse_spec(spec)
    try:
        adapter = frameworks.for_kind(parsed.kind)
    except KeyError:
        raise TreeError(f"unsupported SPEC kind {parsed.kind!r}", file=spec) from None
    return adapter.read_tree(parsed, hf_layout)


def write_tree(tree: ParamTree, path: str) -> None:
    """Write `tree` atomically as the ckptmap tree JSON document, which `read_tree(path)` reads back."""
    write_json_atomic(path, tree_document(tree))
