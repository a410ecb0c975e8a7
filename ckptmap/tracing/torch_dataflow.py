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

HF models are traced by ckptmap.tracing.hf_layouts (`fused_layouts_hf(config)`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ckptmap.errors import CkptmapError
from ckptmap.tracing.torch_ops import (_ADD_LIKE, _CUT, _EXPAND, _IDENTITY, _MATMUL, _NEUTRAL, _PERMUTE, _RESHAPE,
                                      _SCALE_LIKE, _bind, _cut_pieces, _layout_of, _norm_dim, _packet, _permutation,
                                      _reshape_track, _reshape_view, _Root, _tensors, _Track, _View)

DEFAULT_MAX_PARAMS = 50_000_000


class CodeLayoutError(CkptmapError):
    """The model could not be built or traced to read fused-parameter layouts off its code."""


class ModelTooLarge(CodeLayoutError):
    """The model has more parameters than a CPU trace may build (max_params)."""


# the op classes and axis bookkeeping live in ckptmap.tracing.torch_ops


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
