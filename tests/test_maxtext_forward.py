"""MaxText sessions: MaxText's own init, forward passes with per-layer activations in global layer order."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ckptmap import maxtext
from ckptmap.runner import Forward

pytestmark = pytest.mark.maxtext

DATA = Path(__file__).parent / "data" / "maxtext_tiny"


def tiny(family: str) -> tuple[str, list[str]]:
    cfg = json.loads((DATA / family / "config.json").read_text())
    return cfg["maxtext_model_name"], list(cfg["maxtext_overrides"])


def tokens(batch: int = 1, seq: int = 64, vocab: int = 256) -> np.ndarray:
    return ((np.arange(batch * seq).reshape(batch, seq) * 37 + 11) % vocab).astype(np.int32)


@pytest.fixture(scope="module")
def llama():
    assert maxtext.available(), "MaxText is not reachable: build .venv-maxtext (make setup) or set CKPTMAP_MAXTEXT_PYTHON"
    name, overrides = tiny("llama3.1")
    return maxtext.session(name, overrides + ["scan_layers=false"])


def test_init_gives_every_parameter_of_the_tree(llama):
    tree = llama.abstract_tree()
    params = llama.init(seed=0)
    assert list(params) == tree.names()
    assert all(params[p.name].shape == p.shape and params[p.name].dtype == np.float32 for p in tree)
    again, other = llama.init(seed=0), llama.init(seed=1)
    assert all(np.array_equal(params[n], again[n]) for n in params)
    assert not np.array_equal(params["params-token_embedder-embedding"], other["params-token_embedder-embedding"])


def test_forward_returns_logits_and_named_activations(llama):
    params = llama.init(seed=0)
    out = llama.forward(params, tokens())
    assert isinstance(out, Forward)
    assert out.logits.shape == (1, 64, 256) and out.logits.dtype == np.float32 and np.isfinite(out.logits).all()
    assert sorted(out.activations) == ["embed", "final_norm", "layer_0", "layer_1"]
    assert all(a.shape == (1, 64, 64) and np.isfinite(a).all() for a in out.activations.values())
    assert llama.notes == []
    # the embedding entering block 0 is the table row of each token
    np.testing.assert_array_equal(out.activations["embed"][0], params["params-token_embedder-embedding"][tokens()[0]])


def test_same_params_twice_give_identical_logits_and_other_params_do_not(llama):
    params = llama.init(seed=0)
    first, second = llama.forward(params, tokens()), llama.forward(params, tokens())
    np.testing.assert_array_equal(first.logits, second.logits)
    changed = dict(params)
    changed["params-decoder-layers_1-mlp-wo-kernel"] = params["params-decoder-layers_1-mlp-wo-kernel"] * 2.0
    third = llama.forward(changed, tokens())
    np.testing.assert_array_equal(third.activations["layer_0"], first.activations["layer_0"])
    assert not np.allclose(third.activations["layer_1"], first.activations["layer_1"])


def test_a_misshapen_parameter_is_named(llama):
    params = llama.init(seed=0)
    params["params-decoder-layers_0-self_attention-query-kernel"] = np.zeros((64, 64), np.float32)
    with pytest.raises(maxtext.MaxTextError) as e:
        llama.forward(params, tokens())
    assert "'params-decoder-layers_0-self_attention-query-kernel'" in e.value.one_line()
    assert "(64, 4, 16)" in e.value.one_line()


def unscanned_to_scanned(unscanned: dict[str, np.ndarray], scanned_tree, cycle: int) -> dict[str, np.ndarray]:
    """Stack per-layer MaxText params into a scanned model's layout: block r, sub-layer j is global layer
    r * cycle + j; the unstacked remainder block continues after the last full block."""
    blocks = max((p.shape[a] for p in scanned_tree for a, what in p.stacked_axes
                  if what == "layers" and "-layers-layers_" in p.name), default=0)
    out = {}
    for p in scanned_tree:
        remainder = re.match(r"^(.*)-layers_remainder-layers_(\d+)-(.*)$", p.name)
        block = re.match(r"^(.*)-layers-layers_(\d+)-(.*)$", p.name)
        if remainder:
            pre, j, post = remainder.groups()
            out[p.name] = unscanned[f"{pre}-layers_{blocks * cycle + int(j)}-{post}"]
        elif block:
            pre, j, post = block.groups()
            axis = dict((w, a) for a, w in p.stacked_axes)["layers"]
            out[p.name] = np.stack([unscanned[f"{pre}-layers_{r * cycle + int(j)}-{post}"] for r in range(blocks)],
                                   axis=axis)
        else:
            out[p.name] = unscanned[p.name]
    return out


def test_scanned_gemma3_blocks_report_activations_in_global_layer_order():
    # 8 layers: one scanned block of 6 (local x5, global) and a remainder block of 2.
    name, overrides = tiny("gemma3")
    overrides = [o for o in overrides if not o.startswith(("base_num_decoder_layers", "use_multimodal"))]
    overrides += ["base_num_decoder_layers=8", "use_multimodal=false"]
    flat = maxtext.session(name, overrides + ["scan_layers=false"])
    params = flat.init(seed=0)
    reference = flat.forward(params, tokens())
    flat.close()
    scanned = maxtext.session(name, overrides + ["scan_layers=true"])
    stacked = unscanned_to_scanned(params, scanned.abstract_tree(), cycle=6)
    out = scanned.forward(stacked, tokens())
    scanned.close()
    assert sorted(out.activations) == sorted(reference.activations) and len(out.activations) == 10
    for key, value in reference.activations.items():
        np.testing.assert_allclose(out.activations[key], value, rtol=0, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(out.logits, reference.logits, rtol=0, atol=1e-5)


IN_PROCESS_SCRIPT = """
import json, sys
import numpy as np
from ckptmap import maxtext
name, overrides, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
s = maxtext.session(name, overrides)
params = s.init(seed=0)
forward = s.forward(params, np.load(out + "/tokens.npy"))
np.save(out + "/logits.npy", forward.logits)
print(json.dumps({"transport": s.transport_kind, "names": s.abstract_tree().names(),
                  "activations": sorted(forward.activations)}))
