"""A target norm no source explains (DeepSeek-V4's MaxText mhc_norm scales: the HF model learns none) is filled
with its neutral scale (transforms.Fill, ones); the rule round-trips, reverses to nothing and exports without it."""

from __future__ import annotations

import numpy as np
import pytest

from ckptmap.mapping import Mapping
from ckptmap.transforms import Discard, Fill, op_from_json


def test_fill_gives_ones_and_inverts_to_discard():
    f = Fill((2, 3), 1.0)
    (out,) = f.apply(())
    assert out.shape == (2, 3) and out.dtype == np.float32 and np.all(out == 1)
    assert op_from_json(f.to_json()) == f and f.shape(()) == ((2, 3),)
    assert f.inverse() == Discard() and Discard().apply((out,)) == ()
    assert f.to_code([]) == ["np.full((2, 3), 1.0, dtype=np.float32)"]


@pytest.fixture(scope="module")
def ds4_scan1():
    from ckptmap.benchmarks.cases import load_case
    from ckptmap.solver import solve

    case = load_case("derived/deepseek4", 1)
    return case, solve(case.src, case.tgt)


def test_unexplained_norms_are_filled_only_there(ds4_scan1, tmp_path):
    from ckptmap.apply import apply_to_dict
    from ckptmap.runner import seeded_tensor

    case, result = ds4_scan1
    filled = [r for r in result.mapping.rules if not r.sources]
    names = {n for r in filled for n in r.target_names()}
    assert names and all("mhc_norm" in n for n in names) and not result.mapping.unmapped_targets
    src = {n: seeded_tensor(n, s, 0) for n, s in case.hf_shapes.items()}
    out = apply_to_dict(result.mapping, src)
    for n in names:
        assert out[n].shape == case.tgt[n].shape and np.all(out[n] == 1)
    # JSON round trip, and the reverse mapping writes every HF tensor back without reading the filled ones
    path = tmp_path / "m.json"
    result.mapping.save(str(path))
    again = Mapping.load(str(path))
    back = apply_to_dict(again.reversed(), out)
    assert set(back) == set(src) and all(np.array_equal(back[n], src[n]) for n in src)
    assert all(n in again.reversed().unused_sources for n in names)


def test_export_leaves_filled_targets_to_maxtext(ds4_scan1, tmp_path):
    from ckptmap.export import export_maxtext_module

    _, result = ds4_scan1
    text = export_maxtext_module(result.mapping, str(tmp_path / "ds4.py"), "deepseek4-284b")
    assert "mhc_norm" not in text and "mhc_attention" in text


def test_a_norm_is_not_filled_while_a_source_norm_of_its_shape_is_unused(tmp_path):
    import json

    from ckptmap.solver import solve
    from ckptmap.trees import read_tree

    def tree(shapes):
        path = tmp_path / f"t{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({n: list(s) for n, s in shapes.items()}))
        return read_tree(str(path))

    src, tgt = {}, {}
    for i in range(2):
        for hf, mt, shape in (("q_proj", "query", (64, 32)), ("k_proj", "key", (16, 32)),
                              ("v_proj", "value", (16, 32)), ("o_proj", "out", (32, 64))):
            src[f"model.layers.{i}.self_attn.{hf}.weight"] = shape
            tgt[f"params-decoder-layers_{i}-self_attention-{mt}-kernel"] = shape[::-1]
        src[f"model.layers.{i}.input_layernorm.weight"] = (32,)
        tgt[f"params-decoder-layers_{i}-pre_self_attention_layer_norm-scale"] = (32,)
    tgt.update({f"params-decoder-layers_{i}-extra_norm-scale": (16,) for i in range(2)})
    res = solve(tree(src), tree(tgt))
    filled = {n for r in res.mapping.rules if not r.sources for n in r.target_names()}
    assert filled == {f"params-decoder-layers_{i}-extra_norm-scale" for i in range(2)}
    assert not res.mapping.unused_sources
