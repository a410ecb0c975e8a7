"""Orbax checkpoint trees from metadata only (ckptmap.orbax_io, the one Orbax reader): no array is read.

`orbax:DIR` may name the item directory itself (it holds `_METADATA`), a step directory holding `items/`, or a
checkpoint root holding numbered steps (the latest step is read). Names are the parameter collections' paths
joined with `-`, the way MaxText's checkpoint conversion names them: a MaxText train state `{"params": {"params":
{...}}, "opt_state": ..., "step": ...}` gives `params-decoder-layers-...`; the other top-level items (optimizer
state, step) are counted in `meta["skipped_items"]`, not listed.
"""

from __future__ import annotations

from ckptmap import orbax_io
from ckptmap.errors import TreeError
from ckptmap.trees.model import ParamInfo, ParamTree, normalise_dtype


def read_orbax_tree(target: str) -> ParamTree:
    """`orbax:DIR` -> ParamTree of the saved arrays' names, shapes and dtypes (from metadata)."""
    try:
        meta = orbax_io.read_metadata(target)
    except orbax_io.OrbaxError as e:
        raise TreeError(e.message, file=e.file or target, key=e.key) from None
    params = [ParamInfo(name, shape, normalise_dtype(dtype)) for name, (shape, dtype) in meta.entries.items()]
    info = {"naming": "maxtext", "item_dir": meta.location.item_dir}
    if meta.location.step is not None:
        info["step"] = meta.location.step
    if meta.skipped:
        info["skipped_items"] = list(meta.skipped)
    return ParamTree.from_items(params, origin=meta.location.item_dir, framework="orbax", meta=info)
