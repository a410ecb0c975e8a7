"""Fused-axis layouts read off a MaxText model's own code: its jaxpr.

Shapes cannot tell how a fused parameter's axis is laid out. MaxText's qwen3.5 / qwen3-next gated-delta-net
`in_proj_qkvz` kernel [emb, 2*Hk*Dk + 2*Hv*Dv] is grouped per key head: the model reshapes the projection to
[B, S, Hk, 2Dk + 2*VpK*Dv] and splits the last axis into [Dk, Dk, VpK*Dv, VpK*Dv]. Tracing the model's apply on
abstract parameters (`jax.make_jaxpr`, no weights) and following each parameter's axes through the jaxpr finds
such cuts:

- a parameter axis is tracked through the ops that keep a one-to-one index map on it: dot_general (a free or
  batch axis of either operand; a contracted axis stops), a depthwise / plain convolution's feature axis,
  elementwise ops (with size-1 broadcasting), transpose, broadcast_in_dim, squeeze, reductions / slices /
  concatenations / pads along *other* axes, sharding constraints and names, and into the bodies of call-like
  primitives (jit, remat, custom_jvp / custom_vjp, shard_map, cond), scan (consts; xs, whose leading axis is
  the scanned one; carries, keeping what the body hands back on the same axes, e.g. NNX passing a layer's
  parameters through a loop) and while (body consts and carries);
- a reshape that splits the tracked axis into (G, M) (row-major) keeps tracking every factor; the axis of the
  parameter then reads as rounds of blocks: index = r * (M * I) + m * I + i;
- a cut of a tracked axis is a `split` on it, or slices (`slice`, `dynamic_slice` with literal starts) of one
  value that tile it: contiguous ranges, or strided slices [o::s] for o in 0..s-1 (interleave).

A cut that tiles the axis into >= 2 parts becomes a layout `{"axis": a, "rounds": R, "blocks": [b0, ...]}`:
axis `a` of the parameter as stored (size N = R * sum(blocks)) is R rounds of [block_0 | block_1 | ...]. Tracking
stops after the first cut. Cuts that only unstack an axis one index at a time (rounds 1, every block 1: an
expert loop) are not layouts. When one parameter is cut in different ways, the first cut in program order wins.
`gather` is not followed.

`fused_layouts_from_jaxpr` is pure jaxpr analysis (any jax function); `model_fused_layouts` traces a built
`ckptmap.maxtext.backend.MaxTextModel` and names the parameters as its abstract tree does. Run
`python -m ckptmap.maxtext.code_layout MODEL [key=value ...]` to print a model's layouts (through the worker).
"""

from __future__ import annotations

# lazy imports: MaxText, jax and flax exist only in the worker's venv (.venv-maxtext); the client side imports
# this package without them, and the worker's modules load each other only where they run.

import math
import time
from collections.abc import Mapping, Sequence

# (param index, param axis, rounds R, size M of the tracked var axis, inner stride I): param index along
# `param axis` = r * (M * I) + m * I + i for var index m.
Track = tuple

ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "rem", "neg", "sign", "abs", "max", "min", "pow", "integer_pow", "square", "sqrt",
    "rsqrt", "cbrt", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin",
    "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "atan2", "erf", "erfc", "erf_inv", "lgamma",
    "digamma", "floor", "ceil", "round", "nextafter", "is_finite", "not", "and", "or", "xor", "eq", "ne", "lt",
    "le", "gt", "ge", "select_n", "clamp", "convert_element_type", "reduce_precision", "copy", "copy_p",
    "stop_gradient", "real", "imag", "conj", "add_any", "sharding_constraint", "mesh_cast", "reshard", "pvary",
    "name", "checkpoint_name", "tie_in",
})
ONE_TO_ONE = frozenset({"optimization_barrier"})  # n operands -> n results, each result its operand
REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
                        "reduce_xor", "argmax", "argmin"})
CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})
CALL_JAXPR_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _is_var(v) -> bool:
    """A jaxpr variable (not a Literal: literals carry `val`)."""
    return not hasattr(v, "val") and hasattr(v, "aval")


def _shape(v) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(v.aval, "shape", ()))


def _open(j):
    """The open jaxpr (eqns, invars, outvars) of a Jaxpr or ClosedJaxpr (jax 0.10 and 0.12 alike)."""
    while not hasattr(j, "eqns") and hasattr(j, "jaxpr"):
        j = j.jaxpr
    return j


