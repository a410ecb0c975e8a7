"""The parallel streaming convert (ckptmap.pipeline): the same bytes for any number of worker threads, a bounded
budget, each safetensors tensor written once at a planned offset, errors that leave nothing behind."""

from __future__ import annotations

import hashlib
import os

import ml_dtypes
import numpy as np
import pytest

from ckptmap import checkpoint_io as cio
from ckptmap.apply import apply_to_dict
from ckptmap.array_copy import contiguous, copy_into
from ckptmap.convert import convert
from ckptmap.errors import CkptmapError, MappingError
from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.pipeline.plan import op_dtypes, plan_mapping
from ckptmap.pipeline.sinks import safetensors_layout
from ckptmap.transforms import Chain, Transpose
from test_convert_cases import fixture, llama_mapping, mixtral_mapping, seeded


def digest(path: str) -> dict[str, str]:
    """relative file name -> sha256 of every file under path (or of the file itself)."""
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    return {os.path.relpath(f, path): hashlib.sha256(open(f, "rb").read()).hexdigest() for f in sorted(files)}


@pytest.mark.parametrize("scanned", [True, False])
@pytest.mark.parametrize("out", ["mt_dir", "mt.safetensors", "mt.npz"])
def test_output_bytes_are_the_same_for_any_worker_count(tmp_path, scanned, out):
    _, hf_shapes, _ = fixture("llama3.1")
    hf = {n: a.astype(ml_dtypes.bfloat16) for n, a in seeded(hf_shapes).items()}
    cio.write_all(str(tmp_path / "hf"), hf, max_shard_bytes=30_000)
    mapping = llama_mapping(scanned)
    digests = []
    for workers in (1, 2, 5):
        dst = str(tmp_path / f"{workers}-{out}")
        report = convert(mapping, str(tmp_path / "hf"), dst, progress=False, max_shard_bytes=20_000, workers=workers)
        assert report.workers == workers
        digests.append(digest(dst))
    assert digests[0] == digests[1] == digests[2]
    if out == "mt_dir":
        assert len(digests[0]) > 3  # several shards plus the index
    got = cio.read_all(str(tmp_path / f"1-{out}"))
    want = apply_to_dict(mapping, hf)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == np.ascontiguousarray(want[name]).tobytes()


def test_orbax_output_restores_the_same_arrays_for_any_worker_count(tmp_path):
    _, hf_shapes, _ = fixture("llama3.1")
    hf = seeded(hf_shapes)
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    mapping = llama_mapping(True)
    outs = []
    for workers in (1, 3):
        dst = str(tmp_path / f"mt{workers}.orbax")
        convert(mapping, str(tmp_path / "hf.safetensors"), dst, progress=False, workers=workers)
        with cio.open_reader(dst) as r:
            outs.append({n: np.array(r.read(n)) for n in r.names()})
    assert sorted(outs[0]) == sorted(outs[1])
    for name in outs[0]:
        assert outs[0][name].tobytes() == outs[1][name].tobytes(), name
    # and back, from Orbax one tensor at a time
    convert(mapping, str(tmp_path / "mt3.orbax"), str(tmp_path / "back"), reverse=True, progress=False, workers=2)
    back = cio.read_all(str(tmp_path / "back"))
    for name in hf:
        assert back[name].tobytes() == hf[name].tobytes(), name


def test_a_tiny_budget_still_converts_one_rule_at_a_time(tmp_path):
    _, hf_shapes, _ = fixture("mixtral")
    mapping = mixtral_mapping(True)
    hf = seeded({n: s for n, s in hf_shapes.items() if n in set(mapping.source_names())})
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    wide = convert(mapping, str(tmp_path / "hf.safetensors"), str(tmp_path / "a"), progress=False, workers=4)
    tight = convert(mapping, str(tmp_path / "hf.safetensors"), str(tmp_path / "b"), progress=False, workers=4,
                    max_memory=1)
    assert digest(str(tmp_path / "a")) == digest(str(tmp_path / "b"))
    # with a 1-byte cap a rule runs only when nothing else is in flight: the peak is one rule's bytes
    assert tight.budget_peak <= max(p.memory(4) for p in _plans(mapping, hf))
    assert wide.max_memory >= 256 * 1024**2


