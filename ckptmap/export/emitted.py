"""Helper functions an exported module carries when its hooks need them (copied in by source, never imported:
an exported module stands alone beside MaxText). They are a real module so that they are linted and tested.

`_at` / `_with_axes` index and shape cells of stacked axes; `_map_cells` applies a per-cell hook over the axes both
checkpoints stack; `_stack_leaves` / `_unstack_leaves` build (split) a MaxText tensor from (into) per-slice HF
tensors at axes MaxText's list forms cannot express.
"""

from __future__ import annotations

import inspect
import itertools

import numpy as np

COMMON = ("_at", "_with_axes")
OPTIONAL = ("_map_cells", "_stack_leaves", "_unstack_leaves")


def _at(ndim, axes, cell):
    """Index picking `cell` at `axes` of an ndim-d array, everything else whole."""
    index = [slice(None)] * ndim
    for axis, i in zip(axes, cell):
        index[axis] = i
    return tuple(index)


def _with_axes(shape, axes, sizes):
    """`shape` with `sizes` inserted at `axes` (ascending)."""
    shape = list(shape)
    for axis, n in sorted(zip(axes, sizes)):
        shape.insert(axis, n)
    return tuple(shape)


def _map_cells(cell_fn, arrays, in_axes, out_axes):
    """Apply `cell_fn` to every cell of the axes both checkpoints stack: arrays[i] holds them at in_axes[i] (None:
    the same array for every cell), output j gets them at out_axes[j]."""
    sizes = next(tuple(a.shape[ax] for ax in axes) for a, axes in zip(arrays, in_axes) if axes is not None)
    outs = None
    for cell in itertools.product(*(range(n) for n in sizes)):
        args = tuple(a if axes is None else a[_at(a.ndim, axes, cell)] for a, axes in zip(arrays, in_axes))
        results = cell_fn(*args)
        if outs is None:
            outs = [None if axes is None else np.empty(_with_axes(r.shape, axes, sizes), dtype=r.dtype)
                    for r, axes in zip(results, out_axes)]
            for k, axes in enumerate(out_axes):
                if axes is None:
                    outs[k] = results[k]
        for out, r, axes in zip(outs, results, out_axes):
            if axes is not None:
                out[_at(out.ndim, axes, cell)] = r
    return tuple(outs)


def _stack_leaves(leaf_hook, arrays, per_leaf, axes, target_shape):
    """HF tensors of every slice (C order over the stacked axes, `per_leaf` tensors each) -> the MaxText tensor
    with the slices stacked at `axes` (the rule's own axes, which MaxText's list forms cannot express)."""
    sizes = tuple(target_shape[a] for a in axes)
    slice_shape = tuple(n for k, n in enumerate(target_shape) if k not in axes)
    out = None
    for k, cell in enumerate(itertools.product(*(range(n) for n in sizes))):
        leaf = arrays[k * per_leaf:(k + 1) * per_leaf]
        leaf = leaf[0] if per_leaf == 1 else tuple(leaf)
        part = leaf if leaf_hook is None else leaf_hook(leaf, slice_shape)
        if out is None:
            out = np.empty(target_shape, dtype=part.dtype)
        out[_at(out.ndim, axes, cell)] = part
    return out


def _unstack_leaves(leaf_hook, stacked, per_leaf, axes):
    """The inverse of _stack_leaves: slice the MaxText tensor(s) at `axes`, one flat tuple of HF tensors."""
    first = stacked[0] if isinstance(stacked, (list, tuple)) else stacked
    sizes = tuple(first.shape[a] for a in axes)
    out = []
    for cell in itertools.product(*(range(n) for n in sizes)):
        if isinstance(stacked, (list, tuple)):
            part = [x[_at(x.ndim, axes, cell)] for x in stacked]
        else:
            part = stacked[_at(stacked.ndim, axes, cell)]
        leaf = part if leaf_hook is None else leaf_hook(part, None)
        out.extend(leaf if per_leaf > 1 else [leaf])
    return tuple(out)


def source(name: str) -> str:
    """The source text of helper `name`, as it is copied into an exported module."""
    if name not in COMMON + OPTIONAL:
        raise KeyError(f"no emitted helper {name!r}")
    return inspect.getsource(globals()[name]).strip("\n")