"""


def test_in_process_transport_matches_the_worker(llama, tmp_path):
    import subprocess

    from ckptmap.maxtext import transport

    name, overrides = tiny("llama3.1")
    np.save(tmp_path / "tokens.npy", tokens())
    run = subprocess.run([str(transport.worker_python()), "-c", IN_PROCESS_SCRIPT, name,
                          json.dumps(overrides + ["scan_layers=false"]), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["transport"] == "inprocess"
    assert report["names"] == llama.abstract_tree().names()
    assert report["activations"] == ["embed", "final_norm", "layer_0", "layer_1"]
    worker_logits = llama.forward(llama.init(seed=0), tokens()).logits
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), worker_logits, rtol=0, atol=1e-6)


def test_router_bias_outside_params_is_part_of_the_tree_and_the_forward():
    # MaxText keeps deepseek3's router score-correction bias in its own collection (MoEBiasVar), not in params.
    name, overrides = tiny("deepseek3")
    s = maxtext.session(name, overrides + ["scan_layers=true"])
    bias = "MoEBiasVar-decoder-moe_layers-DeepSeekMoeBlock_0-MoeBlock_0-gate-bias"
    tree = s.abstract_tree()
    assert tree[bias].shape == (2, 4) and tree[bias].stacked_axes == ((0, "layers"),)
    params = s.init(seed=0)
    assert bias in params
    base = s.forward(params, tokens())
    params[bias] = np.tile(np.array([0.0, 5.0, -5.0, 0.0], np.float32), (2, 1))
    moved = s.forward(params, tokens())
    np.testing.assert_array_equal(moved.activations["layer_0"], base.activations["layer_0"])  # dense layer
    assert not np.allclose(moved.activations["layer_1"], base.activations["layer_1"])
    s.close()
