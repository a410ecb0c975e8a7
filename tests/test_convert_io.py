"""checkpoint_io: every format round-trips tensors exactly, lazily, atomically, and names what is wrong."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from ckptmap import checkpoint_io as cio
from ckptmap.errors import CkptmapError

ARRAYS = {
    "model.layers.0.mlp.up_proj.weight": np.arange(24, dtype=np.float32).reshape(6, 4),
    "model.norm.weight": np.linspace(-1, 1, 8).astype(ml_dtypes.bfloat16),
    "transposed": np.arange(12, dtype=np.float16).reshape(3, 4).T,  # not C-contiguous on the way in
    "scalar": np.array(7, dtype=np.int64),
    "empty": np.zeros((0, 3), dtype=np.int32),
    "fp8": np.array([0.5, -2.0], dtype=ml_dtypes.float8_e4m3fn),
}


def assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want) or sorted(got) == sorted(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        assert got[name].tobytes() == np.ascontiguousarray(arr).tobytes(), name


@pytest.mark.parametrize("out", ["ckpt.npz", "ckpt.safetensors", "sharded_dir"])
def test_each_format_round_trips_bit_exact_with_dtypes(tmp_path, out):
    path = str(tmp_path / out)
    cio.write_all(path, ARRAYS)
    back = cio.read_all(path)
    assert_same(back, ARRAYS)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_sharded_writer_splits_at_max_size_and_writes_the_index(tmp_path):
    arrays = {f"t{i}": np.full((10,), i, np.float32) for i in range(5)}  # 40 bytes each
    path = str(tmp_path / "out")
    cio.write_all(path, arrays, max_shard_bytes=100)
    files = sorted(os.listdir(path))
    assert files == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                     "model-00003-of-00003.safetensors", "model.safetensors.index.json"]
    index = json.load(open(os.path.join(path, cio.INDEX_NAME)))
    assert index["metadata"]["total_size"] == 200
    assert index["weight_map"]["t0"] == "model-00001-of-00003.safetensors"
    assert index["weight_map"]["t4"] == "model-00003-of-00003.safetensors"
    assert_same(cio.read_all(path), arrays)


def test_a_tensor_larger_than_a_shard_gets_its_own_shard(tmp_path):
    arrays = {"small": np.zeros(2, np.float32), "big": np.zeros(100, np.float32), "tail": np.zeros(2, np.float32)}
    cio.write_all(str(tmp_path / "d"), arrays, max_shard_bytes=16)
    weight_map = json.load(open(tmp_path / "d" / cio.INDEX_NAME))["weight_map"]
    assert len(set(weight_map.values())) == 3


def test_safetensors_files_interoperate_with_the_safetensors_library(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    ours = str(tmp_path / "ours.safetensors")
    cio.write_all(ours, {"w": np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 3)})
    loaded = load_file(ours)
    assert loaded["w"].dtype == torch.bfloat16
    assert loaded["w"].float().tolist() == [[0, 1, 2], [3, 4, 5]]

    theirs = str(tmp_path / "theirs.safetensors")
    save_file({"a": torch.arange(4, dtype=torch.bfloat16), "b": torch.ones(2, 2)}, theirs)
    back = cio.read_all(theirs)
    assert back["a"].dtype == ml_dtypes.bfloat16 and back["a"].astype(np.float32).tolist() == [0, 1, 2, 3]
    assert back["b"].dtype == np.float32


def test_numpy_savez_of_bfloat16_is_read_back_as_bfloat16(tmp_path):
    path = str(tmp_path / "np.npz")
    np.savez(path, w=np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16))
    back = cio.read_all(path)
    assert back["w"].dtype == ml_dtypes.bfloat16 and back["w"].astype(np.float32).tolist() == [1.5, -2.0]


def test_readers_are_lazy_memory_maps(tmp_path):
    for out in ("a.safetensors", "a.npz"):
        path = str(tmp_path / out)
        cio.write_all(path, {"w": np.ones((64, 64), np.float32)})
        with cio.open_reader(path) as r:
            assert r.shape("w") == (64, 64) and r.dtype("w") == np.float32 and r.nbytes("w") == 64 * 64 * 4
            arr = r.read("w")
            assert isinstance(arr.base, np.memmap) or isinstance(arr, np.memmap), out


def test_sharded_directory_without_index_reads_every_file(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    cio.write_all(str(d / "a.safetensors"), {"x": np.zeros(2, np.float32)})
    cio.write_all(str(d / "b.safetensors"), {"y": np.ones(3, np.float32)})
    with cio.open_reader(str(d)) as r:
        assert sorted(r.names()) == ["x", "y"]
        assert r.read("y").tolist() == [1, 1, 1]


def test_a_failed_write_leaves_no_output_and_no_temp_files(tmp_path):
    for out in ("x.npz", "x.safetensors", "x_dir"):
        path = str(tmp_path / out)
        with pytest.raises(RuntimeError):
            with cio.open_writer(path) as w:
                w.write("a", np.zeros(3, np.float32))
                raise RuntimeError("interrupted")
        assert not os.path.exists(path)
    assert os.listdir(tmp_path) == []


def test_rewriting_an_existing_sharded_directory_replaces_it(tmp_path):
    path = str(tmp_path / "out")
    cio.write_all(path, {"old": np.zeros(1, np.float32)})
    cio.write_all(path, {"new": np.ones(1, np.float32)})
    assert list(cio.read_all(path)) == ["new"]
    assert os.listdir(tmp_path) == ["out"]


def test_missing_file_unknown_format_and_missing_tensor_name_file_and_key(tmp_path):
    with pytest.raises(CkptmapError, match="no such file") as e:
        cio.open_reader(str(tmp_path / "nope.npz"))
    assert e.value.file == str(tmp_path / "nope.npz")

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CkptmapError, match="unknown checkpoint format") as e:
        cio.open_reader(str(junk))
    assert e.value.file == str(junk)

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(CkptmapError, match="unknown checkpoint directory"):
        cio.open_reader(str(empty_dir))

    path = str(tmp_path / "a.safetensors")
    cio.write_all(path, {"w": np.zeros(1, np.float32)})
    with pytest.raises(CkptmapError) as e:
        cio.open_reader(path).read("model.missing.weight")
    assert e.value.file == path and e.value.key == "model.missing.weight"
    assert "model.missing.weight" in e.value.one_line()


def test_a_corrupt_safetensors_header_is_a_named_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10).to_bytes(8, "little") + b"not json!!" + b"\x00" * 8)
    with pytest.raises(CkptmapError, match="header is not JSON"):
        cio.open_reader(str(bad))


def test_a_shard_named_by_the_index_but_missing_is_a_named_error(tmp_path):
    path = str(tmp_path / "out")
    cio.write_all(path, {"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)}, max_shard_bytes=16)
    os.unlink(os.path.join(path, "model-00002-of-00002.safetensors"))
    with pytest.raises(CkptmapError, match="shard named by the index is missing") as e:
        cio.open_reader(path)  # checked when the directory is opened, before any tensor is read
    assert e.value.key == "b"


def test_output_format_is_chosen_from_the_path():
    assert cio.output_format("x.npz") == "npz"
    assert cio.output_format("x.safetensors") == "safetensors"
    assert cio.output_format("orbax:ckpt") == "orbax"
    assert cio.output_format("ckpt.orbax") == "orbax"
    assert cio.output_format("some/dir") == "sharded"
    assert cio.output_format("x.bin", "npz") == "npz"
    with pytest.raises(CkptmapError, match="unknown output format"):
        cio.output_format("x", "tar")


def test_nest_names_builds_the_maxtext_param_tree():
    tree = cio.nest_names(["params-decoder-layers-mlp-wi_0-kernel", "params-token_embedder-embedding"])
    assert tree == {"params": {"decoder": {"layers": {"mlp": {"wi_0": {"kernel": "params-decoder-layers-mlp-wi_0-kernel"}}}},
                               "token_embedder": {"embedding": "params-token_embedder-embedding"}}}
    with pytest.raises(CkptmapError, match="both a tensor and a subtree"):
        cio.nest_names(["params-a", "params-a-b"])


def test_orbax_output_is_maxtexts_train_state_layout(tmp_path):
    """What MaxText's own conversion writes: ROOT/0/items holding {"step", "params": {"params": ...}}."""
    ocp = pytest.importorskip("orbax.checkpoint")
    arrays = {"params-decoder-layers-mlp-wi_0-kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
              "params-token_embedder-embedding": np.ones((4, 2), ml_dtypes.bfloat16),
              "MoEBiasVar-decoder-layers-gate-bias": np.full((2,), 0.5, np.float32)}
    path = str(tmp_path / "ckpt.orbax")
    cio.write_all(path, arrays)
    assert sorted(os.listdir(path)) == ["0"]
    assert "_CHECKPOINT_METADATA" in os.listdir(os.path.join(path, "0"))
    restored = ocp.PyTreeCheckpointer().restore(os.path.join(path, "0", "items"))
    assert int(restored["step"]) == 0
    kernel = np.asarray(restored["params"]["params"]["decoder"]["layers"]["mlp"]["wi_0"]["kernel"])
    assert kernel.tolist() == [[0, 1, 2], [3, 4, 5]]
    # another collection's variable is stored inside `params`, as MaxText's own DeepSeek conversion stores the router
    # bias (MaxText's loaders look it up there); read back under its own name
    assert "MoEBiasVar" not in restored["params"]
    assert np.asarray(restored["params"]["params"]["decoder"]["layers"]["gate"]["bias"]).tolist() == [0.5, 0.5]
    for where in (path, os.path.join(path, "0"), os.path.join(path, "0", "items")):
        with cio.open_reader(where) as r:
            for n, a in arrays.items():
                assert n in r and r.read(n).tobytes() == a.tobytes() and r.shape(n) == a.shape
    assert sorted(os.listdir(tmp_path)) == ["ckpt.orbax"]


