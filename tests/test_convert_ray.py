"""`convert --processes N` on a local Ray cluster: each process writes its own shards, the index is written
once, and the directory is byte-identical to the one-process conversion."""

from __future__ import annotations

import os

import ml_dtypes
import pytest

from ckptmap import checkpoint_io as cio
from ckptmap.convert import convert
from ckptmap.pipeline.distributed import assign
from test_convert_cases import fixture, llama_mapping, seeded
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
