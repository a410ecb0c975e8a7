"""JSON trees: the fixtures' name -> shape form, name -> {shape, dtype}, the ckptmap document, and bad input."""

from __future__ import annotations

import glob
import json
import os

import pytest

from ckptmap.errors import TreeError
from ckptmap.trees import read_tree, write_tree
from ckptmap.trees.model import ParamInfo, ParamTree

DATA = os.path.join(os.path.dirname(__file__), "data")
TREE_FILES = sorted(glob.glob(os.path.join(DATA, "maxtext_tiny", "*", "*_params*.json"))
                    + glob.glob(os.path.join(DATA, "agent_context", "*", "*.json")))


def write(tmp_path, text: str, name: str = "tree.json") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("path", TREE_FILES, ids=lambda p: os.path.relpath(p, DATA))
def test_every_fixture_tree_reads_with_its_shapes(path):
    with open(path) as f:
        raw = json.load(f)
    tree = read_tree(path)
    assert tree.shapes() == {k: tuple(v) for k, v in raw.items()}
    assert tree.meta["naming"] == ("maxtext" if "maxtext" in os.path.basename(path) else "hf")


def test_agent_context_llama3_is_the_full_8b():
    tree = read_tree(os.path.join(DATA, "agent_context", "llama3", "hf_params.json"))
    assert len(tree) == 291
    assert tree["model.layers.31.mlp.down_proj.weight"].shape == (4096, 14336)
    assert tree.total_params == 8_030_261_248


def test_fixture_trees_take_dims_from_the_config_beside_them():
    family = os.path.join(DATA, "maxtext_tiny", "deepseek3")
    hf = read_tree(os.path.join(family, "hf_params.json"))
    mt = read_tree(os.path.join(family, "maxtext_params.scan1.json"))
    assert hf.meta["dims"]["q_lora_rank"] == 24 and hf.meta["dims"]["head_dim"] == 8
    assert mt.meta["dims"] == {"hidden": 64, "heads": 4, "kv_heads": 4, "head_dim": 128, "mlp": 128, "moe_mlp": 32,
                               "layers": 3, "vocab": 256, "experts": 4}
    assert mt.meta["dims_from"].endswith(os.path.join("deepseek3", "config.json"))


def test_shape_and_dtype_objects(tmp_path):
    path = write(tmp_path, json.dumps({
        "a.weight": {"shape": [4, 2], "dtype": "BF16"},
        "params-decoder-layers-mlp-wi_0-kernel": {"shape": [8, 3, 16], "dtype": "float32",
                                                  "stacked_axes": {"1": "layers"}, "tags": ["x"]},
        "b": [3]}))
    tree = read_tree(path)
    assert tree["a.weight"].dtype == "bfloat16" and tree["a.weight"].nbytes == 16
    kernel = tree["params-decoder-layers-mlp-wi_0-kernel"]
    assert kernel.stacked_axes == ((1, "layers"),) and kernel.tags == ("x",)
    assert tree["b"].dtype == "float32"


def test_fixture_config_json_reads_as_an_hf_tree():
    tree = read_tree(os.path.join(DATA, "maxtext_tiny", "llama3.1", "config.json"))
    assert tree.framework == "hf" and len(tree) == 21


def test_document_round_trip(tmp_path):
    tree = read_tree("hf:" + os.path.join(DATA, "maxtext_tiny", "gemma2", "config.json"))
    out = str(tmp_path / "sub" / "gemma2.json")
    write_tree(tree, out)
    back = read_tree(out)
    assert back.params == tree.params
    assert back.meta == tree.meta and back.framework == "hf" and back.origin == tree.origin
    assert back["model.embed_tokens.weight"].tags == ("tied",)
    assert os.listdir(tmp_path / "sub") == ["gemma2.json"]  # no temp file left behind


def test_round_trip_keeps_stacked_axes(tmp_path):
    tree = ParamTree.from_items([ParamInfo("params-decoder-layers-x", (4, 2, 8), "bfloat16", ((1, "layers"),))],
                                origin="made", framework="maxtext", meta={"dims": {"layers": 2}})
    write_tree(tree, str(tmp_path / "t.json"))
    back = read_tree(str(tmp_path / "t.json"))
    assert back["params-decoder-layers-x"] == tree["params-decoder-layers-x"]


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(TreeError) as e:
        read_tree(path)
    assert e.value.one_line() == f"{path}: no such file"


def test_invalid_json(tmp_path):
    path = write(tmp_path, '{"a": [1, 2],\n "b": [3,]}')
    with pytest.raises(TreeError) as e:
        read_tree(path)
    assert e.value.file == path
    assert "invalid JSON at line 2" in e.value.one_line()


@pytest.mark.parametrize("shape", ["[1, -2]", "[1.5]", "\"4x4\"", "[true]", "7", "[[2]]"])
def test_bad_shape_names_the_parameter(tmp_path, shape):
    path = write(tmp_path, '{"ok": [1], "model.bad.weight": %s}' % shape)
    with pytest.raises(TreeError) as e:
        read_tree(path)
    assert e.value.file == path and e.value.key == "model.bad.weight"


def test_duplicated_name(tmp_path):
    path = write(tmp_path, '{"model.norm.weight": [4], "x": [1], "model.norm.weight": [4]}')
    with pytest.raises(TreeError) as e:
        read_tree(path)
    assert e.value.one_line() == f"{path}: parameter 'model.norm.weight': duplicated name in JSON"


def test_not_an_object(tmp_path):
    path = write(tmp_path, "[[1, 2]]")
    with pytest.raises(TreeError, match="expected a JSON object name -> shape, got a list"):
        read_tree(path)


def test_unknown_entry_field(tmp_path):
    path = write(tmp_path, '{"w": {"shape": [2], "dtyp": "f32"}}')
    with pytest.raises(TreeError, match=r"unknown field\(s\) \['dtyp'\]"):
        read_tree(path)


def test_overrides_on_a_tree_file_are_refused(tmp_path):
    path = write(tmp_path, '{"w": [2]}')
    with pytest.raises(TreeError, match="overrides apply to a config"):
        read_tree(f"{path} hidden_size=3")
