"""The committed ground truth (ckptmap/benchmarks/data): it loads, it holds MaxText's real conversion, and it is
reproducible from MaxText itself."""

import os
import subprocess

import numpy as np
import pytest

from ckptmap.benchmarks import gt_store
from ckptmap.runner import seeded_tensor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAXTEXT_PYTHON = os.path.join(REPO, ".venv-maxtext", "bin", "python")
# MaxText 0.2.5's pyconfig refuses these scanned configs (see each file's "reason").
UNAVAILABLE = {("gemma4-small", 1), ("qwen3-omni", 1), ("qwen3-vl", 1), ("qwen3-vl-moe", 1)}


def llama_hf(name, shape):
    return seeded_tensor(name, shape, gt_store.SEED, integer=True)


def test_every_fixture_family_has_ground_truth_for_both_scans():
    pairs = gt_store.available()
    assert len(pairs) == 40
    assert {f for f, _ in pairs} == set(os.listdir(os.path.join(REPO, "tests", "data", "maxtext_tiny")))
    not_ok = {(f, s) for f, s in pairs if not gt_store.load(f, s, with_tensors=False).ok}
    assert not_ok == UNAVAILABLE


def test_ground_truth_files_load_with_the_target_tree_shapes():
    for family, scan in gt_store.available():
        gt = gt_store.load(family, scan)
        if not gt.ok:
            assert "scan_layers" in gt.reason and not gt.tensors
            continue
        assert set(gt.tensors) | set(gt.failed) | set(gt.not_in_mapping) == set(gt.target_shapes), family
        for name, array in gt.tensors.items():
            assert array.dtype == np.float32 and list(array.shape) == gt.target_shapes[name], (family, scan, name)


def test_llama_ground_truth_is_maxtexts_conversion_of_seeded_tensors():
    scan0, scan1 = gt_store.load("llama3.1", 0), gt_store.load("llama3.1", 1)
    embed = llama_hf("model.embed_tokens.weight", (256, 64))
    np.testing.assert_array_equal(scan0.tensors["params-token_embedder-embedding"], embed)
    np.testing.assert_array_equal(scan0.tensors["params-decoder-logits_dense-kernel"],
                                  llama_hf("lm_head.weight", (256, 64)).T)
    # query: [hidden, heads, head_dim], RoPE halves -> interleaved, scaled by 1/sqrt(head_dim)
    q = llama_hf("model.layers.1.self_attn.q_proj.weight", (64, 64)).T.reshape(64, 4, 16)
    q = np.stack([q[..., :8], q[..., 8:]], axis=-1).reshape(64, 4, 16) * 0.25
    np.testing.assert_array_equal(scan0.tensors["params-decoder-layers_1-self_attention-query-kernel"], q)
    # scanned: the layers stacked at axis 1 (stored as a recipe over the scan0 tensors)
    np.testing.assert_array_equal(scan1.tensors["params-decoder-layers-self_attention-query-kernel"][:, 1], q)
    assert scan1.sources_by_target()["params-decoder-layers-self_attention-query-kernel"] == [
        "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"]


def test_param_mapping_keeps_tuples_distinct_from_lists():
    gt = gt_store.load("gpt-oss", 0, with_tensors=False)
    fused = next(e for e in gt.entries if isinstance(e.maxtext, tuple))
    assert fused.maxtext == ("params-decoder-layers_0-GptOssMlp-wi_0", "params-decoder-layers_0-GptOssMlp-wi_1")
    assert fused.hf == "model.layers.0.mlp.experts.gate_up_proj" and fused.hooks == ("interleave",)
    value = [("a", "b"), ["c", None]]
    assert gt_store.decode_value(gt_store.encode_value(value)) == value
    assert gt_store.encode_value(value) == [{"tuple": ["a", "b"]}, ["c", None]]


def test_narrowest_exact_dtype_keeps_every_value():
    assert gt_store.narrowest_exact(np.array([-8.0, 3.0, 7.0], np.float32)).dtype == np.int8
    assert gt_store.narrowest_exact(np.array([0.25, -2.5], np.float32)).dtype == np.float16
    assert gt_store.narrowest_exact(np.array([1 / 3], np.float32)).dtype == np.float32


def test_ground_truth_stays_small_enough_for_the_repo():
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(gt_store.DATA_DIR) for f in fs)
    assert total < 15_000_000


@pytest.mark.maxtext
def test_ground_truth_regenerates_identically_with_maxtext(tmp_path):
    assert os.path.exists(MAXTEXT_PYTHON), "the MaxText venv (.venv-maxtext) is needed for this test"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([MAXTEXT_PYTHON, "-m", "ckptmap.benchmarks.ground_truth", "--out", str(tmp_path),
                           "--families", "llama3.1", "mixtral"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for family in ("llama3.1", "mixtral"):
        for name in os.listdir(os.path.join(gt_store.DATA_DIR, family)):
            with open(os.path.join(gt_store.DATA_DIR, family, name), "rb") as committed, \
                    open(tmp_path / family / name, "rb") as fresh:
                assert fresh.read() == committed.read(), f"{family}/{name} differs from MaxText's output"
    mixtral = gt_store.load("mixtral", 1, data_dir=str(tmp_path), with_tensors=False)
    assert list(mixtral.failed) == ["params-decoder-layers-MoeBlock_0-gate-kernel"]
