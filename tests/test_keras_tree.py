"""The `keras:` SPEC: a KerasHub model read as a ParamTree (paths, shapes, dtypes, dims), built without weights."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("keras_hub") is None:
    pytest.skip("KerasHub is not installed", allow_module_level=True)

from ckptmap.errors import TreeError  # noqa: E402
from ckptmap.trees import read_tree  # noqa: E402

LLAMA = ("keras:llama3 vocabulary_size=128 num_layers=2 hidden_dim=64 num_query_heads=4 num_key_value_heads=2 "
         "intermediate_dim=96")


def test_a_family_name_with_sizes_reads_its_causal_lm():
    tree = read_tree(LLAMA)
    assert tree.framework == "keras" and tree.meta["model"]["task"] == "Llama3CausalLM"
    assert tree["transformer_layer_0/self_attention/query/kernel"].shape == (64, 4, 16)
    assert tree["transformer_layer_1/feedforward_output_dense/kernel"].shape == (96, 64)
    assert tree["token_embedding/reverse_embeddings"].shape == (64, 128)
    assert tree.meta["dims"] == {"vocab": 128, "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "mlp": 96,
                                 "head_dim": 16}


def test_a_class_name_and_an_encoder_family():
    moe = read_tree("keras:MixtralCausalLM vocabulary_size=128 num_layers=1 hidden_dim=32 num_query_heads=4 "
                    "num_key_value_heads=2 intermediate_dim=48 num_experts=4")
    experts = [p for p in moe if p.stacked_axes]
    assert len(experts) == 3 and all(p.stacked_axes == ((0, "experts"),) and p.shape[0] == 4 for p in experts)
    bert = read_tree("keras:bert vocabulary_size=128 num_layers=1 hidden_dim=32 num_heads=4 intermediate_dim=48")
    assert bert.meta["model"]["task"] == "BertMaskedLM"
    assert bert["mlm_head/output_bias"].shape == (128,)
    assert bert.meta["dims"]["heads"] == 4 and bert.meta["dims"]["kv_heads"] == 4
    backbone = read_tree("keras:bert task=backbone vocabulary_size=128 num_layers=1 hidden_dim=32 num_heads=4 "
                         "intermediate_dim=48")
    assert not any(n.startswith("mlm_head") for n in backbone.names())


def test_sizes_from_an_hf_config_through_keras_hubs_converter(tmp_path):
    cfg = {"model_type": "qwen3", "vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 48,
           "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    direct = read_tree(f"keras:{tmp_path}")
    named = read_tree(f"keras:qwen3 hf={tmp_path / 'config.json'}")
    assert direct.shapes() == named.shapes()
    assert direct["transformer_layer_1/self_attention/key/kernel"].shape == (32, 2, 8)
    assert direct.meta["dims"]["head_dim"] == 8 and direct.meta["model"]["from_hf_model_type"] == "qwen3"
    with pytest.raises(TreeError, match="converts to Qwen3Backbone"):
        read_tree(f"keras:llama3 hf={tmp_path / 'config.json'}")


def test_bad_specs_name_what_is_wrong():
    with pytest.raises(TreeError, match="needs num_layers"):
        read_tree("keras:llama3 vocabulary_size=12")
    with pytest.raises(TreeError, match="no model class or family"):
        read_tree("keras:notamodel")
    with pytest.raises(TreeError, match="takes no argument 'hidden_size'"):
        read_tree(LLAMA + " hidden_size=3")


def test_importing_ckptmap_does_not_import_keras():
    code = "import ckptmap, ckptmap.trees, ckptmap.frameworks as f; f.adapters(); import sys; " \
           "print('keras' in sys.modules, 'keras_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.split() == ["False", "False"]
