"""Property tests of the transforms algebra: every structural op inverts exactly, its shape() agrees with
apply(), it survives a JSON round trip, and its to_code() computes what apply() computes."""

import json

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptmap.transforms import (Cast, Chain, Concat, ExpandDims, Identity, Offset, Parallel, Pad, Reshape, RopePermute,
                                Scale, ShapeMismatch, Split, Squeeze, TransformError, Transpose, Truncate,
                                Unstack, compile_op, function_source, op_from_json)

sizes = st.integers(1, 4)


@st.composite
def shapes(draw, min_dims=1, max_dims=4):
    return tuple(draw(st.lists(sizes, min_size=min_dims, max_size=max_dims)))


def arange(shape, dtype=np.float32):
    return (np.arange(int(np.prod(shape))) + 1).astype(dtype).reshape(shape)


@st.composite
def one_input_op(draw, shape):
    """A random structural op that accepts one array of `shape`."""
    nd = len(shape)
    if nd == 0:  # a scalar, e.g. after unstacking a 1-d array
        return draw(st.sampled_from([Identity(), ExpandDims(0), ExpandDims(-1), Reshape((), (1, 1))]))
    kind = draw(st.sampled_from(["transpose", "reshape", "expand", "squeeze", "pad", "truncate", "split",
                                 "unstack", "identity"]))
    axis = draw(st.integers(-nd, nd - 1))
    if kind == "transpose":
        return Transpose(tuple(draw(st.permutations(range(nd)))))
    if kind == "reshape":
        flat = int(np.prod(shape))
        if flat == 1 and draw(st.booleans()):
            return Reshape(shape, ())
        divisors = [d for d in range(1, flat + 1) if flat % d == 0]
        d = draw(st.sampled_from(divisors))
        return Reshape(shape, (d, flat // d))
    if kind == "expand":
        return ExpandDims(draw(st.integers(-nd - 1, nd)))
    if kind == "squeeze" and 1 in shape:
        return Squeeze(shape.index(1))
    if kind == "pad":
        return Pad(axis, draw(st.integers(0, 2)), draw(st.integers(0, 2)), draw(st.sampled_from([0, -1.5])))
    if kind == "truncate" and shape[axis] > 1:
        n = shape[axis]
        start = draw(st.integers(0, n - 1))
        stop = draw(st.integers(start + 1, n))
        form = draw(st.sampled_from(["positive", "negative", "none"]))
        if form == "none" and stop == n:
            return Truncate(axis, start, None)
        if form == "negative" and stop < n:
            return Truncate(axis, start, stop - n)
        return Truncate(axis, start, stop, orig=n)
    if kind == "split" and shape[axis] > 1:
        n = shape[axis]
        cut = draw(st.integers(1, n - 1))
        return Split(axis, (cut, n - cut))
    if kind == "unstack":
        return Unstack(axis, shape[axis])
    return Identity()


@st.composite
def interleaved_split(draw):
    """An interleaved split and a shape it fits: R rounds of per-part blocks along one axis."""
    rounds = draw(st.integers(1, 3))
    blocks = tuple(draw(st.lists(st.integers(1, 3), min_size=2, max_size=3)))
    shape = list(draw(shapes(1, 3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    shape[axis] = rounds * sum(blocks)
    block = blocks[0] if len(set(blocks)) == 1 and draw(st.booleans()) else blocks
    return Split(axis, tuple(rounds * b for b in blocks), True, block), tuple(shape)


@st.composite
def op_and_inputs(draw):
    """(op, input arrays): single structural ops, interleaved splits, concats/stacks, chains and parallels."""
    form = draw(st.sampled_from(["one", "one", "interleaved", "concat", "stack", "chain", "parallel"]))
    if form == "interleaved":
        op, shape = draw(interleaved_split())
        return op, (arange(shape),)
    if form in ("concat", "stack"):
        split = draw(st.sampled_from(["split", "interleaved"]))
        if split == "interleaved":
            op, shape = draw(interleaved_split())
        else:
            shape = draw(shapes())
            op = draw(one_input_op(shape))
            if not isinstance(op, (Split, Unstack)):
                op = Unstack(0, shape[0])
        if form == "stack" and not isinstance(op, Unstack):
            op = Unstack(0, shape[0])
        parts = op.apply((arange(shape),))
        return op.inverse(), parts
    shape = draw(shapes())
    if form == "one":
        return draw(one_input_op(shape)), (arange(shape),)
    if form == "chain":
        ops, cur = [], (shape,)
        for _ in range(draw(st.integers(1, 3))):
            if len(cur) != 1:
                break
            op = draw(one_input_op(cur[0]))
            ops.append(op)
            cur = op.shape(cur)
        return Chain(ops), (arange(shape),)
    second = draw(shapes())
    branches = (draw(one_input_op(shape)), draw(one_input_op(second)))
    return Parallel(branches), (arange(shape), arange(second))


def drops_data(op) -> bool:
    if isinstance(op, Chain):
        return any(drops_data(o) for o in op.ops)
    if isinstance(op, Parallel):
        return any(drops_data(b) for b in op.branches)
    return isinstance(op, Truncate)


def assert_same_arrays(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape and np.array_equal(g, w)


@settings(max_examples=300, deadline=None)
@given(op_and_inputs())
def test_structural_ops_invert_exactly_and_agree_with_their_shapes(case):
    op, xs = case
    ys = op.apply(xs)
    assert op.shape(tuple(x.shape for x in xs)) == tuple(y.shape for y in ys)
    if drops_data(op):  # truncation loses what it cuts: the exact identity holds the other way round
        assert_same_arrays(op.apply(op.inverse().apply(ys)), ys)
    else:
        assert_same_arrays(op.inverse().apply(ys), xs)


@settings(max_examples=300, deadline=None)
@given(op_and_inputs())
def test_json_round_trip_gives_an_equal_hashable_op(case):
    op, _ = case
    again = op_from_json(json.loads(json.dumps(op.to_json())))
    assert again == op and hash(again) == hash(op)
    assert again.to_json()["op"] == op.op_name


@settings(max_examples=300, deadline=None)
@given(op_and_inputs())
def test_to_code_computes_what_apply_computes(case):
    op, xs = case
    names = [f"a{i}" for i in range(len(xs))]
    exprs = op.to_code(names)
    env = {"np": np, **dict(zip(names, xs))}
    got = [eval(e, env) for e in exprs]  # noqa: S307 - our own generated expressions
    want = op.apply(xs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


@settings(max_examples=100, deadline=None)
@given(op_and_inputs())
def test_ops_accept_bfloat16_arrays(case):
    op, xs = case
    xs = tuple(x.astype(ml_dtypes.bfloat16) for x in xs)
    ys = op.apply(xs)
    assert all(y.dtype == ml_dtypes.bfloat16 for y in ys)
    if not drops_data(op):
        assert_same_arrays(op.inverse().apply(ys), xs)


def test_interleaved_split_of_two_equal_parts_takes_even_and_odd_elements():
    x = arange((2, 8))
    even, odd = Split(-1, (4, 4), interleave=True).apply((x,))
    assert np.array_equal(even, x[..., ::2]) and np.array_equal(odd, x[..., 1::2])
    assert Split(-1, (4, 4), interleave=True).to_code(["w"]) == ["w[..., 0::2]", "w[..., 1::2]"]


def test_interleaved_split_with_per_part_blocks_reads_qkv_fused_per_group():
    # 2 kv groups, each [q q | k | v] with head_dim 1: rows 0-3 are group 0, rows 4-7 group 1
    x = np.array([10, 11, 20, 30, 12, 13, 21, 31])
    q, k, v = Split(0, (4, 2, 2), interleave=True, block=(2, 1, 1)).apply((x,))
    assert q.tolist() == [10, 11, 12, 13] and k.tolist() == [20, 21] and v.tolist() == [30, 31]


def test_interleaved_split_with_block_two_deals_pairs():
    x = np.arange(8)
    a, b = Split(0, (4, 4), interleave=True, block=2).apply((x,))
    assert a.tolist() == [0, 1, 4, 5] and b.tolist() == [2, 3, 6, 7]


def test_chain_flattens_nested_chains_and_drops_identities():
    c = Chain([Chain([Transpose((1, 0)), Identity()]), Chain([]), Reshape((3, 2), (6,))])
    assert c.ops == (Transpose((1, 0)), Reshape((3, 2), (6,)))
    assert Chain([]).apply((np.ones(3),))[0].tolist() == [1, 1, 1]
    assert Chain([]).cost == 0 and Identity().cost == 0
    assert c.inverse().ops == (Reshape((6,), (3, 2)), Transpose((1, 0)))


def test_parallel_hands_each_branch_its_own_inputs():
    par = Parallel([Transpose((1, 0)), Concat(0, (1, 2)), Chain([])])
    assert par.n_in == 4
    outs = par.apply((arange((2, 3)), arange((1, 2)), arange((2, 2)), arange((5,))))
    assert [o.shape for o in outs] == [(3, 2), (3, 2), (5,)]
    assert par.inverse().shape(((3, 2), (3, 2), (5,))) == ((2, 3), (1, 2), (2, 2), (5,))


def test_shape_mismatch_is_a_value_error_with_a_clear_message():
    with pytest.raises(ShapeMismatch, match=r"reshape\[6, 4\]->\[24\] got shape \(4, 6\)"):
        Reshape((6, 4), (24,)).shape(((4, 6),))
    with pytest.raises(ValueError, match="axis 0 of shape \\(5, 2\\) is 5, expected 6"):
        Split(0, (3, 3)).apply((np.zeros((5, 2)),))
    with pytest.raises(ShapeMismatch, match="takes 2 array"):
        Concat(0, (1, 1)).shape(((1,),))


def test_bad_parameters_and_bad_json_raise_transform_errors():
    with pytest.raises(TransformError, match="not a permutation"):
        Transpose((0, 0))
    with pytest.raises(TransformError, match="element counts differ"):
        Reshape((2, 3), (5,))
    with pytest.raises(TransformError, match="unequal rounds"):
        Split(0, (4, 2), interleave=True)
    with pytest.raises(TransformError, match="unknown op 'frobnicate'"):
        op_from_json({"op": "frobnicate"})
    with pytest.raises(TransformError, match="no field"):
        op_from_json({"op": "transpose", "perm": [1, 0], "axes": 3})


def test_truncate_inverts_to_the_padding_it_removes():
    t = Truncate(0, 0, 256, orig=320)
    assert t.inverse() == Pad(0, 0, 64)
    assert Pad(0, 0, 64).inverse().shape(((320, 8),)) == ((256, 8),)
    with pytest.raises(TransformError, match="without `orig`"):
        Truncate(0, 0, 256).inverse()


def test_value_ops_are_marked_and_work_per_array():
    for op in (RopePermute("half_to_interleaved"), Scale("2", 2.0), Offset(1.0), Cast("bfloat16", "float32")):
        assert op.is_value_op and op.n_in is None
    for op in (Transpose((1, 0)), Split(0, (1, 1)), Chain([Scale("2", 2.0)])):
        assert not op.is_value_op
    a, b = Offset(1.0).apply((np.zeros(2, np.float32), np.ones(3, np.float32)))
    assert a.tolist() == [1, 1] and b.tolist() == [2, 2, 2]


def test_value_ops_survive_json_and_code_round_trips():
    x = arange((3, 4))
    for op in (RopePermute("interleaved_to_half"), Scale.from_expr("sqrt(hidden)", {"hidden": 2560}, "bfloat16"),
               Offset(-1.0), Cast("bfloat16", "float32")):
        again = op_from_json(json.loads(json.dumps(op.to_json())))
        assert again == op
        code = op.to_code(["w"])[0]
        assert np.array_equal(eval(code, {"np": np, "w": x}), op.apply((x,))[0])  # noqa: S307


def test_function_source_writes_a_named_numpy_function():
    op = Chain([Split(0, (2, 2)), Parallel([Transpose((1, 0)), Chain([])])])
    src = function_source(op, "split_gate_up", ["w"])
    assert src.startswith("def split_gate_up(w):\n")
    assert "return (w[0:2].transpose(1, 0), w[2:4])" in src
    gate, up = compile_op(op)(arange((4, 3)))
    assert gate.shape == (3, 2) and up.shape == (2, 3)


def test_costs_prefer_short_conventional_chains():
    assert Transpose((0, 1)).cost == 0
    assert 0 < Reshape((4, 6), (24,)).cost < Transpose((1, 0)).cost
    assert Transpose((1, 0)).cost < Transpose((2, 1, 0)).cost
    assert Transpose((1, 2, 3, 0)).cost == Transpose((1, 0)).cost  # a block of axes moving together is one swap
    assert Split(0, (2, 2)).cost < Split(0, (2, 2), interleave=True).cost < Split(0, (4, 4), True, 2).cost
