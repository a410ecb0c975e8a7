"""Code layouts kept beside a tree: validation with file + tensor in the error, the sibling file, and the solver."""

from __future__ import annotations

import json

import pytest

from ckptmap.errors import TreeError
from ckptmap.trees import read_tree
from ckptmap.trees.code_layouts import check_layout


def test_check_layout_names_the_problem():
    assert check_layout({"axis": 1, "rounds": 2, "blocks": [2, 2]}, (64, 8), "f.json", "t") == \
        {"axis": 1, "rounds": 2, "blocks": [2, 2]}
    with pytest.raises(TreeError) as e:
        check_layout({"axis": 1, "rounds": 3, "blocks": [2, 2]}, (64, 8), "f.json", "ba")
    assert "f.json" in e.value.one_line() and "ba" in e.value.one_line()
    with pytest.raises(TreeError):
        check_layout({"axis": 2, "rounds": 1, "blocks": [4, 4]}, (64, 8), None, "x")
    with pytest.raises(TreeError):
        check_layout({"axis": 1, "rounds": 1, "blocks": [8]}, (64, 8), None, "x")


def test_a_sibling_file_attaches_layouts_by_side(tmp_path):
    (tmp_path / "hf_params.json").write_text(json.dumps({"model.layers.0.mlp.experts.gate_up_proj": [4, 64, 64]}))
    (tmp_path / "maxtext_params.scan0.json").write_text(json.dumps({"params-decoder-layers_0-mlp-wi_0": [4, 64, 32]}))
    layouts = {"hf": {"model.layers.0.mlp.experts.gate_up_proj": {"axis": 2, "rounds": 32, "blocks": [1, 1]}},
               "scan0": {}}
    (tmp_path / "code_layouts.json").write_text(json.dumps(layouts))
    hf = read_tree(str(tmp_path / "hf_params.json"))
    assert hf.meta["code_layouts"] == layouts["hf"]
    assert read_tree(str(tmp_path / "maxtext_params.scan0.json")).meta["code_layouts"] == {}
    layouts["hf"]["model.layers.9.nothing"] = {"axis": 0, "rounds": 1, "blocks": [1, 1]}
    (tmp_path / "code_layouts.json").write_text(json.dumps(layouts))
    with pytest.raises(TreeError) as e:
        read_tree(str(tmp_path / "hf_params.json"))
    assert "code_layouts.json" in e.value.one_line() and "model.layers.9.nothing" in e.value.one_line()


def test_transfer_from_a_tiny_twin():
    from ckptmap.trees.code_layouts import transfer_layout

    dims_t = {"linear_num_key_heads": 2, "kv_heads": 1, "heads": 4}
    dims_f = {"linear_num_key_heads": 16, "kv_heads": 4, "heads": 32}
    # gpt-oss interleave keeps its part count
    assert transfer_layout({"axis": 2, "rounds": 32, "blocks": [1, 1]}, (4, 64, 64), (32, 2880, 5760), dims_t, dims_f) \
        == {"axis": 2, "rounds": 2880, "blocks": [1, 1]}
    # contiguous keeps proportions
    assert transfer_layout({"axis": 0, "rounds": 1, "blocks": [64, 16, 16]}, (96, 64), (6144, 4096), dims_t, dims_f) \
        == {"axis": 0, "rounds": 1, "blocks": [4096, 1024, 1024]}
    # per-key-head groups take the full key-head count
    assert transfer_layout({"axis": 1, "rounds": 2, "blocks": [16, 16, 32, 32]}, (64, 192), (2048, 12288), dims_t,
                           dims_f) == {"axis": 1, "rounds": 16, "blocks": [128, 128, 256, 256]}
    # two head counts named by the tiny group count, both fitting: undetermined
    assert transfer_layout({"axis": 1, "rounds": 2, "blocks": [16, 16, 32, 32]}, (64, 192), (2048, 12288),
                           dict(dims_t, kv_heads=2), dims_f) is None
