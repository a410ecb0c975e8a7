"""`convert --processes N` on a local Ray cluster: each process writes its own shards (or Orbax arrays), the index
(or Orbax's metadata) is written once, and the directory is byte-identical to the one-process conversion."""

from __future__ import annotations

import os
import zipfile

import ml_dtypes
import numpy as np
import pytest

from ckptmap import checkpoint_io as cio
from ckptmap.benchmarks.convert_speed import differing_files
from ckptmap.checkpoint_io import CheckpointIOError
from ckptmap.convert import convert
from ckptmap.orbax_io import OrbaxWriteOptions
from ckptmap.pipeline.distributed import assign
from test_convert_cases import fixture, llama_mapping, mixtral_mapping, seeded
from test_convert_parallel import digest

ray = pytest.importorskip("ray")


def test_assign_splits_groups_by_bytes_in_order():
    assert assign([[0], [1], [2], [3]], [10, 10, 10, 10], 2) == [[0, 1], [2, 3]]
    assert assign([[0], [1, 2], [3]], [1, 100, 1], 2) == [[0, 1, 2], [3]]
    assert assign([[0]], [5], 4) == [[0]]


@pytest.mark.slow
def test_two_ray_processes_write_the_same_bytes_as_one(tmp_path):
    _, hf_shapes, _ = fixture("llama3.1")
    hf = {n: a.astype(ml_dtypes.bfloat16) for n, a in seeded(hf_shapes).items()}
    cio.write_all(str(tmp_path / "hf"), hf, max_shard_bytes=30_000)
    mapping = llama_mapping(True)
    one = convert(mapping, str(tmp_path / "hf"), str(tmp_path / "one"), progress=False, max_shard_bytes=15_000)
    try:
        many = convert(mapping, str(tmp_path / "hf"), str(tmp_path / "many"), progress=False,
                       max_shard_bytes=15_000, processes=2, workers=1)
    finally:
        ray.shutdown()
    assert many.processes == 2 and many.tensors_written == one.tensors_written
    assert many.bytes_written == one.bytes_written
    assert digest(str(tmp_path / "many")) == digest(str(tmp_path / "one"))
    assert len(os.listdir(tmp_path / "one")) >= 3
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


@pytest.mark.slow
@pytest.mark.parametrize("build,family,scanned,compressed", [
    (llama_mapping, "llama3.1", True, False),  # stacked targets written cell by cell
    (mixtral_mapping, "mixtral", False, True),  # per-layer expert grids, zstd chunks
])
def test_two_ray_processes_write_the_same_orbax_checkpoint_as_one(tmp_path, build, family, scanned, compressed):
    mapping = build(scanned)
    _, hf_shapes, _ = fixture(family)
    wanted = set(mapping.source_names())
    hf = {n: a.astype(ml_dtypes.bfloat16) for n, a in seeded({n: s for n, s in hf_shapes.items()
                                                              if n in wanted}).items()}
    cio.write_all(str(tmp_path / "hf"), hf, max_shard_bytes=30_000)
    options = OrbaxWriteOptions(compression=compressed)
    one = convert(mapping, str(tmp_path / "hf"), str(tmp_path / "one.orbax"), progress=False, orbax=options)
    try:
        many = convert(mapping, str(tmp_path / "hf"), str(tmp_path / "many.orbax"), progress=False, processes=2,
                       workers=1, orbax=options)
    finally:
        ray.shutdown()
    assert many.processes == 2 and many.format == "orbax"
    # each process says what it wrote and its own peak memory (the summary prints it)
    assert len(many.process_stats) == 2 and os.getpid() not in {pid for _, pid, *_ in many.process_stats}
    assert sum(s[2] for s in many.process_stats) == one.tensors_written
    assert sum(s[3] for s in many.process_stats) == one.bytes_written
    assert all(s[4] > 50 * 2**20 for s in many.process_stats)
    assert "peak RSS" in many.summary()
    assert (many.tensors_written, many.bytes_written) == (one.tensors_written, one.bytes_written)
    assert many.load_path == str(tmp_path / "many.orbax" / "0" / "items")
    # every file the same bytes, but Orbax's commit notes (a temp path, timestamps: they differ between any runs)
    assert differing_files(str(tmp_path / "one.orbax"), str(tmp_path / "many.orbax")) == []
    arrays = [f for _, _, fs in os.walk(tmp_path / "many.orbax") for f in fs if f == "zarr.json"]
    assert len(arrays) == one.tensors_written + 1  # and the step
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    # and it reads back as the same tensors through ckptmap's Orbax reader
    back = cio.read_all(f"orbax:{tmp_path / 'many.orbax'}")
    ref = cio.read_all(f"orbax:{tmp_path / 'one.orbax'}")
    assert sorted(back) == sorted(ref) and all(np.array_equal(back[n], ref[n]) for n in ref)


def test_ocdbt_orbax_output_is_not_split_over_processes(tmp_path):
    _, hf_shapes, _ = fixture("llama3.1")
    cio.write_all(str(tmp_path / "hf.safetensors"), seeded(hf_shapes))
    with pytest.raises(CheckpointIOError, match="OCDBT") as e:
        convert(llama_mapping(True), str(tmp_path / "hf.safetensors"), str(tmp_path / "mt.orbax"), progress=False,
                processes=2, orbax=OrbaxWriteOptions(ocdbt=True))
    assert "mt.orbax" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["hf.safetensors"]


@pytest.mark.slow
def test_a_failing_task_leaves_no_orbax_checkpoint(tmp_path):
    """The driver plans and lays the checkpoint out from the input's headers; a task then reads a member whose
    bytes are damaged: its error reaches the driver as itself, and nothing is left at OUT or beside it."""
    _, hf_shapes, _ = fixture("llama3.1")
    src = str(tmp_path / "hf.npz")
    cio.write_all(src, seeded(hf_shapes))
    with zipfile.ZipFile(src) as z:
        member = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(open(src, "rb").read())
    data[member.header_offset + 30 + len(member.filename.encode()) + len(member.extra) + member.file_size // 2] ^= 0xFF
    open(src, "wb").write(bytes(data))
    try:
        with pytest.raises(CheckpointIOError, match="CRC") as e:
            convert(llama_mapping(True), src, str(tmp_path / "mt.orbax"), progress=False, processes=2, workers=1)
    finally:
        ray.shutdown()
    assert e.value.file == src and e.value.key == member.filename.removesuffix(".npy")
    assert sorted(os.listdir(tmp_path)) == ["hf.npz"]