def _plans(mapping, arrays):
    return plan_mapping(mapping, lambda n: arrays[n].shape, lambda n: arrays[n].dtype)


def test_the_plan_knows_every_shape_dtype_and_offset_before_reading(tmp_path):
    _, hf_shapes, mt_shapes = fixture("llama3.1")
    hf = seeded(hf_shapes)
    mapping = llama_mapping(True)
    plans = _plans(mapping, hf)
    planned = {t.name: (t.shape, t.dtype) for p in plans for t in p.targets}
    assert {n: s for n, (s, _) in planned.items()} == mt_shapes[1]
    layout = safetensors_layout(plans, 20_000, "x")
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    convert(mapping, str(tmp_path / "hf.safetensors"), str(tmp_path / "mt"), progress=False, max_shard_bytes=20_000)
    for shard in layout.shards:  # the header on disk is the planned one, byte for byte
        with open(tmp_path / "mt" / shard.file, "rb") as f:
            assert f.read(len(shard.header)) == shard.header
        assert os.path.getsize(tmp_path / "mt" / shard.file) == shard.size
    # a shard boundary never splits a rule (unless one rule is larger than a shard)
    owners = {}
    for k, shard in enumerate(layout.shards):
        for r in shard.rules:
            owners.setdefault(r, set()).add(k)
    for r, ks in owners.items():
        assert len(ks) == 1 or plans[r].out_bytes > 20_000


def test_op_dtypes_follow_casts_and_fills():
    from ckptmap.transforms.constant import Fill
    from ckptmap.transforms.value import Cast

    bf16 = np.dtype(ml_dtypes.bfloat16)
    shapes, dtypes = op_dtypes(Chain((Transpose((1, 0)), Cast("float32", "bfloat16"))), ((3, 4),), (bf16,))
    assert shapes == ((4, 3),) and dtypes == (np.dtype(np.float32),)
    assert op_dtypes(Fill((5,), 1.0), (), ())[1] == (np.dtype(np.float32),)
    assert op_dtypes(Transpose((1, 0)), ((2, 3),), (bf16,))[1] == (bf16,)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int8, np.float64])
def test_copy_into_matches_numpy_on_transposed_and_stacked_views(dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 7, 260)).astype(dtype)
    for perm in [(2, 0, 1), (1, 2, 0), (0, 1, 2), (2, 1, 0)]:
        src = a.transpose(perm)
        assert contiguous(src).tobytes() == np.ascontiguousarray(src).tobytes()
    buf = np.zeros((260, 3, 300, 7), dtype)
    copy_into(buf[:, 1], a.transpose(2, 0, 1))
    assert buf[:, 1].tobytes() == np.ascontiguousarray(a.transpose(2, 0, 1)).tobytes()
    assert not buf[:, 0].any() and not buf[:, 2].any()


def test_a_failing_rule_stops_every_worker_and_leaves_nothing(tmp_path):
    _, hf_shapes, _ = fixture("llama3.1")
    hf = seeded(hf_shapes)
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    good = llama_mapping(False)
    # an edited rule whose chain cannot run on its input (transpose of a 2-d tensor by 3 axes)
    bad_rule = Rule((Slot.single("model.norm.weight"),), (Slot.single("params-decoder-decoder_norm-scale"),),
                    Chain((Transpose((1, 0)),)))
    rules = [r for r in good.rules if "params-decoder-decoder_norm-scale" not in r.target_names()] + [bad_rule]
    mapping = Mapping(rules=rules, meta={})
    for workers in (1, 3):
        with pytest.raises(MappingError) as e:
            convert(mapping, str(tmp_path / "hf.safetensors"), str(tmp_path / "out"), progress=False, workers=workers)
        assert "params-decoder-decoder_norm-scale" in str(e.value)
        assert sorted(os.listdir(tmp_path)) == ["hf.safetensors"]


def test_processes_need_a_sharded_output(tmp_path):
    _, hf_shapes, _ = fixture("llama3.1")
    cio.write_all(str(tmp_path / "hf.safetensors"), seeded(hf_shapes))
    with pytest.raises(CkptmapError, match="sharded"):
        convert(llama_mapping(True), str(tmp_path / "hf.safetensors"), str(tmp_path / "mt.npz"), progress=False,
                processes=2)
