"""Full-size HF configs (MaxText's checkpoint-conversion hyperparameters, tests/data/hf_configs) read on the
meta device: the parameter counts are the published model sizes."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from ckptmap.trees import read_tree

CONFIGS = os.path.join(os.path.dirname(__file__), "data", "hf_configs")


# The dtype is the config's `dtype` (float32 when it names none), except where the model keeps modules in float32
# (DeepSeek-V3's 58 router gates: weight and e_score_correction_bias).
@pytest.mark.parametrize("name, tensors, params, dtypes", [
    ("llama3.1-8b", 291, 8_030_261_248, {"float32": 291}),
    ("llama3.1-405b", 1_137, 405_853_388_800, {"float32": 1_137}),
    ("qwen3-235b-a22b", 36_945, 235_093_634_560, {"bfloat16": 36_945}),
    ("mixtral-8x7b", 995, 46_702_792_704, {"bfloat16": 995}),
    ("deepseek3-671b", 45_395, 671_026_419_200, {"bfloat16": 45_279, "float32": 116}),
    ("gemma3-27b-text", 808, 27_009_002_240, {"float32": 808}),
])
def test_full_size_config_counts(name, tensors, params, dtypes):
    tree = read_tree(f"hf:{os.path.join(CONFIGS, name + '.json')}")
    assert (len(tree), tree.total_params) == (tensors, params)
    assert dict(Counter(p.dtype for p in tree)) == dtypes


def test_deepseek_v3_saved_layout_is_per_expert():
    tree = read_tree(f"hf:{os.path.join(CONFIGS, 'deepseek3-671b.json')}")
    assert tree["model.layers.60.mlp.experts.255.down_proj.weight"].shape == (7168, 2048)
    assert tree["model.layers.3.self_attn.kv_a_proj_with_mqa.weight"].shape == (576, 7168)
    assert "model.layers.2.mlp.experts.0.up_proj.weight" not in tree  # first_k_dense_replace=3
    assert tree.meta["dims"]["experts"] == 256 and tree.meta["dims"]["kv_lora_rank"] == 512
