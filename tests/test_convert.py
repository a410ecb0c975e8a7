"""ckptmap convert: HF -> MaxText -> HF through a mapping, streamed, atomic, bit-exact, with named errors."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from ckptmap import checkpoint_io as cio
from ckptmap.apply import apply_to_dict
from ckptmap.cli import main as cli_main
from ckptmap.convert import convert
from ckptmap.errors import CkptmapError
from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.transforms import Chain, Reshape, Transpose
from test_convert_cases import (fixture, fused_qkv_mapping, gpt_oss_experts_mapping, llama_mapping, mixtral_mapping,
                                seeded)


def assert_bit_exact(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert got[name].tobytes() == np.ascontiguousarray(want[name]).tobytes(), name


@pytest.mark.parametrize("scanned", [True, False])
@pytest.mark.parametrize("fmt_in,fmt_out", [("hf.safetensors", "mt.npz"), ("hf_dir", "mt.safetensors"),
                                            ("hf.npz", "mt_dir")])
def test_llama_hf_to_maxtext_and_back_is_bit_exact(tmp_path, scanned, fmt_in, fmt_out):
    _, hf_shapes, mt_shapes = fixture("llama3.1")
    hf = seeded(hf_shapes)
    src, mid, back = str(tmp_path / fmt_in), str(tmp_path / fmt_out), str(tmp_path / ("back_" + fmt_in))
    cio.write_all(src, hf, max_shard_bytes=20_000)
    mapping = llama_mapping(scanned)

    report = convert(mapping, src, mid, progress=False, max_shard_bytes=20_000)
    mt = cio.read_all(mid)
    assert {k: v.shape for k, v in mt.items()} == mt_shapes[int(scanned)]
    assert report.tensors_written == len(mt_shapes[int(scanned)]) and report.unused_inputs == {}

    # one tensor checked by hand: MaxText's query kernel is q_proj transposed, split into heads
    q1 = hf["model.layers.1.self_attn.q_proj.weight"].T.reshape(64, 4, 16)
    got = mt["params-decoder-layers-self_attention-query-kernel"][:, 1] if scanned else \
        mt["params-decoder-layers_1-self_attention-query-kernel"]
    np.testing.assert_array_equal(got, q1)

    convert(mapping, mid, back, reverse=True, progress=False, max_shard_bytes=20_000)
    assert_bit_exact(cio.read_all(back), hf)


@pytest.mark.parametrize("build,family", [(mixtral_mapping, "mixtral"), (gpt_oss_experts_mapping, "gpt-oss")])
@pytest.mark.parametrize("scanned", [True, False])
def test_expert_grids_round_trip_bit_exact(tmp_path, build, family, scanned):
    _, hf_shapes, _ = fixture(family)
    mapping = build(scanned)
    hf = seeded({n: s for n, s in hf_shapes.items() if n in set(mapping.source_names())})
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    convert(mapping, str(tmp_path / "hf.safetensors"), str(tmp_path / "mt.npz"), progress=False)
    mt = cio.read_all(str(tmp_path / "mt.npz"))
    assert_bit_exact(mt, apply_to_dict(mapping, hf))
    convert(mapping, str(tmp_path / "mt.npz"), str(tmp_path / "back.safetensors"), reverse=True, progress=False)
    assert_bit_exact(cio.read_all(str(tmp_path / "back.safetensors")), hf)


def test_mixtral_scanned_experts_are_stacked_experts_first_then_layers(tmp_path):
    _, hf_shapes, _ = fixture("mixtral")
    hf = seeded(hf_shapes)
    cio.write_all(str(tmp_path / "hf.npz"), hf)
    convert(mixtral_mapping(True), str(tmp_path / "hf.npz"), str(tmp_path / "mt.npz"), progress=False)
    wi_0 = cio.read_all(str(tmp_path / "mt.npz"))["params-decoder-layers-MoeBlock_0-wi_0"]
    assert wi_0.shape == (4, 2, 64, 128)
    np.testing.assert_array_equal(wi_0[3, 1], hf["model.layers.1.block_sparse_moe.experts.3.w1.weight"].T)


def test_fused_qkv_is_split_and_fused_back(tmp_path):
    mapping, hf_shapes = fused_qkv_mapping(True)
    hf = seeded(hf_shapes)
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    convert(mapping, str(tmp_path / "hf.safetensors"), str(tmp_path / "mt.safetensors"), progress=False)
    mt = cio.read_all(str(tmp_path / "mt.safetensors"))
    assert mt["params-decoder-layers-self_attention-key-kernel"].shape == (64, 2, 2, 16)
    k0 = hf["model.layers.0.self_attn.qkv_proj.weight"][64:96].T.reshape(64, 2, 16)
    np.testing.assert_array_equal(mt["params-decoder-layers-self_attention-key-kernel"][:, 0], k0)
    convert(mapping, str(tmp_path / "mt.safetensors"), str(tmp_path / "back.npz"), reverse=True, progress=False)
    assert_bit_exact(cio.read_all(str(tmp_path / "back.npz")), hf)


def test_bfloat16_checkpoints_stay_bfloat16_and_exact(tmp_path):
    _, hf_shapes, _ = fixture("llama3.1")
    hf = {k: v.astype(ml_dtypes.bfloat16) for k, v in seeded(hf_shapes, seed=3).items()}
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    convert(llama_mapping(True), str(tmp_path / "hf.safetensors"), str(tmp_path / "mt.safetensors"), progress=False)
    mt = cio.read_all(str(tmp_path / "mt.safetensors"))
    assert {v.dtype for v in mt.values()} == {np.dtype(ml_dtypes.bfloat16)}
    convert(llama_mapping(True), str(tmp_path / "mt.safetensors"), str(tmp_path / "back"), reverse=True,
            progress=False)
    assert_bit_exact(cio.read_all(str(tmp_path / "back")), hf)


def test_orbax_output_is_maxtexts_train_state(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    _, hf_shapes, _ = fixture("llama3.1")
    hf = seeded(hf_shapes)
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    convert(llama_mapping(True), str(tmp_path / "hf.safetensors"), "orbax:" + str(tmp_path / "ckpt"),
            progress=False)
    import orbax.checkpoint as ocp

    tree = ocp.PyTreeCheckpointer().restore(str(tmp_path / "ckpt" / "0" / "items"))
    wo = np.asarray(tree["params"]["params"]["decoder"]["layers"]["mlp"]["wo"]["kernel"])
    assert wo.shape == (128, 2, 64)
    np.testing.assert_array_equal(wo[:, 0], hf["model.layers.0.mlp.down_proj.weight"].T)
    convert(llama_mapping(True), str(tmp_path / "ckpt"), str(tmp_path / "back.npz"), reverse=True, progress=False)
    assert_bit_exact(cio.read_all(str(tmp_path / "back.npz")), hf)


def test_missing_input_tensors_are_named_and_nothing_is_written(tmp_path):
    _, hf_shapes, _ = fixture("llama3.1")
    hf = seeded(hf_shapes)
    del hf["model.layers.1.mlp.up_proj.weight"]
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    with pytest.raises(CkptmapError) as e:
        convert(llama_mapping(True), str(tmp_path / "hf.safetensors"), str(tmp_path / "mt.npz"), progress=False)
    assert e.value.file == str(tmp_path / "hf.safetensors")
    assert e.value.key == "model.layers.1.mlp.up_proj.weight"
    assert "lacks 1 tensor" in e.value.message
    assert sorted(os.listdir(tmp_path)) == ["hf.safetensors"]


def test_unused_inputs_are_reported_with_the_mappings_reason(tmp_path):
    _, hf_shapes, _ = fixture("llama3.1")
    hf = seeded(hf_shapes)
    hf["model.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    cio.write_all(str(tmp_path / "hf.npz"), hf)
    mapping = llama_mapping(False)
    mapping.unused_sources["model.rotary_emb.inv_freq"] = "rotary buffer"
    report = convert(mapping, str(tmp_path / "hf.npz"), str(tmp_path / "mt.npz"), progress=False)
    assert report.unused_inputs == {"model.rotary_emb.inv_freq": "rotary buffer"}
    assert "model.rotary_emb.inv_freq  (rotary buffer)" in report.summary()


def test_a_chain_failing_midway_leaves_no_output(tmp_path):
    cio.write_all(str(tmp_path / "in.npz"), {"a": np.zeros((4, 4), np.float32), "b": np.zeros((3, 5), np.float32)})
    bad = Mapping([Rule((Slot.single("a"),), (Slot.single("A"),), Chain((Transpose((1, 0)),))),
                   Rule((Slot.single("b"),), (Slot.single("B"),), Chain((Reshape((4, 4), (16,)),)))])
    with pytest.raises(CkptmapError) as e:
        convert(bad, str(tmp_path / "in.npz"), str(tmp_path / "out.safetensors"), progress=False)
    assert e.value.key == "B"
    assert sorted(os.listdir(tmp_path)) == ["in.npz"]


def test_memory_is_bounded_by_the_largest_rule(tmp_path):
    _, hf_shapes, mt_shapes = fixture("mixtral")
    cio.write_all(str(tmp_path / "hf.safetensors"), seeded(hf_shapes))
    report = convert(mixtral_mapping(True), str(tmp_path / "hf.safetensors"), str(tmp_path / "mt.npz"),
                     progress=False)
    biggest = max(int(np.prod(s)) * 4 for s in mt_shapes[1].values())
    assert report.largest_rule_bytes == biggest  # one stacked expert tensor, not the whole checkpoint
    assert report.bytes_written == sum(int(np.prod(s)) * 4 for s in mt_shapes[1].values())


def test_cli_convert_and_reverse(tmp_path, capsys):
    _, hf_shapes, _ = fixture("llama3.1")
    hf = seeded(hf_shapes)
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    llama_mapping(True).save(str(tmp_path / "mapping.json"))
    args = ["convert", "--mapping", str(tmp_path / "mapping.json"), "--no-progress"]
    assert cli_main(args + ["--input", str(tmp_path / "hf.safetensors"), "--output", str(tmp_path / "mt"),
                            "--max-shard-size", "40KB"]) == 0
    out = capsys.readouterr().out
    assert "wrote 12 tensors" in out
    index = json.load(open(tmp_path / "mt" / cio.INDEX_NAME))
    assert len(set(index["weight_map"].values())) > 1  # 40 KB shards
    assert cli_main(args + ["--input", str(tmp_path / "mt"), "--output", str(tmp_path / "back.npz"),
                            "--reverse"]) == 0
    assert_bit_exact(cio.read_all(str(tmp_path / "back.npz")), hf)


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    llama_mapping(True).save(str(tmp_path / "mapping.json"))
    code = cli_main(["convert", "--mapping", str(tmp_path / "mapping.json"), "--input", str(tmp_path / "nope.npz"),
                     "--output", str(tmp_path / "o.npz")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "nope.npz" in err and "no such file" in err
    code = cli_main(["convert", "--mapping", str(tmp_path / "missing.json"), "--input", "x", "--output", "y"])
    assert code == 2 and "missing.json" in capsys.readouterr().err


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    _, hf_shapes, _ = fixture("llama3.1")
    cio.write_all(str(tmp_path / "hf.npz"), seeded(hf_shapes))
    convert(llama_mapping(True), str(tmp_path / "hf.npz"), str(tmp_path / "mt.npz"), progress=True)
    captured = capsys.readouterr()
    assert "convert" in captured.err and captured.out == ""
