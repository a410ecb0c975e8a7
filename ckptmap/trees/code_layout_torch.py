"""Read how a model's code cuts a fused parameter's output axis, by tracing one small CPU forward pass.

Shapes alone cannot tell whether gpt-oss's `experts.gate_up_proj` [E, H, 2I] holds [gate | up] or interleaved
(gate, up) pairs; the forward code says it (`gate_up[..., ::2]`). `fused_layouts_from_module` runs a forward under a
`TorchDispatchMode` and follows, for every parameter used as a matmul weight, the axis of the result that the
parameter's output axis becomes, through value-preserving ops (bias add, scaling, casts, views, reshapes), until
the code cuts it (slice / split / chunk / select / unbind). A reshape that splits the axis into (G, M) is followed
too, so a cut of M is a cut per group (Qwen3-Next's `in_proj_qkvz`).

A layout is `{"axis": a, "rounds": R, "blocks": [b0, b1, ...]}`: axis `a` of the parameter as stored (size
N = R * sum(blocks)) is R rounds of [block_0 | block_1 | ...], part k taking block_k consecutive elements per round.
A contiguous split is R = 1; gpt-oss's interleave is R = N / 2, blocks [1, 1].

Only the *first* cut counts, and only a clean one: every use of the followed tensors must be a propagation or a
cut, and the cut parts must tile the whole axis into at least two parts. A tensor that is also used whole (RoPE's
`q * cos` beside `rotate_half(q)`), reduced, activated or multiplied by a full-size tensor before any cut gives no
layout. Neither does a cut whose parts are concatenated back into the shape and along the axis they were cut from
(RoPE on part of head_dim, gpt-oss's and DeepSeek's split-rotate-cat): that is a transform of the axis, not a
split into roles. A parameter gets a layout when every call that cut it agrees and no call used it otherwise.

`fused_layouts_hf(config)` builds the transformers causal LM (random init, CPU, float32, eager attention and
experts) and keys the layouts by the checkpoint names the `hf:` tree reader uses; a parameter whose checkpoint
form is not one tensor (transformers 5 fused MoE experts saved per expert, Mixtral) keeps its module name.

CLI: `python -m ckptmap.trees.code_layout_torch CONFIG.json [key=value ...]` prints the layouts as JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptmap.errors import CkptmapError

DEFAULT_MAX_PARAMS = 50_000_000


class CodeLayoutError(CkptmapError):
    """The model could not be built or traced to read fused-parameter layouts off its code."""


class ModelTooLarge(CodeLayoutError):
    """The model has more parameters than a CPU trace may build (max_params)."""


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


class _Tracer:
    """The dispatch-mode state: which tensors are parameter views, which follow a root, and how roots are used."""

    def __init__(self, params: dict[int, tuple[Any, str]]):
        self.params = params  # id(param) -> (param, name)
        self.views: dict[int, tuple[Any, list[_View]]] = {}
        self.tracks: dict[int, tuple[Any, list[_Track]]] = {}
        self.roots: list[_Root] = []
        self.other: set[int] = set()  # roots used in a way that is neither a propagation nor a cut
        self.parts: dict[int, dict[bytes, np.ndarray]] = {}
        # the parts a cut made, followed through any op but a matmul: (root, part key) tags per tensor
        self.tags: dict[int, tuple[Any, frozenset]] = {}
        self.cut_shapes: dict[int, set] = {}  # root -> {(shape of the cut tensor, cut dim)}
        self.rejoined: set[int] = set()  # roots whose parts were concatenated back as they were (partial RoPE)
        self.errors = 0

    # -- lookups --
    def views_of(self, t) -> list[_View]:
        p = self.params.get(id(t))
        if p is not None and p[0] is t:
            return [_View(p[1], tuple(range(t.dim())))]
        e = self.views.get(id(t))
        return e[1] if e is not None and e[0] is t else []

    def tracks_of(self, t) -> list[_Track]:
        e = self.tracks.get(id(t))
        if e is None or e[0] is not t:
            return []
        return [tr for tr in e[1] if tr.root not in self.other]

    def _set(self, table, t, items) -> None:
        if items:
            uniq = list(dict.fromkeys(items))
            table[id(t)] = (t, uniq)
        elif id(t) in table and table[id(t)][0] is t:
            del table[id(t)]

    def start(self, view: _View, vaxis: int, out, oaxis: int) -> _Track | None:
        paxis = view.axes[vaxis]
        if paxis is None or out.dim() <= oaxis:
            return None
        size = int(out.shape[oaxis])
        if size < 2:
            return None
        self.roots.append(_Root(view.param, paxis, size))
        return _Track(len(self.roots) - 1, ((oaxis, size),))

    def tags_of(self, t) -> frozenset:
        e = self.tags.get(id(t))
        return e[1] if e is not None and e[0] is t else frozenset()

    def cut(self, track: _Track, axis: int, indices: list[int], x, piece) -> None:
        if not indices:
            return  # an empty piece (x[..., n:] with nothing left) holds no part
        m = track.mask(axis, indices)
        key = m.tobytes()
        self.parts.setdefault(track.root, {})[key] = m
        self.cut_shapes.setdefault(track.root, set()).add((tuple(x.shape), axis))
        if piece is not None:
            self.tags[id(piece)] = (piece, self.tags_of(piece) | {(track.root, key)})

    def _follow_tags(self, name, b, flat_in, outs) -> None:
        """Carry part tags to the outputs. A cat of as many tensors as a cut made parts, which between them hold
        all the parts, into the shape and along the axis the cut took them from, says the cut was no split into
        roles but a transform of the axis (RoPE: split head_dim, rotate, cat back): that cut gives no layout."""
        tags = frozenset().union(*(self.tags_of(t) for t in flat_in))
        if not tags or name in _MATMUL:
            return
        if name == "cat" and outs:
            pieces = list(b.get("tensors", []))
            shape = (tuple(outs[0].shape), _norm_dim(int(b.get("dim", 0)), outs[0].dim()))
            for root in {r for r, _ in tags}:
                keys = {k for t in pieces for r, k in self.tags_of(t) if r == root}
                parts = self.parts.get(root, {})
                if len(pieces) == len(parts) and keys == set(parts) and shape in self.cut_shapes.get(root, ()):
                    self.rejoined.add(root)
        for o in outs:
            self.tags[id(o)] = (o, self.tags_of(o) | tags)

    # -- the per-op rule --
    def observe(self, func, args, kwargs, out) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        flat_in = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        name = _packet(func)
        if name in _NEUTRAL:
            return
        if self.tags and any(id(t) in self.tags for t in flat_in):
            try:
                self._follow_tags(name, _bind(func, args, kwargs), flat_in, _tensors(out))
            except Exception:  # an op this reader does not understand: its outputs carry no tags
                self.errors += 1
        tracked_in = {r.root for t in flat_in for r in self.tracks_of(t)}
        has_view = any(self.views_of(t) for t in flat_in)
        if not tracked_in and not has_view:
            return
        handled: set[int] = set()
        out_tracks: list[tuple[Any, list[_Track]]] = []
        out_views: list[tuple[Any, list[_View]]] = []
        try:
            self._rule(name, func, args, kwargs, out, handled, out_tracks, out_views)
        except Exception:  # an op this reader does not understand: the roots it touches are left unread
            self.errors += 1
            handled = set()
            out_tracks, out_views = [], []
        self.other |= tracked_in - handled
        for table, pairs in ((self.tracks, out_tracks), (self.views, out_views)):
            merged: dict[int, tuple[Any, list]] = {}
            for t, items in pairs:
                merged.setdefault(id(t), (t, []))[1].extend(items)
            for t, items in merged.values():
                if table is self.tracks:
                    items = [tr for tr in items if tr.root not in self.other]
                self._set(table, t, items)

    def _rule(self, name, func, args, kwargs, out, handled, out_tracks, out_views) -> None:
        import torch

        b = _bind(func, args, kwargs)
        x = b.get("self", b.get("input"))
        outs = _tensors(out)

        if name in _IDENTITY and isinstance(x, torch.Tensor) and outs:
            trs = self.tracks_of(x)
            handled.update(tr.root for tr in trs)
            out_tracks.append((outs[0], trs))
            out_views.append((outs[0], self.views_of(x)))
            return

        if name in _RESHAPE and isinstance(x, torch.Tensor) and outs:
            o = outs[0]
            new = []
            for tr in self.tracks_of(x):
                r = _reshape_track(tr, tuple(x.shape), tuple(o.shape))
                if r is not None:
                    new.append(r)
                    handled.add(tr.root)
            out_tracks.append((o, new))
            out_views.append((o, [_reshape_view(v, tuple(x.shape), tuple(o.shape)) for v in self.views_of(x)]))
            return

        if name in _EXPAND and isinstance(x, torch.Tensor) and outs:
            o = outs[0]
            shift = o.dim() - x.dim()
            amap = {a: a + shift for a in range(x.dim()) if int(x.shape[a]) == int(o.shape[a + shift])}
            self._propagate(x, o, amap, handled, out_tracks)
            out_views.append((o, [_View(v.param, (None,) * shift + tuple(
                ax if i in amap else None for i, ax in enumerate(v.axes))) for v in self.views_of(x)]))
            return

        if name in _PERMUTE and isinstance(x, torch.Tensor) and outs:
            perm = _permutation(name, b, x.dim())
            o = outs[0]
            amap = {old: new for new, old in enumerate(perm)}
            self._propagate(x, o, amap, handled, out_tracks)
            out_views.append((o, [_View(v.param, tuple(v.axes[p] for p in perm)) for v in self.views_of(x)]))
            return

        if name in _CUT and isinstance(x, torch.Tensor):
            cp = _cut_pieces(name, b, tuple(x.shape))
            if cp is None:
                return
            dim, pieces = cp
            size = int(x.shape[dim])
            for tr in self.tracks_of(x):
                handled.add(tr.root)
                if dim in tr.axes():
                    full = [k for k, (idx, _) in enumerate(pieces) if idx == list(range(size))]
                    if full and len(pieces) == 1 and pieces[0][1]:  # x[..., :] takes it all: a plain view
                        out_tracks.append((outs[0], [tr]))
                        continue
                    for k, (idx, _) in enumerate(pieces):
                        self.cut(tr, dim, idx, x, outs[k] if k < len(outs) else None)
                else:
                    for o, (_, kept) in zip(outs, pieces):
                        amap = {a: (a if kept or a < dim else a - 1) for a in range(x.dim()) if a != dim or kept}
                        r = tr.remap(amap)
                        if r is not None:
                            out_tracks.append((o, [r]))
            for v in self.views_of(x):
                for o, (idx, kept) in zip(outs, pieces):
                    if kept:
                        whole = idx == list(range(size))
                        axes = tuple(ax if (i != dim or whole) else None for i, ax in enumerate(v.axes))
                    else:
                        axes = tuple(ax for i, ax in enumerate(v.axes) if i != dim)
                    out_views.append((o, [_View(v.param, axes)]))
            return

        if name == "index" and isinstance(x, torch.Tensor) and outs:
            self._index(x, b.get("indices") or [], outs[0], handled, out_tracks, out_views)
            return

        if (name in _ADD_LIKE or name in _SCALE_LIKE) and outs:
            self._binary(name, x, b.get("other"), outs[0], handled, out_tracks)
            return

        if name in _MATMUL and outs:
            self._matmul(name, b, args, outs[0], out_tracks)
            return

    def _propagate(self, x, o, amap, handled, out_tracks) -> None:
        new = []
        for tr in self.tracks_of(x):
            r = tr.remap(amap)
            if r is not None:
                new.append(r)
                handled.add(tr.root)
        out_tracks.append((o, new))

    def _index(self, x, indices, o, handled, out_tracks, out_views) -> None:
        import torch

        pos = [i for i, t in enumerate(indices) if t is not None]
        if not pos or any(indices[i].dtype in (torch.bool, torch.uint8) for i in pos):
            return
        bshape = torch.broadcast_shapes(*(tuple(indices[i].shape) for i in pos))
        nb = len(bshape)
        rest = [a for a in range(x.dim()) if a not in pos]
        if pos == list(range(pos[0], pos[-1] + 1)):
            amap = {a: (a if a < pos[0] else a - len(pos) + nb) for a in rest}
        else:
            amap = {a: nb + k for k, a in enumerate(rest)}
        if len(pos) == 1 and indices[pos[0]].dim() == 1:  # x[..., [i, j]] on the followed axis: a cut too
            for tr in self.tracks_of(x):
                if pos[0] in tr.axes():
                    size = int(x.shape[pos[0]])
                    self.cut(tr, pos[0], [int(i) % size for i in indices[pos[0]].tolist()], x, o)
                    handled.add(tr.root)
        self._propagate(x, o, amap, handled, out_tracks)
        views = []
        for v in self.views_of(x):
            axes: list[int | None] = [None] * o.dim()
            for a, na in amap.items():
                axes[na] = v.axes[a]
            views.append(_View(v.param, tuple(axes)))
        out_views.append((o, views))

    def _binary(self, name, x, y, o, handled, out_tracks) -> None:
        import torch

        operands = [t for t in (x, y) if isinstance(t, torch.Tensor)]
        new: list[_Track] = []
        add_like = name in _ADD_LIKE
        for t in operands:
            shift = o.dim() - t.dim()
            others = [u for u in operands if u is not t]
            for tr in self.tracks_of(t):
                ok = True
                if not add_like:  # a scale: every other operand must be broadcast along the followed axes
                    for a, _ in tr.factors:
                        oa = a + shift
                        for u in others:
                            ua = oa - (o.dim() - u.dim())
                            if ua >= 0 and int(u.shape[ua]) != 1:
                                ok = False
                if ok:
                    new.append(_Track(tr.root, tuple((a + shift, s) for a, s in tr.factors)))
                    handled.add(tr.root)
        if add_like and len(operands) == 2:  # a bias added to a followed matmul output starts a root of its own
            followed = {tr.factors[0][0] for tr in new if len(tr.factors) == 1}
            for t in operands:
                shift = o.dim() - t.dim()
                for v in self.views_of(t):
                    for va, pa in enumerate(v.axes):
                        if pa is not None and va + shift in followed and int(t.shape[va]) > 1:
                            r = self.start(v, va, o, va + shift)
                            if r is not None:
                                new.append(r)
        out_tracks.append((o, new))

    def _matmul(self, name, b, args, o, out_tracks) -> None:
        # (operand, operand axis, out axis) pairs that a weight's output axis becomes
        pairs: list[tuple[Any, int, int]] = []
        bias = None
        if name in ("mm", "addmm"):
            a_, b_ = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
            pairs = [(a_, 0, 0), (b_, 1, 1)]
            bias = args[0] if name == "addmm" else None
        elif name in ("bmm", "baddbmm"):
            a_, b_ = (args[1], args[2]) if name == "baddbmm" else (args[0], args[1])
            pairs = [(a_, 1, 1), (b_, 2, 2)]
            bias = args[0] if name == "baddbmm" else None
        elif name == "matmul":
            a_, b_ = args[0], args[1]
            if b_.dim() >= 2:
                pairs.append((b_, b_.dim() - 1, o.dim() - 1))
            if a_.dim() >= 2:
                pairs.append((a_, a_.dim() - 2, o.dim() - (2 if b_.dim() >= 2 else 1)))
        elif name == "linear":
            pairs = [(args[1], 0, o.dim() - 1)]
            bias = args[2] if len(args) > 2 else b.get("bias")
        elif name in ("_grouped_mm", "grouped_mm"):
            a_, b_ = args[0], args[1]
            if b_.dim() == 3 and a_.dim() == 2:
                pairs = [(b_, 2, 1)]
        new: list[_Track] = []
        for t, ta, oa in pairs:
            for v in self.views_of(t):
                r = self.start(v, ta, o, oa)
                if r is not None:
                    new.append(r)
        if bias is not None and hasattr(bias, "dim") and bias.dim() >= 1 and new:
            oa = o.dim() - 1
            for v in self.views_of(bias):
                if int(bias.shape[-1]) == int(o.shape[oa]):
                    r = self.start(v, bias.dim() - 1, o, oa)
                    if r is not None:
                        new.append(r)
        out_tracks.append((o, new))

    # -- the result --
    def layouts(self) -> dict[str, dict]:
        found: dict[str, set] = {}
        spoiled: set[str] = set()
        for k, root in enumerate(self.roots):
            parts = list(self.parts.get(k, {}).values())
            if k in self.other or k in self.rejoined:
                spoiled.add(root.param)
                continue
            if not parts:
                continue
            got = _layout_of(parts) if len(parts) >= 2 else None
            if got is None:
                spoiled.add(root.param)
                continue
            found.setdefault(root.param, set()).add((root.paxis, got[0], tuple(got[1])))
        out = {}
        for param, layouts in found.items():
            if param in spoiled or len(layouts) != 1:
                continue
            axis, rounds, blocks = next(iter(layouts))
            out[param] = {"axis": int(axis), "rounds": int(rounds), "blocks": [int(x) for x in blocks]}
        return out


def fused_layouts_from_module(model, run: Callable[[], Any], names: dict[str, str] | None = None) -> dict[str, dict]:
    """Run `run()` (a forward of `model`) under a dispatch mode; for each parameter whose output axis the code cuts
    into >= 2 parts: `{name: {"axis": a, "rounds": R, "blocks": [...]}}` (see the module docstring). `names` maps
    the module's parameter names to the names to report (default: the module's own)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    params: dict[int, tuple[Any, str]] = {}
    for n, p in model.named_parameters(remove_duplicate=True):
        params[id(p)] = (p, n)
    tracer = _Tracer(params)

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            tracer.observe(func, args, kwargs, out)
            return out

    with _Mode():
        run()
    found = tracer.layouts()
    names = names or {}
    return {names.get(n, n): v for n, v in sorted(found.items())}


