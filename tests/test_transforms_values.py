"""The value transforms MaxText's families need, reproduced as numbers: RoPE layout, query scaling, the RMSNorm
+1 offset, embedding scaling (bf16-rounded sqrt(hidden)), gpt-oss' interleaved gate/up, and per-slice
application of chains under layer / expert stacking."""

import json
import os
import subprocess
import textwrap

import ml_dtypes
import numpy as np
import pytest

from ckptmap.apply import apply_rule, apply_to_dict
from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.transforms import Chain, Offset, RopePermute, Scale, Split, eval_expr, op_from_json, search_chains
from ckptmap.transforms.base import TransformError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAXTEXT_PYTHON = os.path.join(REPO, ".venv-maxtext", "bin", "python")


def seeded(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- RoPE ------------------------------------------------------------------------------------------------------

def rope_half_split(q, pos, base=10000.0):
    """RoPE on [..., T, d] with pairs (i, i + d/2) (HF's rotate_half layout)."""
    d = q.shape[-1]
    freq = base ** (-np.arange(d // 2) * 2.0 / d)
    ang = pos[:, None] * freq[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x, y = q[..., : d // 2], q[..., d // 2:]
    return np.concatenate([x * cos - y * sin, y * cos + x * sin], axis=-1)


def rope_interleaved(q, pos, base=10000.0):
    """RoPE on [..., T, d] with pairs (2i, 2i + 1) (MaxText's layout)."""
    d = q.shape[-1]
    freq = base ** (-np.arange(d // 2) * 2.0 / d)
    ang = pos[:, None] * freq[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x, y = q[..., 0::2], q[..., 1::2]
    out = np.empty_like(q)
    out[..., 0::2], out[..., 1::2] = x * cos - y * sin, y * cos + x * sin
    return out


def test_rope_permute_moves_half_split_pairs_next_to_each_other():
    x = np.array([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])  # [x0 x1 x2 | y0 y1 y2]
    (inter,) = RopePermute("half_to_interleaved").apply((x,))
    assert inter.tolist() == [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]
    (back,) = RopePermute("interleaved_to_half").apply((inter,))
    assert back.tolist() == x.tolist()
    assert RopePermute("half_to_interleaved").inverse() == RopePermute("interleaved_to_half")


def test_rope_permuted_q_and_k_kernels_give_the_same_attention_scores():
    heads, kv, d, e, t = 2, 1, 8, 6, 5
    wq, wk = seeded((heads * d, e), 1), seeded((kv * d, e), 2)   # HF q_proj / k_proj
    x, pos = seeded((t, e), 3), np.arange(t, dtype=np.float64)
    q_hf = rope_half_split((x @ wq.T).reshape(t, heads, d).transpose(1, 0, 2), pos)
    k_hf = rope_half_split((x @ wk.T).reshape(t, kv, d).transpose(1, 0, 2), pos)

    layout_q = search_chains(wq.shape, (e, heads, d), {"heads": heads, "kv_heads": kv, "head_dim": d})[0]
    layout_k = search_chains(wk.shape, (e, kv, d), {"heads": heads, "kv_heads": kv, "head_dim": d})[0]
    to_q = Chain([layout_q, RopePermute("half_to_interleaved")])
    to_k = Chain([layout_k, RopePermute("half_to_interleaved")])
    (mq,), (mk,) = to_q.apply((wq,)), to_k.apply((wk,))           # MaxText query / key kernels [E, H, D]
    q_mt = rope_interleaved(np.einsum("te,ehd->htd", x, mq), pos)
    k_mt = rope_interleaved(np.einsum("te,ehd->htd", x, mk), pos)

    np.testing.assert_allclose(RopePermute("half_to_interleaved").apply((q_hf,))[0], q_mt, rtol=1e-5, atol=1e-5)
    scores_hf = np.einsum("htd,hsd->hts", q_hf, np.repeat(k_hf, heads // kv, axis=0))
    scores_mt = np.einsum("htd,hsd->hts", q_mt, np.repeat(k_mt, heads // kv, axis=0))
    np.testing.assert_allclose(scores_hf, scores_mt, rtol=1e-4, atol=1e-4)
    # and back: the inverse chain restores HF's kernels exactly
    assert np.array_equal(to_q.inverse().apply((mq,))[0], wq)


# --- scaling and offsets -------------------------------------------------------------------------------------

def test_query_scaling_by_inverse_sqrt_head_dim():
    scale = Scale.from_expr("1/sqrt(head_dim)", {"head_dim": 128})
    assert np.float32(scale.value) == np.float32(1 / np.sqrt(128))
    w = seeded((16, 4, 128))
    (got,) = scale.apply((w,))
    assert got.dtype == np.float32
    assert np.array_equal(got, w * np.float32(1 / np.sqrt(128)))
    wb = w.astype(ml_dtypes.bfloat16)
    (gotb,) = scale.apply((wb,))
    assert gotb.dtype == ml_dtypes.bfloat16
    assert np.array_equal(gotb, (wb.astype(np.float32) * np.float32(1 / np.sqrt(128))).astype(ml_dtypes.bfloat16))
    inverse = scale.inverse()
    assert inverse.expr == "sqrt(head_dim)" and eval_expr(inverse.expr, {"head_dim": 128}) == np.sqrt(128)
    np.testing.assert_allclose(inverse.apply((got,))[0], w, rtol=1e-6)


def test_query_scaling_folds_the_attention_temperature_into_the_kernel():
    d = 16
    q, k = seeded((3, d), 1), seeded((4, d), 2)
    (q_scaled,) = Scale.from_expr("1/sqrt(head_dim)", {"head_dim": d}).apply((q,))
    np.testing.assert_allclose(q_scaled @ k.T, (q @ k.T) / np.sqrt(d), rtol=1e-6)


def rms_norm(x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * weight


def test_rmsnorm_plus_one_offset():
    w_hf = seeded((32,), 4) * 0.1          # Gemma-style: the norm multiplies by (1 + w)
    x = seeded((5, 32), 5)
    (w_mt,) = Offset(1.0).apply((w_hf,))   # MaxText stores the full scale
    np.testing.assert_allclose(rms_norm(x, w_mt), rms_norm(x, 1.0 + w_hf), rtol=1e-6)
    assert np.array_equal(Offset(1.0).inverse().apply((w_mt,))[0], (w_mt - np.float32(1.0)))
    assert Offset(1.0).inverse() == Offset(-1.0)
    wb = w_hf.astype(ml_dtypes.bfloat16)
    assert Offset(1.0).apply((wb,))[0].dtype == ml_dtypes.bfloat16


def test_embedding_scaling_uses_sqrt_hidden_rounded_to_bfloat16():
    exact = Scale.from_expr("sqrt(hidden)", {"hidden": 2560})
    rounded = Scale.from_expr("sqrt(hidden)", {"hidden": 2560}, round_dtype="bfloat16")
    assert exact.value == pytest.approx(50.596442562694)
    assert rounded.value == 50.5 == float(ml_dtypes.bfloat16(np.sqrt(2560)))
    emb = seeded((10, 2560), 6)
    (scaled,) = rounded.apply((emb,))
    assert np.array_equal(scaled, emb * np.float32(50.5))
    assert not np.array_equal(scaled, exact.apply((emb,))[0])
    inverse = rounded.inverse()
    assert inverse.expr == "1/bfloat16(sqrt(hidden))"
    assert eval_expr(inverse.expr, {"hidden": 2560}) == 1 / 50.5 == inverse.value
    again = op_from_json(json.loads(json.dumps(rounded.to_json())))
    assert again == rounded and again.round_dtype == "bfloat16"


def test_scale_expressions_are_evaluated_safely():
    assert eval_expr("1/sqrt(head_dim) * 2**-1", {"head_dim": 4}) == 0.25
    for bad in ("__import__('os')", "head_dim.real", "open('x')", "[1][0]"):
        with pytest.raises(TransformError):
            eval_expr(bad, {"head_dim": 4})
    with pytest.raises(TransformError, match="unknown name 'hidden'"):
        Scale.from_expr("sqrt(hidden)", {"head_dim": 4})


# --- interleaved gate/up -------------------------------------------------------------------------------------

def test_gpt_oss_interleaved_gate_up_split_reproduces_the_fused_mlp():
    ne, e, f = 2, 6, 5
    gate_up = seeded((ne, e, 2 * f), 7)                 # HF experts.gate_up_proj: gate at even columns
    x = seeded((3, e), 8)
    split = Chain([Split(2, (f, f), interleave=True)])
    assert search_chains(gate_up.shape, [(ne, e, f), (ne, e, f)])[:2] == [Chain([Split(2, (f, f))]), split]
    wi_0, wi_1 = split.apply((gate_up,))
    fused = np.einsum("te,nef->ntf", x, gate_up)
    np.testing.assert_allclose(np.einsum("te,nef->ntf", x, wi_0), fused[..., 0::2], rtol=1e-6)
    np.testing.assert_allclose(np.einsum("te,nef->ntf", x, wi_1), fused[..., 1::2], rtol=1e-6)
    assert np.array_equal(split.inverse().apply((wi_0, wi_1))[0], gate_up)


# --- per-slice application under stacking --------------------------------------------------------------------

def test_chains_apply_per_slice_under_layer_stacking_and_reverse():
    layers, heads, d, e = 3, 2, 4, 6
    hf = {f"model.layers.{i}.self_attn.q_proj.weight": seeded((heads * d, e), 10 + i) for i in range(layers)}
    layout = search_chains((heads * d, e), (e, heads, d), {"heads": heads, "head_dim": d})[0]
    chain = Chain([layout, RopePermute("half_to_interleaved"), Scale.from_expr("1/sqrt(head_dim)", {"head_dim": d})])
    rule = Rule(sources=(Slot.per_cell([f"model.layers.{i}.self_attn.q_proj.weight" for i in range(layers)]),),
                targets=(Slot.stacked("params-decoder-layers-self_attention-query-kernel", [1]),),
                chain=chain, grid=(layers,))
    out = dict(apply_rule(rule, hf.__getitem__))
    stacked = out["params-decoder-layers-self_attention-query-kernel"]
    assert stacked.shape == (e, layers, heads, d)
    for i in range(layers):
        w = hf[f"model.layers.{i}.self_attn.q_proj.weight"]
        want = RopePermute("half_to_interleaved").apply((w.T.reshape(e, heads, d),))[0] * np.float32(0.5)
        assert np.array_equal(stacked[:, i], want)
    # the reversed mapping (scale 1/2 inverts exactly) writes every layer back
    mapping = Mapping(rules=[rule], source="hf", target="maxtext")
    mapping = Mapping.from_json(json.loads(json.dumps(mapping.to_json())))
    back = apply_to_dict(mapping.reversed(), out)
    assert all(np.array_equal(back[k], v) for k, v in hf.items())


def test_fused_expert_split_applies_per_cell_of_a_layers_by_experts_grid():
    layers, experts, e, f = 2, 3, 4, 5
    src = {f"layers.{i}.experts.{j}.gate_up": seeded((2 * f, e), 20 + 3 * i + j)
           for i in range(layers) for j in range(experts)}
    chain = search_chains([(2 * f, e)], [(e, f), (e, f)])[0]      # contiguous split, then transposes
    keys = [[f"layers.{i}.experts.{j}.gate_up" for j in range(experts)] for i in range(layers)]
    rule = Rule(sources=(Slot.per_cell(keys),),
                targets=(Slot.stacked("wi_0", [0, 2]), Slot.stacked("wi_1", [0, 2])),  # [layers, E, experts, F]
                chain=chain, grid=(layers, experts))
    out = dict(apply_rule(rule, src.__getitem__))
    assert out["wi_0"].shape == (layers, e, experts, f)
    for i in range(layers):
        for j in range(experts):
            w = src[f"layers.{i}.experts.{j}.gate_up"]
            assert np.array_equal(out["wi_0"][i, :, j], w[:f].T)
            assert np.array_equal(out["wi_1"][i, :, j], w[f:].T)


# --- against MaxText's own conversion hooks --------------------------------------------------------------------

PROBE = textwrap.dedent("""
    import sys, numpy as np
    from maxtext.checkpoint_conversion.utils import param_mapping as pm
    d = sys.argv[1]
    x = {n: np.load(f"{d}/{n}.npy") for n in ("q", "k", "emb", "norm", "gate_up")}

    class Cfg:
        inhomogeneous_layer_cycle_interval = 1

    def run(hooks, key, arr, shape):
        fns = hooks[key] if isinstance(hooks[key], list) else [hooks[key]]
        for fn in fns:
            arr = fn(arr, shape)
        return np.asarray(arr)

    llama = pm.LLAMA31_MAXTEXT_TO_HF_PARAM_HOOK_FN({"num_hidden_layers": 1, "head_dim": 8}, None, False, False)
    np.save(f"{d}/mt_q.npy", run(llama, "params-decoder-layers_0-self_attention-query-kernel", x["q"], (12, 4, 8)))
    np.save(f"{d}/mt_k.npy", run(llama, "params-decoder-layers_0-self_attention-key-kernel", x["k"], (12, 2, 8)))
    gemma3 = pm.GEMMA3_MAXTEXT_TO_HF_PARAM_HOOK_FN({"text_config": {"hidden_size": 2560, "num_hidden_layers": 1}},
                                                   None, False, False)
    np.save(f"{d}/mt_emb.npy", run(gemma3, "params-token_embedder-embedding", x["emb"], (320, 2560)))
    np.save(f"{d}/mt_norm.npy", run(gemma3, "params-decoder-decoder_norm-scale", x["norm"], (2560,)))
    oss = pm.GPT_OSS_TO_HF_PARAM_HOOK_FN({"num_hidden_layers": 1}, Cfg(), False, False)
    key = ("params-decoder-layers_0-GptOssMlp-wi_0", "params-decoder-layers_0-GptOssMlp-wi_1")
    np.save(f"{d}/mt_gate_up.npy", run(oss, key, x["gate_up"], None))
""")


@pytest.mark.maxtext
def test_value_chains_match_maxtext_conversion_hooks_exactly(tmp_path):
    assert os.path.exists(MAXTEXT_PYTHON), "the MaxText tests need .venv-maxtext (make setup)"
    heads, kv, d, e, f = 4, 2, 8, 12, 5
    dims = {"heads": heads, "kv_heads": kv, "head_dim": d, "hidden": 2560, "vocab": 256}
    arrays = {"q": seeded((heads * d, e), 1), "k": seeded((kv * d, e), 2), "emb": seeded((256, 2560), 3),
              "norm": seeded((2560,), 4), "gate_up": seeded((3, e, 2 * f), 5)}
    for name, arr in arrays.items():
        np.save(tmp_path / f"{name}.npy", arr)
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([MAXTEXT_PYTHON, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mt = {name: np.load(tmp_path / f"mt_{name}.npy") for name in ("q", "k", "emb", "norm", "gate_up")}

    rope = RopePermute("half_to_interleaved")
    q_chain = Chain([search_chains((heads * d, e), (e, heads, d), dims)[0], rope,
                     Scale.from_expr("1/sqrt(head_dim)", dims)])
    k_chain = Chain([search_chains((kv * d, e), (e, kv, d), dims)[0], rope])
    emb_chain = Chain([Scale.from_expr("sqrt(hidden)", dims, round_dtype="bfloat16"),
                       search_chains((256, 2560), (320, 2560), dims)[0]])
    gate_up_chain = search_chains([(3, e, 2 * f)], [(3, e, f), (3, e, f)], dims)
    interleaved = next(c for c in gate_up_chain if c.ops[0].interleave)

    assert np.array_equal(q_chain.apply((arrays["q"],))[0], mt["q"])
    assert np.array_equal(k_chain.apply((arrays["k"],))[0], mt["k"])
    assert np.array_equal(emb_chain.apply((arrays["emb"],))[0], mt["emb"])
    assert np.array_equal(Offset(1.0).apply((arrays["norm"],))[0], mt["norm"])
    wi_0, wi_1 = interleaved.apply((arrays["gate_up"],))
    assert np.array_equal(np.stack([wi_0, wi_1], axis=-1), mt["gate_up"])


def test_a_zero_scale_has_no_inverse():
    with pytest.raises(TransformError, match="cannot be inverted"):
        Scale("0", 0.0).inverse()
