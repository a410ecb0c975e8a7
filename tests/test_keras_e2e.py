"""HF -> KerasHub end to end: a tiny HF checkpoint (save_pretrained) -> `solve --verify` -> `convert --output
keras:DIR` -> KerasHub's own `from_preset` -> the same logits as transformers."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

if importlib.util.find_spec("keras_hub") is None:
    pytest.skip("KerasHub is not installed", allow_module_level=True)

from ckptmap.benchmarks.keras_end_to_end import hf_checkpoint  # noqa: E402
from ckptmap.cli import main  # noqa: E402
from ckptmap.verify.metrics import compare_logits  # noqa: E402

LLAMA = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96, "tie_word_embeddings": False,
         "rms_norm_eps": 1e-6}


@pytest.mark.slow
def test_hf_llama_to_a_keras_preset_that_from_preset_loads(tmp_path):
    import torch

    from ckptmap.frameworks.kerashub.preset import load_preset

    hf_model = hf_checkpoint(str(tmp_path / "hf"), LLAMA)
    mapping = tmp_path / "m.json"
    assert main(["solve", "--source", f"hf:{tmp_path / 'hf'}", "--target", "keras:llama3", "--verify", "--quiet",
                 "--out", str(mapping)]) == 0
    assert json.loads(mapping.read_text())["meta"]["models"]["target"]["task"] == "Llama3CausalLM"
    preset = tmp_path / "preset"
    assert main(["convert", "--mapping", str(mapping), "--input", str(tmp_path / "hf"), "--output",
                 f"keras:{preset}", "--quiet"]) == 0
    assert {"config.json", "model.weights.h5", "task.json", "metadata.json"} <= {p.name for p in preset.iterdir()}

    keras_model = load_preset(str(preset))
    assert type(keras_model).__name__ == "Llama3CausalLM"
    tokens = np.random.default_rng(0).integers(0, 128, size=(1, 24)).astype(np.int32)
    keras_logits = np.asarray(keras_model({"token_ids": tokens, "padding_mask": np.ones_like(tokens)}))
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    assert np.max(np.abs(keras_logits - hf_logits)) <= 1e-4
    assert compare_logits(hf_logits, keras_logits).kl_max <= 1e-6

    weights = tmp_path / "model.weights.h5"
    assert main(["convert", "--mapping", str(mapping), "--input", str(tmp_path / "hf"), "--output",
                 f"keras:{weights}", "--quiet"]) == 0
    from ckptmap.frameworks.kerashub.preset import build_with

    record = json.loads(mapping.read_text())["meta"]["models"]["target"]
    fresh = build_with(record, None, str(weights))
    fresh.load_weights(str(weights))
    again = np.asarray(fresh({"token_ids": tokens, "padding_mask": np.ones_like(tokens)}))
    assert np.max(np.abs(again - keras_logits)) <= 1e-6


def test_a_keras_output_needs_a_mapping_solved_for_a_keras_model(tmp_path):
    from ckptmap.errors import MappingError
    from ckptmap.frameworks.kerashub.preset import model_record
    from ckptmap.mapping import Mapping

    with pytest.raises(MappingError, match="not a recorded KerasHub model"):
        model_record(Mapping(rules=[]), "target")


def test_only_variables_the_mapping_leaves_unmapped_keep_keras_init():
    from ckptmap.errors import MappingError
    from ckptmap.frameworks.kerashub.preset import build_with
    from ckptmap.trees import read_tree

    tree = read_tree("keras:llama3 vocabulary_size=32 num_layers=1 hidden_dim=16 num_query_heads=2 "
                     "num_key_value_heads=1 intermediate_dim=24")
    record = tree.meta["model"]
    arrays = {n: np.full(s, 0.5, np.float32) for n, s in tree.shapes().items() if n != "token_embedding/embeddings"}
    with pytest.raises(MappingError, match="no tensor for this Keras variable"):
        build_with(record, arrays, "out")
    net = build_with(record, arrays, "out", keep_init={"token_embedding/embeddings"})
    values = {v.path: np.asarray(v.value) for v in net.weights}
    assert np.all(values["sequence_output_layernorm/scale"] == 0.5)
    assert not np.all(values["token_embedding/embeddings"] == 0.5)
