"""`ckptmap check`: a converted checkpoint against its source on their real weights, each run by its own framework.

Fast (no MaxText): a real HF -> HF mapping, Llama's separate q/k/v and gate/up into Phi-3's fused `qkv_proj` and
`gate_up_proj`, solved with --verify, converted, then checked both ways; a tensor planted wrong in the converted
checkpoint fails the check (exit 1) and is named with its layer. The MaxText direction at ~100M parameters is in
tests/test_check_maxtext.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ckptmap.checkpoint_io import read_all, write_all
from ckptmap.cli import main
from ckptmap.verify.checkpoint_check import CheckError, read_prompts

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=False,
              rope_theta=10000.0)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(workdir, mapping, llama dir, phi3 dir): a seeded llama checkpoint converted to Phi-3 by a verified mapping."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config

    d = tmp_path_factory.mktemp("check")
    LlamaConfig(**COMMON).save_pretrained(d / "llama_cfg")
    Phi3Config(**COMMON, pad_token_id=None, bos_token_id=None, eos_token_id=None).save_pretrained(d / "phi3_cfg")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**COMMON))
    with torch.no_grad():  # norms not all ones, so that a wrong norm shows
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * (0.2 if p.ndim == 1 else 0.08) + (1.0 if p.ndim == 1 else 0.0))
    model.save_pretrained(d / "llama")
    mapping = str(d / "m.json")
    assert main(["solve", "--source", f"hf:{d}/llama_cfg/config.json", "--target", f"hf:{d}/phi3_cfg/config.json",
                 "--verify", "--quiet", "--out", mapping]) == 0
    assert main(["convert", "--mapping", mapping, "--input", str(d / "llama"), "--output", str(d / "phi3"),
                 "--format", "sharded", "--quiet", "--require-verified"]) == 0
    return d, mapping, str(d / "llama"), str(d / "phi3")


def _plant(src: str, dst: str, name: str, fault) -> None:
    arrays = read_all(src)
    arrays[name] = fault(arrays[name])
    write_all(dst, arrays, "sharded")


def test_a_correct_conversion_passes_with_its_numbers(converted, capsys):
    d, mapping, llama, phi3 = converted
    report = str(d / "report.json")
    assert main(["check", "--mapping", mapping, "--source", llama, "--converted", phi3, "--seeded", "3",
                 "--seq-len", "32", "--report", report]) == 0
    got = json.loads(open(report).read())
    assert got["passed"] and got["kl_max"] < 1e-5 and got["top1_agreement"] == 1.0
    assert got["max_abs_diff"] < 1e-4 and got["tokens"] == 96
    assert got["first_divergence"] is None
    assert "Phi3ForCausalLM.from_pretrained" in got["converted"]["model"]
    assert "check: PASS" in capsys.readouterr().out


def test_a_planted_permutation_fails_and_is_named(converted, capsys):
    d, mapping, llama, phi3 = converted
    _plant(phi3, str(d / "bad"), "model.layers.1.self_attn.qkv_proj.weight",
           lambda t: t[np.random.default_rng(0).permutation(t.shape[0])])
    report = str(d / "bad.json")
    assert main(["check", "--mapping", mapping, "--source", llama, "--converted", str(d / "bad"), "--seeded", "2",
                 "--seq-len", "32", "--report", report]) == 1
    got = json.loads(open(report).read())
    assert not got["passed"] and got["kl_max"] > 1e-3
    assert got["first_divergence"] == "layer_1"
    assert got["stage_errors"]["layer_0"] == 0.0
    wrong = [t["name"] for t in got["tensor_diffs"] if t["max_abs_diff"] > 0]
    assert wrong == ["model.layers.1.self_attn.qkv_proj.weight"]
    assert "tensor model.layers.1.self_attn.qkv_proj.weight: differs" in capsys.readouterr().out


def test_the_reverse_direction_and_a_scaled_tensor(converted, tmp_path):
    d, mapping, llama, phi3 = converted
    back = str(tmp_path / "llama_back")
    assert main(["convert", "--mapping", mapping, "--input", phi3, "--output", back, "--reverse", "--quiet"]) == 0
    assert main(["check", "--mapping", mapping, "--source", phi3, "--converted", back, "--reverse",
                 "--seeded", "2", "--seq-len", "16"]) == 0
    _plant(back, str(tmp_path / "bad"), "model.layers.2.mlp.up_proj.weight", lambda t: t * np.float32(1.5))
    report = str(tmp_path / "r.json")
    assert main(["check", "--mapping", mapping, "--source", phi3, "--converted", str(tmp_path / "bad"),
                 "--reverse", "--seeded", "2", "--seq-len", "16", "--report", report]) == 1
    got = json.loads(open(report).read())
    assert got["first_divergence"] == "layer_2"
    assert [t["name"] for t in got["tensor_diffs"] if t["max_abs_diff"] > 0] == ["model.layers.2.mlp.up_proj.weight"]


def test_prompts_from_a_file(converted, tmp_path):
    d, mapping, llama, phi3 = converted
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\n1 2 3 4 5\n10, 20, 30\n")
    report = str(tmp_path / "r.json")
    assert main(["check", "--mapping", mapping, "--source", llama, "--converted", phi3, "--prompts", str(prompts),
                 "--seeded", "0", "--report", report]) == 0
    got = json.loads(open(report).read())
    assert got["prompts"] == 2 and got["tokens"] == 8


def test_bad_prompts_name_the_file_and_the_line(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text("1 2 3\n4 999 5\n")
    with pytest.raises(CheckError) as e:
        read_prompts(str(bad), vocab=512)
    assert "line 2" in e.value.one_line() and str(bad) in e.value.one_line() and "999" in e.value.one_line()
    assert [p.tolist() for p in read_prompts(str(bad), vocab=1000)] == [[1, 2, 3], [4, 999, 5]]
    missing = main(["check", "--mapping", str(tmp_path / "none.json"), "--source", "a", "--converted", "b"])
    assert missing == 2


def test_a_converted_checkpoint_at_a_url(converted, tmp_path):
    """The converted checkpoint on a remote filesystem (fsspec's in-process memory://; gs:// and s3:// take the same
    calls): the HF side is copied for from_pretrained, the tensor comparison reads it with ranged reads."""
    import fsspec

    d, mapping, llama, phi3 = converted
    fs = fsspec.filesystem("memory")
    root = f"/check-{tmp_path.name}"
    _plant(phi3, str(tmp_path / "bad"), "model.layers.0.mlp.gate_up_proj.weight", lambda t: -t)
    fs.put(str(tmp_path / "bad") + "/", f"{root}/bad/", recursive=True)
    report = str(tmp_path / "r.json")
    try:
        assert main(["check", "--mapping", mapping, "--source", llama, "--converted", f"memory://{root}/bad",
                     "--seeded", "1", "--seq-len", "16", "--report", report]) == 1
    finally:
        fs.rm(root, recursive=True)
    got = json.loads(open(report).read())
    assert got["first_divergence"] == "layer_0"
    assert [t["name"] for t in got["tensor_diffs"] if t["max_abs_diff"] > 0] == [
        "model.layers.0.mlp.gate_up_proj.weight"]


def test_a_remote_orbax_checkpoint_is_located_by_listing(tmp_path):
    """MaxText is handed the URL of the item directory (its loader reads gs:// itself): found as orbax_io.locate
    finds it locally, by listing."""
    import fsspec

    from ckptmap.verify.checkpoint_models import remote_item_dir
    from ckptmap.verify.hf_runner import VerifyError

    fs = fsspec.filesystem("memory")
    root = f"/orbax-{tmp_path.name}"
    for step in (0, 100):
        fs.pipe(f"{root}/ck/{step}/items/_METADATA", b"{}")
    try:
        assert remote_item_dir(f"memory://{root}/ck") == f"memory://{root}/ck/100/items"
        assert remote_item_dir(f"memory://{root}/ck", step=0) == f"memory://{root}/ck/0/items"
        assert remote_item_dir(f"memory://{root}/ck/0") == f"memory://{root}/ck/0/items"
        assert remote_item_dir(f"memory://{root}/ck/0/items") == f"memory://{root}/ck/0/items"
        with pytest.raises(VerifyError, match="no step 7"):
            remote_item_dir(f"memory://{root}/ck", step=7)
    finally:
        fs.rm(root, recursive=True)
