"""The pieces the torch dataflow tracer is built from: op classes by overload-packet name, the tracked axis of a
parameter (`_Track`, `_View`), and how reshapes, permutations and cuts move or split it. Pure functions over
shapes and masks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# --- op classes (by overload-packet name) ---------------------------------------------------------------------------

_IDENTITY = {"alias", "clone", "contiguous", "_to_copy", "to", "detach", "lift_fresh", "lift_fresh_copy", "_conj",
             "positive", "type_as", "_conj_physical", "resolve_conj", "resolve_neg"}
_RESHAPE = {"view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "flatten", "unflatten", "view_as",
            "_reshape_alias"}
_EXPAND = {"expand", "expand_as", "broadcast_to"}
_PERMUTE = {"t", "transpose", "permute", "swapaxes", "swapdims", "numpy_T", "mT"}
_CUT = {"slice", "select", "split", "split_with_sizes", "unbind", "narrow", "unsafe_split",
        "unsafe_split_with_sizes"}
_ADD_LIKE = {"add", "add_", "sub", "sub_"}
_SCALE_LIKE = {"mul", "mul_", "div", "div_"}
_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_grouped_mm", "grouped_mm"}
# ops that read only a tensor's metadata: no use of its values
_NEUTRAL = {"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "randint_like",
            "new_empty", "new_zeros", "new_ones", "new_full", "new_empty_strided", "sym_size", "sym_stride",
            "sym_numel", "sym_storage_offset", "size", "stride", "dim", "is_same_size",
            "_has_compatible_shallow_copy_type"}


@dataclass(frozen=True)
class _Root:
    """One use of a parameter as a weight: the output axis `paxis` (size `size`) it starts following."""

    param: str
    paxis: int
    size: int


@dataclass(frozen=True)
class _Track:
    """A tensor computed from root `root`: the root's axis lies on the tensor axes `factors` [(axis, size), ...],
    outer to inner (product = the root's size)."""

    root: int
    factors: tuple[tuple[int, int], ...]

    def axes(self) -> set[int]:
        return {a for a, _ in self.factors}

    def remap(self, axis_map: dict[int, int]) -> _Track | None:
        if any(a not in axis_map for a, _ in self.factors):
            return None
        return _Track(self.root, tuple((axis_map[a], s) for a, s in self.factors))

    def mask(self, axis: int, indices: list[int]) -> np.ndarray:
        """The flat positions (along the root axis) whose digit on tensor axis `axis` is in `indices`."""
        n = math.prod(s for _, s in self.factors)
        inner = 1
        for a, s in reversed(self.factors):
            if a == axis:
                digits = (np.arange(n) // inner) % s
                return np.isin(digits, np.asarray(indices, dtype=np.int64))
            inner *= s
        raise ValueError(axis)


@dataclass(frozen=True)
class _View:
    """A tensor that is a rearranged view or selection of parameter `param`: tensor axis i is parameter axis
    `axes[i]` (None: not a whole parameter axis)."""

    param: str
    axes: tuple[int | None, ...]


def _packet(func) -> str:
    try:
        return func.overloadpacket.__name__
    except AttributeError:
        return str(func)


def _bind(func, args, kwargs) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, a in enumerate(func._schema.arguments):
        if i < len(args):
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _reshape_groups(in_shape, out_shape) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input axes with runs of output axes of equal size (size-1 axes left out)."""
    ins = [i for i, s in enumerate(in_shape) if s != 1]
    outs = [j for j, s in enumerate(out_shape) if s != 1]
    if any(in_shape[i] == 0 for i in ins) or any(out_shape[j] == 0 for j in outs):
        return None
    groups = []
    i = j = 0
    while i < len(ins) and j < len(outs):
        gi, gj = [ins[i]], [outs[j]]
        pi, pj = in_shape[ins[i]], out_shape[outs[j]]
        while pi != pj:
            if pi < pj:
                i += 1
                if i >= len(ins):
                    return None
                gi.append(ins[i])
                pi *= in_shape[ins[i]]
            else:
                j += 1
                if j >= len(outs):
                    return None
                gj.append(outs[j])
                pj *= out_shape[outs[j]]
        groups.append((gi, gj))
        i += 1
        j += 1
    if i != len(ins) or j != len(outs):
        return None
    return groups


def _reshape_track(track: _Track, in_shape, out_shape) -> _Track | None:
    groups = _reshape_groups(in_shape, out_shape)
    if groups is None:
        return None
    slot_of = {a: k for k, (a, _) in enumerate(track.factors)}
    slots: list[list[tuple[int, int]] | None] = [None] * len(track.factors)
    for gi, gj in groups:
        tracked = [slot_of[a] for a in gi if a in slot_of]
        if not tracked:
            continue
        if len(gi) == 1:  # the same axis, or split into several
            slots[tracked[0]] = [(b, int(out_shape[b])) for b in gj]
        elif len(gj) == 1 and tracked == list(range(tracked[0], tracked[0] + len(gi))):  # merged, in order
            slots[tracked[0]] = [(gj[0], int(out_shape[gj[0]]))]
            for k in tracked[1:]:
                slots[k] = []
        else:
            return None
    if any(s is None for s in slots):
        return None
    return _Track(track.root, tuple(f for s in slots for f in s))  # type: ignore[union-attr]


def _reshape_view(view: _View, in_shape, out_shape) -> _View:
    axes: list[int | None] = [None] * len(out_shape)
    for gi, gj in _reshape_groups(in_shape, out_shape) or []:
        if len(gi) == 1 and len(gj) == 1:
            axes[gj[0]] = view.axes[gi[0]]
    return _View(view.param, tuple(axes))


def _permutation(name: str, b: dict[str, Any], ndim: int) -> list[int] | None:
    """perm with out axis k = in axis perm[k]."""
    perm = list(range(ndim))
    if name in ("t", "numpy_T", "mT"):
        if name == "numpy_T":
            return perm[::-1]
        if ndim >= 2:
            perm[-1], perm[-2] = perm[-2], perm[-1]
        return perm
    if name in ("transpose", "swapaxes", "swapdims"):
        keys = [k for k in b if k not in ("self", "input")]
        d0, d1 = (_norm_dim(int(b[k]), ndim) for k in keys[:2])
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    if name == "permute":
        return [_norm_dim(int(d), ndim) for d in b["dims"]]
    return None


def _cut_pieces(name: str, b: dict[str, Any], shape) -> tuple[int, list[tuple[list[int], bool]]] | None:
    """(dim, [(indices along dim, dim kept in that output), ...]) for a cut op, outputs in order."""
    ndim = len(shape)
    dim = _norm_dim(int(b.get("dim", 0)), ndim)
    size = int(shape[dim])
    if name == "slice":
        start, end, step = b.get("start"), b.get("end"), b.get("step", 1) or 1
        return dim, [(list(range(size)[slice(start, end, int(step))]), True)]
    if name == "narrow":
        start = int(b["start"])
        start = start + size if start < 0 else start
        return dim, [(list(range(start, start + int(b["length"]))), True)]
    if name == "select":
        return dim, [([int(b["index"]) % size], False)]
    if name == "unbind":
        return dim, [([k], False) for k in range(size)]
    if name in ("split", "unsafe_split"):
        step = int(b["split_size"])
        return dim, [(list(range(s, min(s + step, size))), True) for s in range(0, max(size, 1), max(step, 1))]
    if name in ("split_with_sizes", "unsafe_split_with_sizes"):
        pieces, s = [], 0
        for n in b["split_sizes"]:
            pieces.append((list(range(s, s + int(n))), True))
            s += int(n)
        return dim, pieces
    return None


def _tensors(x) -> list:
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for t in x if isinstance(t, torch.Tensor)]
    return []


def _layout_of(masks: list[np.ndarray]) -> tuple[int, list[int]] | None:
    """(rounds, blocks) when the masks tile the axis; None otherwise."""
    n = masks[0].size
    count = np.zeros(n, dtype=np.int64)
    for m in masks:
        count += m
    if not (count == 1).all():
        return None
    masks = sorted(masks, key=lambda m: int(np.argmax(m)))
    label = np.zeros(n, dtype=np.int64)
    for k, m in enumerate(masks):
        label[m] = k
    for p in range(len(masks), n + 1):
        if n % p or not (label.reshape(n // p, p) == label[:p]).all():
            continue
        head = label[:p]
        edges = np.flatnonzero(np.diff(head)) + 1
        runs = np.split(head, edges)
        if len(runs) == len(masks) and len({int(r[0]) for r in runs}) == len(runs):
            return n // p, [int(r.size) for r in runs]
    return None
