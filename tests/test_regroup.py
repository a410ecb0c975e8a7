"""Head-grouped readings of a fused axis (heuristics.regroup), checked against an independent numpy layout."""

from __future__ import annotations

import numpy as np

from ckptmap.heuristics.regroup import group_counts, grouped_chains, role_sizes, roles_held
from ckptmap.transforms import search_chains

DIMS = {"hidden": 64, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
        "linear_key_head_dim": 16, "linear_value_head_dim": 16}


def test_roles_held_reads_packed_letters():
    fused = ["attention", "in", "qkvz", "weight"]
    assert roles_held("qkv", fused) == 3
    assert roles_held("z", fused) == 1
    assert roles_held("gate", ["mlp", "gate_up"]) == 1


def test_role_sizes_are_head_products_most_equal_first():
    sizes = role_sizes(128, 3, DIMS)
    assert sizes[0] == (32, 32, 64)
    assert (32, 64, 32) not in sizes  # not monotone along the part
    assert all(sum(s) == 128 for s in sizes)


def test_group_counts_keep_whole_heads():
    assert group_counts((32, 32, 64, 64), DIMS) == [2]  # 4 groups would cut 16-wide heads in half
    assert group_counts((4, 4), DIMS) == [2, 4]  # per-head scalars: any head count


def _per_key_head(qkv: np.ndarray, z: np.ndarray, hk: int, dk: int, dv_per_k: int) -> np.ndarray:
    """[in, q|k|v] and [in, z] -> [in, (q_h k_h v_h z_h) for h in key heads], written plainly."""
    q, k, v = qkv[:, :hk * dk], qkv[:, hk * dk:2 * hk * dk], qkv[:, 2 * hk * dk:]
    cols = []
    for h in range(hk):
        cols += [q[:, h * dk:(h + 1) * dk], k[:, h * dk:(h + 1) * dk],
                 v[:, h * dv_per_k:(h + 1) * dv_per_k], z[:, h * dv_per_k:(h + 1) * dv_per_k]]
    return np.concatenate(cols, axis=1)


def test_a_grouped_chain_reproduces_the_per_key_head_layout_and_inverts():
    rng = np.random.default_rng(0)
    qkv, z = rng.standard_normal((64, 128)), rng.standard_normal((64, 64))
    want = _per_key_head(qkv, z, hk=2, dk=16, dv_per_k=32)
    contiguous = [c.inverse() for c in search_chains([(64, 128), (64, 64)], [(64, 192)], DIMS)]
    grouped = [g.inverse() for c in contiguous for g in grouped_chains(c, (3, 1), DIMS)]
    hits = [g for g in grouped if np.array_equal(g.apply((qkv, z))[0], want)]
    assert hits
    back = hits[0].inverse().apply((want,))
    assert np.array_equal(back[0], qkv) and np.array_equal(back[1], z)
    code = hits[0].to_code(["a", "b"])
    assert np.array_equal(eval(code[0], {"np": np, "a": qkv, "b": z}), want)


def test_per_head_gates_group_by_key_head():
    b, a = np.arange(4 * 3).reshape(4, 3), 100 + np.arange(4 * 3).reshape(4, 3)
    want = np.concatenate([b[0:2], a[0:2], b[2:4], a[2:4]], axis=0)  # [b0 b1 a0 a1 b2 b3 a2 a3]
    contiguous = [c.inverse() for c in search_chains([(4, 3), (4, 3)], [(8, 3)], DIMS)]
    grouped = [g.inverse() for c in contiguous for g in grouped_chains(c, (1, 1), DIMS)]
    assert any(np.array_equal(g.apply((b, a))[0], want) for g in grouped)


def test_code_layout_agreement_and_the_cut_it_implies():
    from ckptmap.heuristics.regroup import agrees_with_code, code_splits
    from ckptmap.transforms.combinators import Chain
    from ckptmap.transforms.fusion import Split

    contiguous = Chain((Split(1, (128, 64)),))
    code = {"axis": 1, "rounds": 2, "blocks": [16, 16, 32, 32]}
    assert agrees_with_code(contiguous, code) == -1
    assert agrees_with_code(contiguous, {"axis": 1, "rounds": 1, "blocks": [32, 32, 64, 64]}) == 1  # finer, same cut
    assert agrees_with_code(contiguous, {"axis": 0, "rounds": 1, "blocks": [32, 32]}) == 0  # another axis
    (cut,) = code_splits(contiguous, code)
    assert agrees_with_code(cut, code) == 1
    rng = np.random.default_rng(1)
    qkv, z = rng.standard_normal((64, 128)), rng.standard_normal((64, 64))
    fused = _per_key_head(qkv, z, hk=2, dk=16, dv_per_k=32)
    got = cut.apply((fused,))
    assert np.array_equal(got[0], qkv) and np.array_equal(got[1], z)
    # The code's parts cannot make the chain's parts: no chain.
    assert code_splits(Chain((Split(1, (100, 92)),)), code) == []


def test_solver_follows_the_code_layout_of_a_fused_tensor():
    """gpt-oss-like trees: shapes alone take contiguous gate/up; told the code's interleave, the solver takes it."""
    from ckptmap.solver import solve
    from ckptmap.trees.model import ParamInfo, ParamTree

    def tree(shapes):
        return ParamTree.from_items(ParamInfo(n, s) for n, s in shapes.items())

    src = tree({"model.layers.0.mlp.experts.gate_up_proj": (4, 64, 64),
                "model.layers.0.mlp.experts.down_proj": (4, 32, 64)})
    tgt = tree({"params-decoder-layers_0-mlp-wi_0": (4, 64, 32),
                "params-decoder-layers_0-mlp-wi_1": (4, 64, 32),
                "params-decoder-layers_0-mlp-wo": (4, 32, 64)})
    plain = solve(src, tgt).mapping
    src.meta["code_layouts"] = {"model.layers.0.mlp.experts.gate_up_proj": {"axis": 2, "rounds": 32, "blocks": [1, 1]}}
    told = solve(src, tgt).mapping

    def gate_up(m):
        return next(r for r in m.rules if "params-decoder-layers_0-mlp-wi_0" in r.target_names()).chain.describe()

    assert "interleaved" not in gate_up(plain)
    assert "interleaved" in gate_up(told)


def test_megatron_style_qkv_grouped_per_kv_head_is_offered():
    """A fused qkv stored per kv group ([q heads of group g | k_g | v_g] for each g, Megatron's linear_qkv): offered
    for separate q, k, v parts, and it reproduces that layout."""
    dims = {"heads": 4, "kv_heads": 2, "head_dim": 16, "hidden": 64}
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((64, 64)), rng.standard_normal((32, 64)), rng.standard_normal((32, 64))
    want = np.concatenate([q[0:32], k[0:16], v[0:16], q[32:64], k[16:32], v[16:32]], axis=0)
    contiguous = [c.inverse() for c in search_chains([(64, 64), (32, 64), (32, 64)], [(128, 64)], dims)]
    grouped = [g.inverse() for c in contiguous for g in grouped_chains(c, (1, 1, 1), dims)]
    assert any(np.array_equal(g.apply((q, k, v))[0], want) for g in grouped)