def _is_jaxpr(x) -> bool:
    return hasattr(_open(x), "eqns") if x is not None and not isinstance(x, (str, bytes, int, float)) else False


def _literal_int(v):
    if hasattr(v, "val"):
        try:
            return int(v.val)
        except (TypeError, ValueError):
            return None
    return None


def _as_ints(xs) -> list[int]:
    return [int(x) for x in xs]


class _Analysis:
    def __init__(self, n_params: int):
        self.n_params = n_params
        self.cuts: dict[int, list[tuple[int, dict]]] = {}  # param index -> [(order, layout)]
        self.order = 0
        self._memo: dict = {}

    # ---- cuts --------------------------------------------------------------------------------------------
    def cut(self, track: Track, sizes: list[int], interleave: int = 0) -> None:
        """Record that a tracked axis is cut into `sizes` (contiguous), or into `interleave` strided parts."""
        pidx, paxis, r, m, inner = track
        if interleave:
            if m % interleave:
                return
            layout = {"axis": paxis, "rounds": r * (m // interleave), "blocks": [inner] * interleave}
        else:
            if len(sizes) < 2 or sum(sizes) != m or min(sizes) <= 0:
                return
            layout = {"axis": paxis, "rounds": r, "blocks": [s * inner for s in sizes]}
        if layout["rounds"] == 1 and all(b == 1 for b in layout["blocks"]):
            return  # one index at a time: an unstacked (expert, layer) axis, not a fused one
        self.order += 1
        self.cuts.setdefault(pidx, []).append((self.order, layout))

    def _resolve_slices(self, slices: dict) -> None:
        """Slices of one value along one tracked axis become a cut when together they tile the axis."""
        for (_, track), ranges in slices.items():
            m = track[3]
            ranges = sorted(set(ranges))
            steps = {s for _, _, s in ranges}
            if len(steps) != 1:
                continue
            step = steps.pop()
            if step == 1:
                pos, sizes = 0, []
                for start, stop, _ in ranges:
                    if start != pos:
                        break
                    sizes.append(stop - start)
                    pos = stop
                else:
                    if pos == m:
                        self.cut(track, sizes)
            elif m % step == 0 and [start for start, _, _ in ranges] == list(range(step)) and all(
                    -(-(stop - start) // step) == m // step for start, stop, _ in ranges):
                self.cut(track, [], interleave=step)

    # ---- the walk ----------------------------------------------------------------------------------------
    def run(self, jaxpr, in_tracks: list[frozenset]) -> list[frozenset]:
        """Tracks of each outvar of `jaxpr` given tracks of its invars; records cuts on the way."""
        jaxpr = _open(jaxpr)
        if not any(in_tracks):
            return [frozenset()] * len(jaxpr.outvars)
        key = (id(jaxpr), tuple(in_tracks))
        if key in self._memo:
            return self._memo[key][1]
        env: dict = {}
        for v, t in zip(jaxpr.invars, in_tracks):
            if t and _is_var(v):
                env[v] = _fit(t, _shape(v))
        slices: dict = {}
        for eqn in jaxpr.eqns:
            ins = [env.get(v, frozenset()) if _is_var(v) else frozenset() for v in eqn.invars]
            if not any(ins):
                continue
            outs = self._eqn(eqn, ins, slices)
            for v, t in zip(eqn.outvars, outs):
                if t and _is_var(v) and type(v).__name__ != "DropVar":
                    env[v] = _fit(t, _shape(v))
        self._resolve_slices(slices)
        result = [env.get(v, frozenset()) if _is_var(v) else frozenset() for v in jaxpr.outvars]
        self._memo[key] = (jaxpr, result)  # keep the jaxpr alive so that its id stays unique
        return result

    def _eqn(self, eqn, ins: list[frozenset], slices: dict) -> list[frozenset]:
        name = eqn.primitive.name
        p = eqn.params
        n_out = len(eqn.outvars)
        none = [frozenset()] * n_out
        out_shape = _shape(eqn.outvars[0]) if n_out else ()

        if name in ELEMENTWISE:
            got = set()
            for v, t in zip(eqn.invars, ins):
                shape = _shape(v)
                if len(shape) != len(out_shape):
                    continue
                got.update((a, tr) for a, tr in t if shape[a] == out_shape[a])
            return [frozenset(got)] * n_out
        if name in ONE_TO_ONE:
            return list(ins[:n_out]) + none[len(ins):]
        if name == "transpose":
            perm = list(p["permutation"])
            return [frozenset((perm.index(a), tr) for a, tr in ins[0])]
        if name == "broadcast_in_dim":
            dims = list(p["broadcast_dimensions"])
            return [frozenset((dims[a], tr) for a, tr in ins[0] if out_shape[dims[a]] == tr[3])]
        if name == "squeeze":
            dims = [d % len(_shape(eqn.invars[0])) for d in p["dimensions"]]
            return [frozenset((a - sum(d < a for d in dims), tr) for a, tr in ins[0] if a not in dims)]
        if name == "reshape":
            if p.get("dimensions") is not None:
                return none
            return [_reshape(ins[0], _shape(eqn.invars[0]), out_shape)]
        if name in REDUCTIONS:
            axes = set(_as_ints(p.get("axes", ())))
            return [frozenset((a - sum(d < a for d in axes), tr) for a, tr in ins[0] if a not in axes)] * n_out
        if name in CUMULATIVE:
            return [frozenset((a, tr) for a, tr in ins[0] if a != int(p["axis"]))]
        if name == "rev":
            dims = set(_as_ints(p["dimensions"]))
            return [frozenset((a, tr) for a, tr in ins[0] if a not in dims)]
        if name == "concatenate":
            d = int(p["dimension"])
            return [frozenset((a, tr) for t in ins for a, tr in t if a != d)]
        if name == "pad":
            cfg = p["padding_config"]
            return [frozenset((a, tr) for a, tr in ins[0] if tuple(cfg[a]) == (0, 0, 0))]
        if name == "split":
            axis = int(p["axis"])
            sizes = _as_ints(p["sizes"])
            for a, tr in ins[0]:
                if a == axis:
                    self.cut(tr, sizes)
            kept = frozenset((a, tr) for a, tr in ins[0] if a != axis)
            return [kept] * n_out
        if name == "slice":
            shape = _shape(eqn.invars[0])
            starts = _as_ints(p["start_indices"])
            limits = _as_ints(p["limit_indices"])
            strides = _as_ints(p["strides"]) if p.get("strides") else [1] * len(shape)
            kept = set()
            for a, tr in ins[0]:
                if (starts[a], limits[a], strides[a]) == (0, shape[a], 1):
                    kept.add((a, tr))
                else:
                    slices.setdefault((eqn.invars[0], tr), []).append((starts[a], limits[a], strides[a]))
            return [frozenset(kept)]
        if name == "dynamic_slice":
            shape = _shape(eqn.invars[0])
            sizes = _as_ints(p["slice_sizes"])
            kept = set()
            for a, tr in ins[0]:
                if sizes[a] == shape[a]:
                    kept.add((a, tr))
                else:
                    start = _literal_int(eqn.invars[1 + a])
                    if start is not None:
                        slices.setdefault((eqn.invars[0], tr), []).append((start, start + sizes[a], 1))
            return [frozenset(kept)]
        if name == "dot_general":
            return [_dot_general(p, ins, [_shape(v) for v in eqn.invars[:2]])]
        if name == "conv_general_dilated":
            return [_conv(p, ins, [_shape(v) for v in eqn.invars[:2]], out_shape)]
        if name == "scan":
            return self._scan(eqn, ins)
        if name == "while":
            return self._while(eqn, ins)
        if name == "cond":
            results = [self.run(b, list(ins[1:])) for b in p["branches"]]
            return [frozenset.intersection(*col) if col else frozenset() for col in zip(*results)] or none
        sub = _call_jaxpr(eqn)
        if sub is not None:
            return self.run(sub, list(ins))
        return none

    def _loop(self, body, consts: list[frozenset], carry: list[frozenset], xs: list[frozenset]):
        """Run a loop body (invars consts + carry + xs, outvars carry + ys) until its carry's tracks are stable.

        The first pass sees the carry as it enters (the first iteration: its cuts are real); a carry keeps only
        the tracks that the body hands back on the same axes (a parameter passed through, a residual stream).
        Returns (carry tracks, ys tracks).
        """
        for _ in range(8):
            outs = self.run(body, list(consts) + list(carry) + list(xs))
            stable = [a & b for a, b in zip(carry, outs[:len(carry)])]
            if stable == list(carry):
                break
            carry = stable
        return list(carry), outs[len(carry):]

    def _scan(self, eqn, ins: list[frozenset]) -> list[frozenset]:
        p = eqn.params
        n = len(eqn.invars)
        if "num_consts" in p:
            n_consts, n_carry = int(p["num_consts"]), int(p["num_carry"])
        elif len(parts := _ft_parts(p.get("ft_in"))) == 3 and sum(parts) == n:
            n_consts, n_carry = parts[0], parts[1]  # jax >= 0.11: ft_in = (consts, carry, xs) flat trees
        else:
            return [frozenset()] * len(eqn.outvars)
        xs = [frozenset((a - 1, tr) for a, tr in t if a > 0) for t in ins[n_consts + n_carry:]]
        carry, ys = self._loop(p["jaxpr"], ins[:n_consts], ins[n_consts:n_consts + n_carry], xs)
        return (carry + [frozenset((a + 1, tr) for a, tr in t) for t in ys])[:len(eqn.outvars)]

    def _while(self, eqn, ins: list[frozenset]) -> list[frozenset]:
        p = eqn.params
        nc, nb = int(p["cond_nconsts"]), int(p["body_nconsts"])
        carry, _ = self._loop(p["body_jaxpr"], ins[nc:nc + nb], ins[nc + nb:], [])
        return carry


def _ft_parts(ft) -> list[int]:
    """Leaf counts of the parts of a scan's `ft_in` (a jax FTTuple of flat trees, or a plain tuple)."""
    parts = getattr(ft, "elts", ft)
    try:
        return [len(x) for x in parts]
    except TypeError:
        return []


def _fit(tracks, shape) -> frozenset:
    """Keep the tracks whose axis exists and has the tracked size in `shape` (e.g. a shard_map body's shapes)."""
    return frozenset((a, tr) for a, tr in tracks if a < len(shape) and shape[a] == tr[3])


def _reshape(tracks: frozenset, in_shape, out_shape) -> frozenset:
    """Follow tracked axes through a row-major reshape that keeps them whole or splits them into factors."""
    prefix = [1]
    for d in out_shape:
        prefix.append(prefix[-1] * d)
    out = set()
    for a, (pidx, paxis, r, m, inner) in tracks:
        before = math.prod(in_shape[:a])
        end = before * m
        run = [j for j in range(len(out_shape)) if out_shape[j] != 1 and prefix[j] >= before and prefix[j + 1] <= end]
        dims = [out_shape[j] for j in run]
        if math.prod(dims) != m or not run:
            continue  # merged with other axes or not aligned
        for t, j in enumerate(run):
            out.add((j, (pidx, paxis, r * math.prod(dims[:t]), dims[t], inner * math.prod(dims[t + 1:]))))
    return frozenset(out)


def _dot_general(p, ins, shapes) -> frozenset:
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    lc, rc, lb, rb = _as_ints(lc), _as_ints(rc), _as_ints(lb), _as_ints(rb)
    l_free = [d for d in range(len(shapes[0])) if d not in lc and d not in lb]
    r_free = [d for d in range(len(shapes[1])) if d not in rc and d not in rb]
    out = set()
    for side, t in enumerate(ins[:2]):
        batch, free = (lb, l_free) if side == 0 else (rb, r_free)
        offset = len(lb) + (0 if side == 0 else len(l_free))
        for a, tr in t:
            if a in batch:
                out.add((batch.index(a), tr))
            elif a in free:
                out.add((offset + free.index(a), tr))
    return frozenset(out)


def _conv(p, ins, shapes, out_shape) -> frozenset:
    """A convolution's kernel output-feature axis (and, for a depthwise conv, the input's feature axis) maps to
    the output's feature axis; the input's batch axis to the output's batch axis."""
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = (_as_ints(s) for s in (dn.lhs_spec, dn.rhs_spec, dn.out_spec))
    groups = int(p.get("feature_group_count", 1))
    out = set()
    for a, tr in ins[0]:
        if a == lhs_spec[0] and int(p.get("batch_group_count", 1)) == 1:
            out.add((out_spec[0], tr))
        elif a == lhs_spec[1] and groups == shapes[0][a] == out_shape[out_spec[1]]:
            out.add((out_spec[1], tr))
    for a, tr in ins[1]:
        if a == rhs_spec[0] and int(p.get("batch_group_count", 1)) == 1:
            out.add((out_spec[1], tr))
    return frozenset(out)


def _call_jaxpr(eqn):
    """The body of a call-like primitive (jit, remat, custom_jvp / custom_vjp, shard_map, ...), if it has one
    whose inputs and outputs are the equation's, one to one."""
    for key in CALL_JAXPR_KEYS:
        sub = eqn.params.get(key)
        if sub is not None and _is_jaxpr(sub):
            j = _open(sub)
            if len(j.invars) == len(eqn.invars) and len(j.outvars) == len(eqn.outvars):
                return sub
    return None


def fused_layouts_from_jaxpr(closed_jaxpr, param_names: list[str],
                             param_shapes: Sequence | Mapping | None = None) -> dict[str, dict]:
    """Layouts of fused parameter axes found in a jaxpr: {name: {"axis", "rounds", "blocks"}}.

    `param_names[i]` names the jaxpr's i-th input (further inputs, e.g. tokens, are not parameters; a None name
    skips an input). `param_shapes` (aligned with the names, or name -> shape) is checked against the inputs; an
    input whose shape differs is skipped. Axes are the parameter's own axes as given.
    """
    jaxpr = _open(closed_jaxpr)
    if len(param_names) > len(jaxpr.invars):
        raise ValueError(f"{len(param_names)} parameter names for a jaxpr of {len(jaxpr.invars)} inputs")
    in_tracks = []
    for i, v in enumerate(jaxpr.invars):
        name = param_names[i] if i < len(param_names) else None
        shape = _shape(v)
        if name is not None and param_shapes is not None:
            want = param_shapes[name] if isinstance(param_shapes, Mapping) else param_shapes[i]
            if tuple(int(d) for d in want) != shape:
                name = None
        if name is None:
            in_tracks.append(frozenset())
            continue
        in_tracks.append(frozenset((a, (i, a, 1, d, 1)) for a, d in enumerate(shape) if d > 1))
    analysis = _Analysis(len(param_names))
    analysis.run(jaxpr, in_tracks)
    out = {}
    for pidx, found in sorted(analysis.cuts.items()):
        layout = min(found, key=lambda x: x[0])[1]
        out[param_names[pidx]] = layout
    return out


# ---- MaxText ---------------------------------------------------------------------------------------------
TRACE_TOKENS = (1, 8)  # batch, sequence of the abstract forward pass


def trace_model(model):
    """The jaxpr of a built MaxTextModel's forward pass on abstract parameters (shapes and dtypes only)."""
    import jax
    import jax.numpy as jnp

    structs = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) for _, shape, dtype, _ in model.entries]
    variables = jax.tree_util.tree_unflatten(model._treedef, structs)

    def apply_fn(variables, toks):
        positions = jnp.broadcast_to(jnp.arange(toks.shape[1], dtype=jnp.int32)[None, :], toks.shape)
        with model._context():
            out, _ = model.model.apply(variables, toks, positions, enable_dropout=False, mutable=["intermediates"])
        return out[0] if isinstance(out, tuple) else out

    closed = jax.make_jaxpr(apply_fn)(variables, jax.ShapeDtypeStruct(TRACE_TOKENS, jnp.int32))
    invars = _open(closed).invars
    flat = jax.tree_util.tree_leaves(variables)
    if len(invars) != len(flat) + 1 or any(_shape(v) != tuple(s.shape) for v, s in zip(invars, flat)):
        raise RuntimeError("the traced forward's inputs do not line up with the model's parameters")
    return closed


def model_fused_layouts(model) -> dict[str, dict]:
    """{param name: {"axis", "rounds", "blocks"}} of a built MaxTextModel (names as its abstract tree)."""
    t0 = time.perf_counter()
    closed = trace_model(model)
    t1 = time.perf_counter()
    names = [e[0] for e in model.entries]
    layouts = fused_layouts_from_jaxpr(closed, names, [e[1] for e in model.entries])
    model.timings["layout_trace_s"] = t1 - t0
    model.timings["layout_analysis_s"] = time.perf_counter() - t1
    return layouts


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m ckptmap.maxtext.code_layout",
                                     description="Print the fused-axis layouts MaxText's code gives a model's "
                                                 "parameters, as JSON (through the MaxText worker).")
    parser.add_argument("model", help="MaxText model name, e.g. qwen3.5-35b-a3b")
    parser.add_argument("overrides", nargs="*", help="MaxText key=value overrides")
    parser.add_argument("--timings", action="store_true", help="also print the session's timings to stderr")
    args = parser.parse_args(argv)

    from ckptmap import maxtext

    s = maxtext.session(args.model, args.overrides)
    try:
        layouts = s.fused_layouts()
    except maxtext.MaxTextError as e:
        print(e.one_line(), file=sys.stderr)
        return 1
    lines = [f" {json.dumps(name)}: {json.dumps(layouts[name])}" for name in sorted(layouts)]
    print("{\n" + ",\n".join(lines) + "\n}" if lines else "{}")
    if args.timings:
        print(json.dumps(s.timings, sort_keys=True), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
