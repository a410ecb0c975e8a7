"""`maxtext:` trees from the real MaxText model (jax.eval_shape in the worker) match the bundled fixtures exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptmap import maxtext

pytestmark = pytest.mark.maxtext

DATA = Path(__file__).parent / "data" / "maxtext_tiny"
FAMILIES = {"llama3.1": "llama3.1-8b", "qwen3": "qwen3-0.6b", "mixtral": "mixtral-8x7b", "gemma2": "gemma2-2b",
            "deepseek2": "deepseek2-16b"}


@pytest.fixture(scope="module", autouse=True)
def maxtext_is_reachable():
    assert maxtext.available(), "MaxText is not reachable: build .venv-maxtext (make setup) or set CKPTMAP_MAXTEXT_PYTHON"


def family_config(family: str) -> dict:
    return json.loads((DATA / family / "config.json").read_text())


@pytest.mark.parametrize("scan", [0, 1])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_maxtext_tree_matches_the_fixture_names_and_shapes(family, scan):
    cfg = family_config(family)
    assert cfg["maxtext_model_name"] == FAMILIES[family]
    tree = maxtext.read_maxtext_tree(cfg["maxtext_model_name"], cfg["maxtext_overrides"], scan_layers=bool(scan))
    expected = json.loads((DATA / family / f"maxtext_params.scan{scan}.json").read_text())

    assert {name: list(shape) for name, shape in tree.shapes().items()} == expected
    assert tree.framework == "maxtext"
    assert tree.origin.startswith(f"maxtext:{cfg['maxtext_model_name']} ")
    config = tree.meta["config"]
    for key, value in cfg["maxtext_config_values"][f"scan{scan}"].items():
        assert config[key] == value, key
    dims = tree.meta["dims"]
    assert (dims["hidden"], dims["heads"], dims["layers"], dims["vocab"]) == (
        config["emb_dim"], config["num_query_heads"], config["num_decoder_layers"], config["vocab_size"])


@pytest.mark.parametrize("scan", [0, 1])
def test_scanned_parameters_carry_their_layer_axis(scan):
    cfg = family_config("deepseek2")
    tree = maxtext.read_maxtext_tree(cfg["maxtext_model_name"], cfg["maxtext_overrides"], scan_layers=bool(scan))
    wi = tree["params-decoder-moe_layers-DeepSeekMoeBlock_0-MoeBlock_0-wi_0" if scan
              else "params-decoder-moe_layers_1-DeepSeekMoeBlock_0-MoeBlock_0-wi_0"]
    if scan:
        assert wi.shape == (4, 2, 64, 32) and wi.stacked_axes == ((0, "experts"), (1, "layers"))
        assert tree["params-decoder-dense_layers-mlp-wo-kernel"].stacked_axes == ((1, "layers"),)
    else:
        assert wi.shape == (4, 64, 32) and wi.stacked_axes == ((0, "experts"),)
    assert tree["params-token_embedder-embedding"].stacked_axes == ()
    assert tree.meta["dims"]["kv_lora_rank"] == 32 and "head_dim" not in tree.meta["dims"]


def test_tied_embedding_is_tagged():
    cfg = family_config("qwen3")
    tree = maxtext.read_maxtext_tree(cfg["maxtext_model_name"], cfg["maxtext_overrides"], scan_layers=True)
    assert tree["params-token_embedder-embedding"].tags == ("tied",)
    assert not any(name.endswith("logits_dense-kernel") for name in tree.names())


def test_maxtext_rejecting_an_override_is_a_one_line_error_with_its_message():
    with pytest.raises(maxtext.MaxTextError) as e:
        maxtext.read_maxtext_tree("llama3.1-8b", ["base_emb_dim=abc"])
    message = e.value.one_line()
    assert message.startswith("maxtext:llama3.1-8b base_emb_dim=abc:")
    assert "base_emb_dim" in message and "valid integer" in message and "\n" not in message
