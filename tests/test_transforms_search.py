"""search_chains finds the layouts checkpoint conversions need, returns every chain shapes cannot rule out, ranks
the conventional one first, and every chain it returns is a valid, invertible op."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptmap.transforms import (Chain, Concat, Pad, Split, Stack, Transpose, Truncate, clear_cache, compile_op,
                                op_length, search_chains)

H, KV, D, E, F, NE = 4, 2, 8, 12, 20, 3
DIMS = {"hidden": E, "heads": H, "kv_heads": KV, "head_dim": D, "mlp": F, "experts": NE}


def seeded(shape, seed=0):
    return np.random.default_rng(seed).integers(-50, 50, size=shape).astype(np.float32)


def find(chains, want, *xs):
    """Index of the first chain whose outputs equal `want` on xs (None if none does)."""
    for i, c in enumerate(chains):
        got = c.apply(tuple(xs))
        if len(got) == len(want) and all(g.shape == w.shape and np.array_equal(g, w) for g, w in zip(got, want)):
            return i
    return None


def test_q_proj_to_query_kernel_is_transpose_then_reshape():
    w = seeded((H * D, E))
    chains = search_chains((H * D, E), (E, H, D), DIMS)
    assert chains[0] == Chain([Transpose((1, 0)), *search_chains((E, H * D), (E, H, D), DIMS)[0].ops])
    assert find(chains, [w.T.reshape(E, H, D)], w) == 0


def test_o_proj_to_out_kernel():
    w = seeded((E, H * D))
    chains = search_chains((E, H * D), (H, D, E), DIMS)
    assert find(chains, [w.T.reshape(H, D, E)], w) == 0


def test_square_matrices_give_identity_and_transpose_identity_first():
    chains = search_chains((E, E), (E, E), DIMS)
    assert [c.describe() for c in chains] == ["identity", "transpose(1, 0)"]


def test_square_q_proj_of_tiny_models_offers_both_readings():
    # tiny configs have heads * head_dim == hidden: shapes cannot tell [H*D, E] from [E, H*D]
    dims = {"hidden": 64, "heads": 4, "head_dim": 16}
    w = seeded((64, 64))
    chains = search_chains((64, 64), (64, 4, 16), dims)
    assert find(chains, [w.T.reshape(64, 4, 16)], w) is not None
    assert find(chains, [w.reshape(64, 4, 16)], w) is not None


def test_heads_equal_head_dim_gives_both_axis_orders():
    w = seeded((E, 4 * 4))
    chains = search_chains((E, 16), (4, 4, E), {"heads": 4, "head_dim": 4})
    plain = find(chains, [w.T.reshape(4, 4, E)], w)
    swapped = find(chains, [w.T.reshape(4, 4, E).transpose(1, 0, 2)], w)
    assert plain == 0 and swapped is not None and swapped > plain


def test_merged_heads_split_heads_major_before_head_dim_major():
    # [H*D, E] -> [E, D, H]: the usual reading (heads outer) ranks above reading the merged axis as [D, H]
    w = seeded((H * D, E))
    chains = search_chains((H * D, E), (E, D, H), DIMS)
    usual = find(chains, [w.T.reshape(E, H, D).transpose(0, 2, 1)], w)
    other = find(chains, [w.T.reshape(E, D, H)], w)
    assert usual == 0 and other is not None


def test_fused_qkv_splits_into_three_targets_contiguous_first_then_per_group_interleaved():
    w = seeded(((H + 2 * KV) * D, E))
    tgts = [(E, H, D), (E, KV, D), (E, KV, D)]
    chains = search_chains([w.shape], tgts, DIMS)
    q, k, v = np.split(w, [H * D, (H + KV) * D])
    contiguous = [q.T.reshape(E, H, D), k.T.reshape(E, KV, D), v.T.reshape(E, KV, D)]
    assert find(chains, contiguous, w) == 0
    assert isinstance(chains[0].ops[0], Split) and not chains[0].ops[0].interleave
    # per kv group: [q_g (H/KV heads) | k_g | v_g] for each group g
    g = w.reshape(KV, (H // KV + 2) * D, E)
    qg, kg, vg = np.split(g, [H // KV * D, (H // KV + 1) * D], axis=1)
    grouped = [qg.reshape(H * D, E).T.reshape(E, H, D), kg.reshape(KV * D, E).T.reshape(E, KV, D),
               vg.reshape(KV * D, E).T.reshape(E, KV, D)]
    assert find(chains, grouped, w) is not None


def test_gate_up_splits_contiguous_or_interleaved():
    w = seeded((2 * F, E))
    chains = search_chains([(2 * F, E)], [(E, F), (E, F)], DIMS)
    assert find(chains, [w[:F].T, w[F:].T], w) == 0
    assert find(chains, [w[0::2].T, w[1::2].T], w) == 1


def test_gate_up_pair_fuses_by_concat():
    a, b = seeded((E, F), 1), seeded((E, F), 2)
    chains = search_chains([(E, F), (E, F)], [(E, 2 * F)], DIMS)
    assert chains[0].ops == (Concat(1, (F, F)),)
    assert find(chains, [np.concatenate([a, b], axis=1)], a, b) == 0
    interleaved = np.empty((E, 2 * F), np.float32)
    interleaved[:, 0::2], interleaved[:, 1::2] = a, b
    assert find(chains, [interleaved], a, b) is not None


def test_gpt_oss_expert_gate_up_interleaved_on_the_last_axis():
    w = seeded((NE, E, 2 * F))
    chains = search_chains([w.shape], [(NE, E, F), (NE, E, F)], DIMS)
    assert find(chains, [w[..., ::2], w[..., 1::2]], w) is not None


def test_layers_stack_at_axis_one():
    layers = [seeded((F, E), i) for i in range(5)]
    chains = search_chains([(F, E)] * 5, [(E, 5, F)], DIMS)
    want = np.stack([x.T for x in layers], axis=1)
    assert find(chains, [want], *layers) == 0
    assert isinstance(chains[0].ops[-1], Stack) and chains[0].ops[-1].axis == 1
    back = search_chains([(E, 5, F)], [(F, E)] * 5, DIMS)
    assert find(back, layers, want) == 0


def test_experts_transpose_both_ways():
    w = seeded((NE, F, E))
    assert search_chains((NE, F, E), (NE, E, F), DIMS)[0] == Chain([Transpose((0, 2, 1))])
    assert search_chains((NE, E, F), (NE, F, E), DIMS)[0] == Chain([Transpose((0, 2, 1))])
    assert find(search_chains(w.shape, (NE, E, F), DIMS), [w.transpose(0, 2, 1)], w) == 0


def test_vocab_pad_and_truncate():
    assert search_chains((256, 64), (320, 64))[0] == Chain([Pad(0, 0, 64)])
    assert search_chains((320, 64), (256, 64))[0] == Chain([Truncate(0, 0, 256, 320)])
    # with dims naming the vocab, and combined with a transpose (lm_head -> logits_dense)
    w = seeded((256, 64))
    chains = search_chains((256, 64), (64, 320), {"vocab": 256, "hidden": 64})
    padded = np.concatenate([w, np.zeros((64, 64), np.float32)]).T
    assert find(chains, [padded], w) == 0
    # an axis twice as long is not vocab padding
    assert search_chains((E, F), (E, 2 * F), DIMS) == []


def test_conv_kernel_oihw_to_hwio():
    w = seeded((16, 3, 5, 5))
    chains = search_chains(w.shape, (5, 5, 3, 16))
    assert chains[0] == Chain([Transpose((2, 3, 1, 0))])
    assert len(chains) == 2  # kh == kw: the swapped reading is offered too, after
    assert find(chains, [w.transpose(3, 2, 1, 0)], w) == 1


def test_unrelated_shapes_give_no_chain():
    assert search_chains((E, F), (F, F)) == []
    assert search_chains([(E, F)], [(E,), (F,)]) == []
    assert search_chains([(0, 4)], [(0, 2), (0, 2)]) == []  # empty arrays: nothing to split by


def test_results_are_memoised_and_safe_to_mutate():
    clear_cache()
    first = search_chains((H * D, E), (E, H, D), DIMS)
    first.clear()
    t0 = time.perf_counter()
    again = search_chains((H * D, E), (E, H, D), DIMS)
    assert again and time.perf_counter() - t0 < 0.01


def test_max_len_bounds_the_chains():
    assert all(op_length(c) <= 1 for c in search_chains((H * D, E), (E, H, D), DIMS, max_len=1))
    assert search_chains((H * D, E), (E, H, D), DIMS, max_len=1) == []
    assert len(search_chains((E, E), (E, E), limit=1)) == 1


small = st.integers(1, 6)


@settings(max_examples=60, deadline=None)
@given(st.lists(small, min_size=1, max_size=4), st.data())
def test_every_chain_found_is_valid_distinct_invertible_and_compiles(src, data):
    # the target: a random permutation of the source axes, some neighbours merged
    perm = data.draw(st.permutations(range(len(src))))
    moved = [src[p] for p in perm]
    tgt, i = [], 0
    while i < len(moved):
        if i + 1 < len(moved) and data.draw(st.booleans()):
            tgt.append(moved[i] * moved[i + 1])
            i += 2
        else:
            tgt.append(moved[i])
            i += 1
    src, tgt = tuple(src), tuple(tgt)
    chains = search_chains(src, tgt)
    x = np.arange(int(np.prod(src)), dtype=np.float32).reshape(src)
    want = x.transpose(perm).reshape(tgt)
    assert find(chains, [want], x) is not None
    seen = set()
    for c in chains:
        assert c.shape((src,)) == (tgt,)
        (y,) = c.apply((x,))
        assert tuple(y.ravel()) not in seen  # each chain moves the elements differently
        seen.add(tuple(y.ravel()))
        assert np.array_equal(c.inverse().apply((y,))[0], x)
        assert np.array_equal(compile_op(c)(x)[0], y)
    assert [c.cost for c in chains] == sorted(c.cost for c in chains)


def test_every_fused_chain_round_trips():
    w = seeded(((H + 2 * KV) * D, E))
    for c in search_chains([w.shape], [(E, H, D), (E, KV, D), (E, KV, D)], DIMS):
        parts = c.apply((w,))
        assert [p.shape for p in parts] == [(E, H, D), (E, KV, D), (E, KV, D)]
        assert np.array_equal(c.inverse().apply(parts)[0], w)
        assert all(np.array_equal(a, b) for a, b in zip(compile_op(c)(w), parts))


@pytest.mark.parametrize("src,tgts", [
    ([(6, 4)], [(4, 3), (4, 3)]),
    ([(4, 3), (4, 3)], [(4, 6)]),
    ([(4, 3), (2, 5)], [(3, 4), (5, 2)]),
])
def test_one_to_many_many_to_one_and_side_by_side_shapes(src, tgts):
    chains = search_chains(src, tgts)
    assert chains
    for c in chains:
        assert c.shape(tuple(src)) == tuple(tgts)


def test_nested_stacks_layers_by_experts():
    layers, experts = 3, 2
    cells = [seeded((F, E), 10 + i) for i in range(layers * experts)]
    chains = search_chains([(F, E)] * (layers * experts), [(layers, experts, E, F)], DIMS)
    want = np.stack([x.T for x in cells]).reshape(layers, experts, E, F)  # row-major: layer-major, then expert
    assert find(chains, [want], *cells) == 0
    assert find(search_chains([want.shape], [(F, E)] * (layers * experts), DIMS), cells, want) == 0


def test_scalar_and_size_one_shapes():
    assert [c.describe() for c in search_chains((), (1,))] == ["reshape[]->[1]"]
    assert [c.describe() for c in search_chains((), ())] == ["identity"]
    assert [c.describe() for c in search_chains((1, E, F), (1, F, E))] == ["transpose(0, 2, 1)"]
    assert [c.describe() for c in search_chains((E,), (1, E))] == [f"reshape[{E}]->[1, {E}]"]
