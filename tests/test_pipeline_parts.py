"""Stacked tensors in pieces: Orbax output written cell by cell into chunks one layer thick (never assembled), Orbax
input read one cell's slice at a time where its chunks allow, whole otherwise; the same values either way."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ckptmap import checkpoint_io as cio
from ckptmap import orbax_io
from ckptmap.apply import apply_to_dict
from ckptmap.convert import convert, count_nonfinite
from ckptmap.errors import CkptmapError
from ckptmap.pipeline.plan import plan_mapping
from ckptmap.pipeline.sources import sliced_inputs
from test_convert_cases import fixture, llama_mapping, mixtral_mapping, seeded


def _hf(tmp_path, family="llama3.1", mapping=None):
    _, hf_shapes, _ = fixture(family)
    keep = set(mapping.source_names()) if mapping is not None else set(hf_shapes)
    hf = {n: a.astype(ml_dtypes.bfloat16) for n, a in seeded(hf_shapes).items() if n in keep}
    cio.write_all(str(tmp_path / "hf"), hf, max_shard_bytes=40_000)
    return hf


@pytest.mark.parametrize("family,make", [("llama3.1", llama_mapping), ("mixtral", mixtral_mapping)])
def test_stacked_targets_are_chunked_per_cell_and_equal_the_whole_apply(tmp_path, family, make):
    mapping = make(True)
    hf = _hf(tmp_path, family, mapping)
    report = convert(mapping, str(tmp_path / "hf"), str(tmp_path / "mt.orbax"), progress=False, workers=3)
    want = apply_to_dict(mapping, hf)
    plans = plan_mapping(mapping, lambda n: hf[n].shape, lambda n: hf[n].dtype)
    stacked = {t.name: t.stacked_axes for p in plans for t in p.targets if t.stacked_axes}
    assert stacked, "the scanned mapping stacks its layers"
    with cio.open_reader(str(tmp_path / "mt.orbax")) as r:
        assert sorted(r.names()) == sorted(want)
        for name, array in want.items():
            got = r.read(name)
            assert got.dtype == array.dtype and got.tobytes() == np.ascontiguousarray(array).tobytes(), name
        for name, axes in stacked.items():
            assert r.reads_slices(name, axes), name  # one chunk per cell along the stacked axes
            first = tuple(0 if a in axes else slice(None) for a in range(want[name].ndim))
            assert r.read_part(name, first).tobytes() == np.ascontiguousarray(want[name][first]).tobytes()
    # the budget counted cells, not whole stacked targets
    assert report.budget_peak <= sum(p.memory(3, parts_out=True) for p in plans)


def test_a_stacked_rule_holds_a_few_cells_not_its_layers():
    """RulePlan.memory with a part-taking writer (or sliced reads) does not grow with the layer count."""
    from ckptmap.benchmarks.bench_convert import llama_trees

    def biggest(layers: int, **kw) -> tuple[int, int]:
        hf, mt = llama_trees(64, 4, 2, 16, 256, layers, 100)
        mapping = _solved(hf, mt)
        plans = plan_mapping(mapping, lambda n: tuple(hf[n]), lambda n: np.dtype(ml_dtypes.bfloat16))
        return max(p.memory(2, **kw) for p in plans), max(p.out_bytes for p in plans)

    whole8, out8 = biggest(8)
    whole32, out32 = biggest(32)
    parts8, _ = biggest(8, parts_out=True)
    parts32, _ = biggest(32, parts_out=True)
    assert whole32 >= 3 * whole8 and out32 >= 3 * out8  # assembled: grows with the layers
    assert parts32 == parts8 < whole32 / 3  # in parts: a few cells, whatever the depth


def _solved(hf_shapes: dict, mt_shapes: dict):
    import json
    import tempfile

    from ckptmap.solver import solve
    from ckptmap.trees import read_tree

    with tempfile.TemporaryDirectory() as d:
        for name, tree in (("hf.json", hf_shapes), ("mt.json", mt_shapes)):
            with open(f"{d}/{name}", "w") as f:
                json.dump(tree, f)
        return solve(read_tree(f"{d}/hf.json"), read_tree(f"{d}/mt.json")).mapping


def test_reverse_reads_chunked_slices_and_orbax_default_whole_arrays_the_same(tmp_path):
    mapping = llama_mapping(True)
    hf = _hf(tmp_path, mapping=mapping)
    convert(mapping, str(tmp_path / "hf"), str(tmp_path / "mt.orbax"), progress=False, workers=2)
    # the same arrays saved by Orbax itself (one chunk per array, as MaxText writes them on one device)
    with cio.open_reader(str(tmp_path / "mt.orbax")) as r:
        arrays = {n: np.array(r.read(n)) for n in r.names()}
    orbax_io.save_train_state(str(tmp_path / "own" / "0"), orbax_io.nest_names(arrays))
    plans = plan_mapping(mapping.reversed(), lambda n: arrays[n].shape, lambda n: arrays[n].dtype)
    with cio.open_reader(str(tmp_path / "mt.orbax")) as chunked, cio.open_reader(str(tmp_path / "own")) as whole:
        assert sliced_inputs(chunked, plans)  # our chunks: read cell by cell
        assert not sliced_inputs(whole, plans)  # Orbax's single chunks: read whole
    for src in ("mt.orbax", "own"):
        back = str(tmp_path / f"back-{src}")
        convert(mapping, str(tmp_path / src), back, reverse=True, progress=False, workers=3)
        got = cio.read_all(back)
        assert sorted(got) == sorted(hf)
        for name in hf:
            assert got[name].tobytes() == hf[name].tobytes(), (src, name)


def test_a_slice_of_the_wrong_shape_or_twice_is_named(tmp_path):
    from ckptmap.pipeline.orbax_sink import OrbaxSink

    mapping = llama_mapping(True)
    hf = _hf(tmp_path, mapping=mapping)
    plans = plan_mapping(mapping, lambda n: hf[n].shape, lambda n: hf[n].dtype)
    target = next(t for p in plans for t in p.targets if t.stacked_axes)
    sink = OrbaxSink(str(tmp_path / "x.orbax"), plans)
    try:
        index = tuple(0 if a in target.stacked_axes else slice(None) for a in range(len(target.shape)))
        with pytest.raises(CkptmapError) as e:
            sink.write_part(target.name, index, np.zeros((3, 3), target.dtype))
        assert e.value.key == target.name and "planned" in str(e.value)
        part = np.zeros(tuple(n for n, i in zip(target.shape, index) if isinstance(i, slice)), target.dtype)
        cells = int(np.prod([target.shape[a] for a in target.stacked_axes]))
        for _ in range(cells):  # as many slices as the target holds (the values do not matter here)
            sink.write_part(target.name, index, part)()
        with pytest.raises(CkptmapError, match="written twice"):
            sink.write_part(target.name, index, part)
    finally:
        sink.abort()
    assert not (tmp_path / "x.orbax").exists()


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_nonfinite_counts_match_numpy_for_every_float_format(dtype):
    a = np.random.default_rng(1).standard_normal(50_001).astype(dtype)
    a[[3, 70, 50_000]] = np.nan
    a[[5, 11]] = np.inf
    a[12] = -np.inf
    wide = a.astype(np.float64)
    for view in (a, a[::7], a.reshape(3, -1)[:, ::2] if a.size % 3 == 0 else a[1:]):
        w = view.astype(np.float64)
        assert count_nonfinite(view, chunk=4096) == (int(np.isnan(w).sum()), int(np.isinf(w).sum()))
    assert count_nonfinite(a) == (3, 3) == (int(np.isnan(wide).sum()), int(np.isinf(wide).sum()))


def test_an_orbax_save_that_fails_stops_the_workers_with_its_error(tmp_path, monkeypatch):
    """Orbax saves on its own thread while the workers hand slices over: its failure reaches them (no hang), and
    nothing is left at the output."""
    mapping = llama_mapping(True)
    _hf(tmp_path, mapping=mapping)

    def broken(*args, **kwargs):
        raise OSError(5, "simulated Orbax failure")

    monkeypatch.setattr(orbax_io, "save_train_state_with", broken)
    with pytest.raises(CkptmapError) as e:
        convert(mapping, str(tmp_path / "hf"), str(tmp_path / "mt.orbax"), progress=False, workers=2)
    assert "mt.orbax" in str(e.value.file)
    assert not (tmp_path / "mt.orbax").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
