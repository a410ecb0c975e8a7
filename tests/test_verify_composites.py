"""verify's HF runner on the benchmark fixtures' composite and heterogeneous HF configs, without MaxText.

- Gemma 4 (transformers 5.24): per-layer attributes (`head_dim`, `num_key_value_heads`) refuse plain reads on a
  heterogeneous config; the runner reads their global values and runs.
- Which model the HF runner builds for a composite (`runner_model`): the text part's causal LM where one exists
  (Gemma 3 / 4: no vision tower built), else the nearest image-text LM holding the decoder (Qwen3-VL's composite,
  Qwen3-Omni's thinker under `thinker.`), and which of its tensors a text forward does not read.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ckptmap.verify import HFRunner
from ckptmap.verify.hf_runner import config_value, hf_config, runner_model
from ckptmap.verify.weights import random_params, random_tokens

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "maxtext_tiny")


def fixture(family: str) -> dict:
    with open(os.path.join(FIXTURES, family, "config.json")) as f:
        return json.load(f)


def config_as_read(family: str):
    """The fixture's HF config as `hf:CONFIG.json` reads it (the benchmark's path): Gemma 4's `per_layer_config:
    null` is dropped, so transformers derives the per-layer configs and the config is heterogeneous."""
    from ckptmap.trees.hf_config import build_config, reconcile

    return build_config(reconcile(dict(fixture(family)["hf_config"]))[0], family)


def fixture_names(family: str) -> set[str]:
    with open(os.path.join(FIXTURES, family, "hf_params.json")) as f:
        return set(json.load(f))


# ---- Gemma 4: per-layer attributes ------------------------------------------------------------------------

def test_per_layer_attributes_are_read_as_their_global_values():
    text = config_as_read("gemma4-small").get_text_config()
    with pytest.raises(Exception, match="per-layer attribute"):
        text.head_dim  # transformers refuses the plain read
    assert config_value(text, "head_dim") == 16 and config_value(text, "num_key_value_heads") == 1
    assert config_value(text, "no_such_field", 7) == 7


@pytest.mark.parametrize("family", ["gemma4-small", "gemma4-dense"])
def test_gemma4_runs_its_text_part_under_the_composite_names(family):
    runner = HFRunner(config_as_read(family), layout="memory")
    assert runner.model_class.__name__ == "Gemma4ForCausalLM" and runner.part == ("text_config",)
    dims = runner.dims()
    assert dims["head_dim"] == 16 and dims["hidden"] == 64 and dims["layers"] == runner.n_layers
    names = set(runner.param_shapes())
    assert "model.language_model.embed_tokens.weight" in names
    assert not any("vision" in n for n in names)  # the fixture's 570M-parameter vision tower is not built
    # every text tensor of the fixture the model has is there under the fixture's (the composite's) name
    text = {n for n in fixture_names(family) if n.startswith("model.language_model.")}
    assert len(text - names) <= len(text) // 10  # the rest: v_norm / v_proj the fixture has and the model lacks
    fwd = runner.forward(random_params(runner.param_shapes(), 0, runner.aliases), random_tokens(runner.vocab, 8))
    assert fwd.logits.shape == (1, 8, runner.vocab) and np.isfinite(fwd.logits).all()
    assert f"layer_{runner.n_layers - 1}" in fwd.activations


# ---- which model a composite config builds ----------------------------------------------------------------

@pytest.mark.parametrize("family, model_class, part", [
    ("gemma3", "Gemma3ForCausalLM", ("text_config",)),
    ("qwen3.5", "Qwen3_5MoeForCausalLM", ("text_config",)),
    ("qwen3-vl", "Qwen3VLForConditionalGeneration", ()),
    ("qwen3-vl-moe", "Qwen3VLMoeForConditionalGeneration", ()),
    ("qwen3-omni", "Qwen3OmniMoeThinkerForConditionalGeneration", ("thinker_config",)),
    ("llama3.1", "LlamaForCausalLM", ()),
])
def test_runner_model_for_each_fixture(family, model_class, part):
    _, cls, keys = runner_model(hf_config(fixture(family)["hf_config"]))
    assert cls.__name__ == model_class and keys == part


@pytest.mark.parametrize("family, layout", [("qwen3-vl", "saved"), ("qwen3-omni", "saved")])
def test_decoders_without_a_causal_lm_class_run_under_the_fixture_names(family, layout):
    """Qwen3-VL's composite and Qwen3-Omni's thinker run on text tokens; their names are the fixture's (the
    thinker's under `thinker.`, although the whole Omni model cannot be built from the fixture's talker config)."""
    runner = HFRunner(fixture(family)["hf_config"], layout=layout)
    names = set(runner.param_shapes()) | set(runner.aliases)
    assert fixture_names(family) <= names
    fwd = runner.forward(random_params(runner.param_shapes(), 0, runner.aliases), random_tokens(runner.vocab, 8))
    assert fwd.logits.shape[:2] == (1, 8) and np.isfinite(fwd.logits).all()
    assert {"embed", "layer_0", "final_norm"} <= set(fwd.activations)


def test_the_text_forward_does_not_read_the_vision_tower():
    runner = HFRunner(fixture("qwen3-vl")["hf_config"], layout="memory")
    params = random_params(runner.param_shapes(), 0, runner.aliases)
    unread = runner.unread_params(params, random_tokens(runner.vocab, 16))
    vision = {n for n in runner.param_shapes() if n.startswith("model.visual.")}
    assert vision and vision <= unread
    assert not any(n.startswith("model.language_model.") for n in unread)


def test_expert_tensors_take_the_checkpoint_layout_transformers_declares():
    """Qwen3-VL-MoE checkpoints hold experts [E, in, out], the modules [E, out, in]; transformers' Transpose(check_dims)
    leaves a square tensor (the fixture's gate_up_proj: hidden 64 == 2 x 32) untransposed. The runner applies the
    declared transpose both ways: its names and shapes are the fixture's, and every expert tensor is transposed on
    load, the square one included."""
    runner = HFRunner(fixture("qwen3-vl-moe")["hf_config"], layout="saved")
    with open(os.path.join(FIXTURES, "qwen3-vl-moe", "hf_params.json")) as f:
        shapes = {n: tuple(s) for n, s in json.load(f).items()}
    for name in ("model.language_model.layers.0.mlp.experts.down_proj",
                 "model.language_model.layers.0.mlp.experts.gate_up_proj"):
        assert runner.param_shapes()[name] == shapes[name]
    params = random_params(runner.param_shapes(), 0, runner.aliases)
    held = runner.module_params(params)
    for name in ("model.language_model.layers.0.mlp.experts.down_proj",
                 "model.language_model.layers.0.mlp.experts.gate_up_proj"):
        np.testing.assert_array_equal(held[name], params[name].transpose(0, 2, 1))


def test_unread_tensors_of_a_model_loaded_through_the_converting_loader():
    """Qwen3-Omni's thinker takes the checkpoint names (`thinker.audio_tower...`) through transformers' loader: the
    gradients are named back the same way."""
    runner = HFRunner(fixture("qwen3-omni")["hf_config"], layout="saved")
    params = random_params(runner.param_shapes(), 0, runner.aliases)
    unread = runner.unread_params(params, random_tokens(runner.vocab, 16))
    towers = {n for n in runner.param_shapes() if n.startswith(("thinker.audio_tower.", "thinker.visual."))}
    assert towers and towers <= unread
    assert not any(n.startswith(("thinker.model.", "thinker.lm_head")) for n in unread)
