"""Safetensors trees from headers only: single files, sharded directories with an index, and broken headers."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from ckptmap.errors import TreeError
from ckptmap.trees import read_tree


def shard(path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> str:
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def test_single_file_names_shapes_dtypes(tmp_path):
    path = shard(tmp_path / "model.safetensors", {
        "model.embed_tokens.weight": torch.zeros(16, 8, dtype=torch.bfloat16),
        "model.norm.weight": torch.zeros(8),
        "model.layers.0.mlp.experts.gate_up_proj": torch.zeros(4, 8, 6, dtype=torch.float16),
    }, metadata={"format": "pt"})
    tree = read_tree(path)
    assert tree.framework == "safetensors"
    assert tree.shapes() == {"model.embed_tokens.weight": (16, 8), "model.layers.0.mlp.experts.gate_up_proj": (4, 8, 6),
                             "model.norm.weight": (8,)}
    assert tree["model.embed_tokens.weight"].dtype == "bfloat16"
    assert tree["model.layers.0.mlp.experts.gate_up_proj"].dtype == "float16"
    assert tree.total_bytes == os.path.getsize(path) - 8 - struct.unpack("<Q", open(path, "rb").read(8))[0]
    assert tree.meta["file_metadata"] == {"format": "pt"}


def test_sharded_directory_through_its_index(tmp_path):
    shard(tmp_path / "model-00001-of-00002.safetensors", {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(5)})
    shard(tmp_path / "model-00002-of-00002.safetensors", {"c.weight": torch.zeros(7, 1, dtype=torch.int8)})
    index = {"metadata": {"total_size": 24 + 20 + 7},
             "weight_map": {"c.weight": "model-00002-of-00002.safetensors",
                            "a.weight": "model-00001-of-00002.safetensors",
                            "b.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    tree = read_tree(str(tmp_path))
    assert tree.names() == ["c.weight", "a.weight", "b.weight"]  # the index's order
    assert tree["c.weight"].dtype == "int8" and tree.meta["shards"] == 2
    assert read_tree(str(tmp_path / "model.safetensors.index.json")).shapes() == tree.shapes()


def test_index_naming_a_tensor_its_shard_lacks(tmp_path):
    shard(tmp_path / "s1.safetensors", {"a": torch.zeros(1)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "s1.safetensors", "ghost.weight": "s1.safetensors"}}))
    with pytest.raises(TreeError) as e:
        read_tree(str(tmp_path))
    assert e.value.key == "ghost.weight"


def test_directory_without_index_reads_every_file(tmp_path):
    shard(tmp_path / "x.safetensors", {"a": torch.zeros(2)})
    shard(tmp_path / "y.safetensors", {"b": torch.zeros(3)})
    assert read_tree(str(tmp_path)).shapes() == {"a": (2,), "b": (3,)}


def test_same_name_in_two_files_is_a_duplicate(tmp_path):
    shard(tmp_path / "x.safetensors", {"a": torch.zeros(2)})
    shard(tmp_path / "y.safetensors", {"a": torch.zeros(2)})
    with pytest.raises(TreeError, match="duplicated parameter name"):
        read_tree(str(tmp_path))


def test_truncated_header(tmp_path):
    full = open(shard(tmp_path / "ok.safetensors", {"w": torch.zeros(3, 3)}), "rb").read()
    (n,) = struct.unpack("<Q", full[:8])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full[: 8 + n // 2])
    with pytest.raises(TreeError) as e:
        read_tree(str(cut))
    assert e.value.one_line() == (f"{cut}: truncated safetensors header: it declares {n} bytes but the file has "
                                  f"only {n // 2} after the length")


def test_file_shorter_than_the_length_field(tmp_path):
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x10\x00")
    with pytest.raises(TreeError, match="truncated safetensors header: file has 2 bytes"):
        read_tree(str(tiny))


def test_header_that_is_not_json(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(TreeError, match="invalid safetensors header JSON"):
        read_tree(str(bad))


def test_implausible_header_length(tmp_path):
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(TreeError, match="implausible"):
        read_tree(str(bad))