# --- HF models -------------------------------------------------------------------------------------------------------

def _config_object(config: Any, label: str):
    from transformers import PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    if not isinstance(config, dict):
        raise CodeLayoutError(f"expected an HF config (dict or PretrainedConfig), got {type(config).__name__}",
                              file=label)
    from ckptmap.trees.hf_config import build_config, reconcile, unwrap_config

    cfg, _notes = reconcile(unwrap_config(config, label))
    return build_config(cfg, label)


def _label_of(config: Any) -> str:
    if isinstance(config, dict):
        inner = config.get("hf_config") if isinstance(config.get("hf_config"), dict) else config
        return f"hf config {inner.get('model_type') or inner.get('architectures') or '?'}"
    return f"hf config {getattr(config, 'model_type', '') or type(config).__name__}"


def _checkpoint_name_map(model, config, text_part_only: bool) -> dict[str, str]:
    """module parameter name -> the checkpoint name the `hf:` reader gives it (where that is one tensor of the same
    shape; otherwise the module name stays)."""
    from ckptmap.trees.hf import _saved_name, build_meta_model, quiet_transformers
    from ckptmap.trees.hf_models import checkpoint_names, rename_into

    shapes, _aliases = checkpoint_names(model)
    mod_shapes = {n: tuple(int(d) for d in p.shape) for n, p in model.named_parameters()}
    names: dict[str, str] = {}
    for n, p in model.named_parameters():
        with quiet_transformers():
            saved = _saved_name(model, n, p)
        names[n] = saved if shapes.get(saved) == mod_shapes[n] else n
    if text_part_only:
        from ckptmap.errors import TreeError

        try:
            meta = build_meta_model(config, file="")
        except TreeError:
            return names
        outer_shapes, outer_aliases = checkpoint_names(meta)
        renamed = rename_into(sorted(set(shapes) | set(_aliases)), set(outer_shapes) | set(outer_aliases))
        if renamed:
            # the prefix each top-level module took, for module-only names (fused experts) as well
            prefix = {}
            for old, new in renamed.items():
                top, _, rest = old.partition(".")
                prefix[top] = new[:len(new) - len(rest) - 1] if rest else new
            for n, v in names.items():
                if v in renamed:
                    names[n] = renamed[v]
                else:
                    top, _, rest = v.partition(".")
                    if top in prefix and rest:
                        names[n] = f"{prefix[top]}.{rest}"
    return names


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _builders(cfg, build_cfg, text_only: bool):
    """(how to build, the config the built model's names relate to, True when it is a composite's text part)
    candidates, in order: verify's HF runner's causal LM, then the class the `hf:` reader builds (a composite
    whose decoder has no causal-LM class of its own: Qwen3-VL, Qwen3-Omni)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ckptmap.trees.hf import choose_model_class

    kwargs = {"dtype": torch.float32, "attn_implementation": "eager", "experts_implementation": "eager"}
    yield (lambda: AutoModelForCausalLM.from_config(build_cfg, **kwargs)), text_only
    if build_cfg is cfg and not text_only:
        cls = choose_model_class(cfg, "")
        yield (lambda: cls._from_config(cfg, **kwargs)), False


def _forward_target(model):
    """The module to run: the model, or where its class has no forward of its own (Qwen3-Omni's wrapper) its
    first sub-model that has one (the thinker)."""
    from torch import nn
    from transformers import PreTrainedModel

    if type(model).forward is not nn.Module.forward:
        return model
    for child in model.children():
        if isinstance(child, PreTrainedModel) and type(child).forward is not nn.Module.forward:
            return child
    return model


def _fused_layouts_hf(config: Any, *, max_params: int, label: str, seq: int = 8) -> dict[str, dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ckptmap.trees.hf import quiet_transformers
    from ckptmap.trees.hf_models import causal_lm_config

    cfg = _config_object(config, label)
    build_cfg, text_only = causal_lm_config(cfg)

    # shapes first (meta device, no weight memory): refuse a model too large to trace
    failures, chosen = [], None
    for make, part_only in _builders(cfg, build_cfg, text_only):
        try:
            with quiet_transformers(), torch.device("meta"):
                meta = make()
        except Exception as e:  # model __init__ code fails on inconsistent configs in many ways
            failures.append(_one_line(e))
            continue
        chosen = (make, part_only, sum(p.numel() for p in meta.parameters()))
        del meta
        break
    if chosen is None:
        raise CodeLayoutError("transformers cannot build a model from this config: " + "; ".join(failures), file=label)
    make, text_only, n_params = chosen
    if n_params > max_params:
        raise ModelTooLarge(f"the model has {n_params:,} parameters, more than max_params={max_params:,}: "
                              "trace a shrunk config (fewer layers, smaller sizes)", file=label)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and the cores are shared
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                with quiet_transformers():
                    model = make().eval()
            except Exception as e:  # model __init__ code fails on inconsistent configs in many ways
                raise CodeLayoutError(f"transformers cannot build a model from this config: {_one_line(e)}",
                                      file=label) from None
            text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
            vocab = int(getattr(text_cfg, "vocab_size", 0) or 2)
            ids = torch.randint(0, vocab, (1, seq))

            target = _forward_target(model)

            def run():
                with torch.no_grad(), quiet_transformers():
                    target(input_ids=ids, use_cache=False)

            try:
                found = fused_layouts_from_module(model, run)
            except Exception as e:  # model code raises anything on configs it does not expect
                raise CodeLayoutError(f"the traced forward of {type(model).__name__} failed: {_one_line(e)}",
                                      file=label) from None
    finally:
        torch.set_num_threads(threads)
    names = _checkpoint_name_map(model, cfg, text_only)
    return {names.get(n, n): v for n, v in sorted(found.items())}


def fused_layouts_hf(config: dict | Any, *, max_params: int = DEFAULT_MAX_PARAMS) -> dict[str, dict]:
    """Build the HF causal LM of `config` (a config.json dict, the fixtures' `{"hf_config": ...}` wrapper, or a
    PretrainedConfig) on the CPU with random weights, trace one forward on 8 tokens and return the fused layouts
    keyed by checkpoint name (see the module docstring). Refuses (CodeLayoutError) a model of more than
    `max_params` parameters."""
    return _fused_layouts_hf(config, max_params=max_params, label=_label_of(config))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(prog="python -m ckptmap.trees.code_layout_torch",
                                 description="Print the fused-parameter layouts an HF model's forward code shows.")
    ap.add_argument("config", help="an HF config.json (or a directory holding one, or a fixture wrapping one)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (dotted keys reach sub-configs)")
    ap.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS)
    ns = ap.parse_args(argv)
    try:
        from ckptmap.trees.hf_config import config_for_file
        from ckptmap.trees.spec import parse_overrides

        _raw, overrides = parse_overrides(ns.overrides, ns.config)
        cfg, _notes, path = config_for_file(ns.config, overrides)
        found = _fused_layouts_hf(cfg, max_params=ns.max_params, label=path)
    except CkptmapError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in found.items()]
    print("{\n" + ",\n".join(lines) + "\n}" if lines else "{}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
