"""verify's KerasHub runner: logits from the given arrays (no weights assigned), unread variables, SPEC pairing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("keras_hub") is None:
    pytest.skip("KerasHub is not installed", allow_module_level=True)

from ckptmap.frameworks import complete_pair  # noqa: E402
from ckptmap.verify.specs import runner_for  # noqa: E402
from ckptmap.verify.weights import random_params  # noqa: E402

QWEN3 = ("keras:qwen3 vocabulary_size=64 num_layers=2 hidden_dim=32 num_query_heads=4 num_key_value_heads=2 "
         "head_dim=8 intermediate_dim=48")


def test_the_runner_computes_causal_lm_logits_from_the_arrays_it_is_given():
    runner = runner_for(QWEN3)
    params = random_params(runner.param_shapes(), seed=0)
    tokens = np.arange(12, dtype=np.int32)[None] % 64
    first = runner.forward(params, tokens)
    assert first.logits.shape == (1, 12, 64)
    assert set(first.activations) == {"layer_0", "layer_1", "final_norm"}
    again = runner.forward(params, tokens)
    assert np.array_equal(first.logits, again.logits)
    other = runner.forward(random_params(runner.param_shapes(), seed=1), tokens)
    assert np.max(np.abs(other.logits - first.logits)) > 1e-3
    # the built variables are never assigned: Keras' own call on its init differs from the seeded forward
    own = np.asarray(runner.net(runner.inputs(tokens)))
    assert np.max(np.abs(own - first.logits)) > 1e-6
    runner.close()


@pytest.mark.slow
def test_a_masked_lm_predicts_every_position_and_its_pooler_is_unread():
    runner = runner_for("keras:bert vocabulary_size=64 num_layers=1 hidden_dim=32 num_heads=4 intermediate_dim=48 "
                        "max_sequence_length=32")
    assert runner.unread == {"pooled_dense/kernel", "pooled_dense/bias"}
    assert "pooled_dense/kernel" not in runner.param_shapes()
    out = runner.forward(random_params(runner.param_shapes(), seed=0), np.arange(10, dtype=np.int32)[None])
    assert out.logits.shape == (1, 10, 64)


def test_a_family_target_takes_its_sizes_from_the_hf_source(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "llama"}')
    src, tgt = complete_pair(f"hf:{cfg}", "keras:llama3")
    assert src == f"hf:{cfg}" and tgt == f"keras:llama3 hf={cfg}"
    sized = "keras:llama3 vocabulary_size=8"
    assert complete_pair(f"hf:{cfg}", sized) == (f"hf:{cfg}", sized)
