"""ckptmap.maxtext.code_layout.fused_layouts_from_jaxpr on small hand-written jax functions (no MaxText)."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from ckptmap.maxtext.code_layout import fused_layouts_from_jaxpr


def layouts(fn, *shapes, names=None):
    """Trace fn on zeros of the given shapes; every input is a parameter named p0, p1, ... unless `names`."""
    args = [jnp.zeros(s, jnp.float32) for s in shapes]
    closed = jax.make_jaxpr(fn)(*args)
    names = names if names is not None else [f"p{i}" for i in range(len(shapes))]
    return fused_layouts_from_jaxpr(closed, names, [tuple(s) for s in shapes[:len(names)]])


X = (2, 5, 4)  # activations [batch, seq, emb] (the last input, not a parameter)


def test_dense_reshape_then_split_is_grouped_per_head():
    def f(w, x):
        y = x @ w  # [B, S, 24]
        q, k, v = jnp.split(y.reshape(2, 5, 3, 8), [2, 4], axis=3)
        return q.sum() + k.sum() + v.sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {"w": {"axis": 1, "rounds": 3, "blocks": [2, 2, 4]}}


def test_contiguous_split_is_one_round():
    def f(w, x):
        a, b = jnp.split(x @ w, [8], axis=-1)
        return a.sum() * b.sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {"w": {"axis": 1, "rounds": 1, "blocks": [8, 16]}}


def test_contiguous_slices_that_tile_the_axis_are_a_cut():
    def f(w, x):
        y = x @ w
        return y[..., :8].sum() + y[..., 8:20].sum() + y[..., 20:].sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {"w": {"axis": 1, "rounds": 1, "blocks": [8, 12, 4]}}


def test_slices_that_do_not_tile_the_axis_are_no_cut():
    def f(w, x):
        y = x @ w
        return y[..., :8].sum() + y[..., 10:].sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {}


def test_strided_slices_are_an_interleave():
    def f(w, x):
        y = x @ w
        return (y[..., ::2] * y[..., 1::2]).sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {"w": {"axis": 1, "rounds": 12, "blocks": [1, 1]}}


def test_strided_slices_after_a_head_reshape_interleave_within_each_head():
    def f(w, x):
        y = (x @ w).reshape(2, 5, 3, 8)
        return (y[..., 0::2] - y[..., 1::2]).sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {"w": {"axis": 1, "rounds": 12, "blocks": [1, 1]}}


def test_reshape_without_a_cut_gives_nothing():
    def f(w, x):
        return jnp.tanh((x @ w).reshape(2, 5, 3, 8)).sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {}


def test_split_of_the_outer_factor_of_a_reshape_is_contiguous():
    def f(w, x):
        y = (x @ w).reshape(2, 5, 3, 8)
        a, b = jnp.split(y, [1], axis=2)
        return a.sum() + b.sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {"w": {"axis": 1, "rounds": 1, "blocks": [8, 16]}}


def test_a_head_kernel_cut_on_its_head_dim_through_bias_norm_and_jit():
    @jax.jit
    def act(y):
        return jax.nn.silu(y)

    def f(w, b, x):
        y = jnp.einsum("bse,ehd->bshd", x, w) + b  # [B, S, 2, 12]
        y = jax.checkpoint(act)(y)
        y = y / jnp.sqrt((y * y).mean(axis=1, keepdims=True))
        q, g = jnp.split(y, 2, axis=-1)
        return (q * jax.nn.sigmoid(g)).sum()

    assert layouts(f, (4, 2, 12), (2, 12), X, names=["w", "b"]) == {
        "w": {"axis": 2, "rounds": 1, "blocks": [6, 6]},
        "b": {"axis": 1, "rounds": 1, "blocks": [6, 6]},
    }


def test_the_stacked_axis_of_a_scanned_parameter_is_skipped():
    def f(w, x):  # w [emb, layers, 24]: MaxText's param_scan_axis=1
        def body(h, wl):
            a, b = jnp.split((h @ wl).reshape(2, 5, 2, 12), [4], axis=3)
            return h + a.sum() + b.sum(), None

        h, _ = jax.lax.scan(body, x, jnp.moveaxis(w, 1, 0))
        return h.sum()

    assert layouts(f, (4, 3, 24), X, names=["w"]) == {"w": {"axis": 2, "rounds": 2, "blocks": [4, 8]}}


def test_a_parameter_passed_through_a_scan_carry_is_followed():
    def f(w, x):  # NNX hands a layer's parameters through a scan as carries, unchanged
        def body(carry, _):
            h, wl = carry
            a, b = jnp.split(h @ wl, [6], axis=-1)
            return (h + a.sum() + b.sum(), wl), None

        (h, _), _ = jax.lax.scan(body, (x, w), None, length=2)
        return h.sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {"w": {"axis": 1, "rounds": 1, "blocks": [6, 18]}}


def test_a_carry_that_changes_is_not_taken_for_its_first_value_after_the_loop():
    def f(w, x):
        def body(carry, _):
            return carry @ jnp.ones((24, 24)), None  # the carry's axis is contracted: not the parameter's any more

        y, _ = jax.lax.scan(body, x @ w, None, length=2)
        a, b = jnp.split(y, [6], axis=-1)
        return a.sum() + b.sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {}


def test_a_while_body_constant_is_followed():
    def f(w, x):
        def body(c):
            i, acc = c
            a, b = jnp.split(x @ w, [16], axis=-1)
            return i + 1, acc + a.sum() - b.sum()

        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, 0.0))[1]

    assert layouts(f, (4, 24), X, names=["w"]) == {"w": {"axis": 1, "rounds": 1, "blocks": [16, 8]}}


def test_depthwise_conv_kernel_channels_follow_to_the_output():
    def f(k, x):  # k [kernel, 1, channels], x [B, S, channels]
        y = jax.lax.conv_general_dilated(x, k, window_strides=(1,), padding=((2, 0),),
                                         dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=12)
        a, b, c = jnp.split(y, [4, 8], axis=2)
        return a.sum() + b.sum() + c.sum()

    assert layouts(f, (3, 1, 12), (2, 5, 12), names=["k"]) == {"k": {"axis": 2, "rounds": 1, "blocks": [4, 4, 4]}}


def test_unstacking_an_axis_one_index_at_a_time_is_not_a_layout():
    def f(w, x):  # an expert loop over w [experts, emb, mlp]
        return sum((x @ w[e]).sum() for e in range(w.shape[0]))

    assert layouts(f, (3, 4, 8), X, names=["w"]) == {}


def test_a_contracted_axis_stops_the_track():
    def f(w, x):
        y = x @ w  # [B, S, 24]
        z = y @ jnp.ones((24, 6))  # the 24 axis is contracted
        a, b = jnp.split(z, 2, axis=-1)
        return a.sum() + b.sum()

    assert layouts(f, (4, 24), X, names=["w"]) == {}


def test_inputs_past_the_names_and_misshapen_ones_are_not_parameters():
    def f(w, v, x):
        a, b = jnp.split(x @ w, 2, axis=-1)
        c, d = jnp.split(x @ v, 2, axis=-1)
        return a.sum() + b.sum() + c.sum() + d.sum()

    closed = jax.make_jaxpr(f)(jnp.zeros((4, 24)), jnp.zeros((4, 8)), jnp.zeros(X))
    assert fused_layouts_from_jaxpr(closed, ["w", "v"], {"w": (4, 24), "v": (4, 9)}) == {
        "w": {"axis": 1, "rounds": 1, "blocks": [12, 12]}}
    assert fused_layouts_from_jaxpr(closed, ["w"], None) == {"w": {"axis": 1, "rounds": 1, "blocks": [12, 12]}}
    with pytest.raises(ValueError):
        fused_layouts_from_jaxpr(closed, ["a", "b", "c", "d"], None)


def test_qwen_gated_delta_net_projection_layout():
    """The qwen3.5 / qwen3-next in_proj_qkvz / in_proj_ba code, at the fixture sizes (Hk=2, Hv=4, Dk=Dv=16)."""
    hk, hv, dk, dv, emb = 2, 4, 16, 16, 8
    vpk = hv // hk

    def f(wqkvz, wba, x):
        b, s = x.shape[:2]
        qkvz = (x @ wqkvz).reshape(b, s, hk, 2 * dk + 2 * vpk * dv)
        q, k, v, z = jnp.split(qkvz, [dk, 2 * dk, 2 * dk + vpk * dv], axis=3)
        ba = (x @ wba).reshape(b, s, hk, 2 * vpk)
        bb, a = jnp.split(ba, [vpk], axis=3)
        return q.sum() + k.sum() + v.reshape(b, s, hv, dv).sum() + z.sum() + bb.sum() * a.sum()

    assert layouts(f, (emb, 2 * hk * dk + 2 * hv * dv), (emb, 2 * hv), (2, 5, emb), names=["qkvz", "ba"]) == {
        "qkvz": {"axis": 1, "rounds": 2, "blocks": [16, 16, 32, 32]},
        "ba": {"axis": 1, "rounds": 2, "blocks": [2, 2]},
    }
