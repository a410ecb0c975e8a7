"""Orbax checkpoint trees from metadata only (orbax-checkpoint's `PyTreeCheckpointer.metadata`): no array is read.

`orbax:DIR` may name the item directory itself (it holds `_METADATA`), a step directory holding `items/`, or a
checkpoint-manager root holding numbered steps (the latest step is read). Names are the tree paths joined with
`-`, the way MaxText's checkpoint conversion names them: a MaxText train state `{"params": {"params": {...}},
"opt_state": ..., "step": ...}` gives `params-decoder-layers-...`; other top-level items (optimizer state,
step) are counted in `meta["skipped_items"]`, not listed.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from ckptmap.errors import TreeError
from ckptmap.trees.model import ParamInfo, ParamTree, normalise_dtype


def resolve_item_dir(target: str) -> str:
    """The directory whose `_METADATA` describes the tree."""
    if not os.path.isdir(target):
        raise TreeError("no such Orbax checkpoint directory", file=target)
    if os.path.isfile(os.path.join(target, "_METADATA")):
        return target
    items = os.path.join(target, "items")
    if os.path.isfile(os.path.join(items, "_METADATA")):
        return items
    steps = sorted((int(n) for n in os.listdir(target) if n.isdigit()), reverse=True)
    for step in steps:
        for candidate in (os.path.join(target, str(step), "items"), os.path.join(target, str(step))):
            if os.path.isfile(os.path.join(candidate, "_METADATA")):
                return candidate
    raise TreeError("no Orbax tree metadata (_METADATA) here, in items/, or in a numbered step directory",
                    file=target)


def _key_text(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (_key_text(k),))
    elif isinstance(node, (list, tuple)) and not hasattr(node, "shape"):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (str(i),))
    elif node is not None:
        yield path, node


def _param_root(tree: dict) -> tuple[Any, tuple[str, ...], list[str]]:
    """Where parameters start: a train state's `params` item (with its own `params` collection inside)."""
    if isinstance(tree, dict) and isinstance(tree.get("params"), dict):
        skipped = sorted(str(k) for k in tree if k != "params")
        inner = tree["params"]
        if isinstance(inner.get("params"), dict) and len(inner) == 1:
            return inner, (), skipped
        return tree["params"], ("params",), skipped
    return tree, (), []


def read_orbax_tree(target: str) -> ParamTree:
    """`orbax:DIR` -> ParamTree of the saved arrays' names, shapes and dtypes (from metadata)."""
    item_dir = resolve_item_dir(target)
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise TreeError(f"reading Orbax checkpoints needs orbax-checkpoint ({e})", file=target) from None
    try:
        metadata = ocp.PyTreeCheckpointer().metadata(os.path.abspath(item_dir))
    except Exception as e:  # orbax raises assorted errors for damaged checkpoints
        first_line = " ".join(str(e).split())[:300]
        raise TreeError(f"cannot read Orbax metadata: {type(e).__name__}: {first_line}", file=item_dir) from None
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", None)
    if tree is None:
        tree = getattr(metadata, "item_metadata", metadata)
    root, prefix, skipped = _param_root(tree)
    params = []
    for path, leaf in _leaves(root):
        shape = getattr(leaf, "shape", None)
        if shape is None:
            continue
        dtype = normalise_dtype(str(getattr(leaf, "dtype", "float32")))
        params.append(ParamInfo("-".join(prefix + path), tuple(int(d) for d in shape), dtype))
    if not params:
        raise TreeError("Orbax metadata lists no arrays", file=item_dir)
    meta = {"naming": "maxtext", "item_dir": item_dir}
    if skipped:
        meta["skipped_items"] = skipped
    return ParamTree.from_items(params, origin=item_dir, framework="orbax", meta=meta)