def test_orbax_reader_takes_the_latest_step_or_the_one_asked_and_skips_the_optimizer_state(tmp_path):
    from ckptmap import orbax_io

    root = tmp_path / "run"
    for step, value in ((100, 1.0), (200, 2.0)):
        collections = {"params": {"decoder": {"norm": {"scale": np.full(3, value, np.float32)}}}}
        from orbax.checkpoint import v1 as ocp_v1

        ocp_v1.save_checkpointables(str(root / str(step)), {"items": {
            "step": step, "params": collections,
            "opt_state": {"mu": collections["params"], "nu": collections["params"]}}})
    assert cio.read_all(str(root))["params-decoder-norm-scale"].tolist() == [2.0] * 3
    with cio.open_reader(str(root), step=100) as r:
        assert r.names() == ["params-decoder-norm-scale"]
        assert r.read("params-decoder-norm-scale").tolist() == [1.0] * 3
    with pytest.raises(CkptmapError, match="no step 5"):
        cio.open_reader(str(root), step=5)
    assert orbax_io.read_metadata(str(root)).skipped == ("opt_state", "step")


def test_parse_size():
    assert cio.parse_size("5GB") == 5 * 10**9
    assert cio.parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert cio.parse_size("4096") == 4096
    with pytest.raises(CkptmapError):
        cio.parse_size("big")
