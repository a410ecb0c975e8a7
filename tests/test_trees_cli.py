"""`ckptmap trees`: the compact printout, --out / --json, and one-line exit-2 errors (in-process and as a real
console-script subprocess)."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from ckptmap.cli import main
from ckptmap.trees import read_tree

DATA = os.path.join(os.path.dirname(__file__), "data")
LLAMA_CONFIG = os.path.join(DATA, "maxtext_tiny", "llama3.1", "config.json")
CKPTMAP = os.path.join(os.path.dirname(sys.executable), "ckptmap")


def test_printout_counts_and_one_row_per_layer_template(capsys):
    assert main(["trees", f"hf:{LLAMA_CONFIG}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{LLAMA_CONFIG}  [hf, LlamaForCausalLM]"
    # 2 x 256x64 (embed, lm_head) + 2 layers x (12,288 attention + 24,576 mlp + 128 norms) + 64 final norm
    assert out[1] == "21 tensors, 106,816 parameters (106.82K), 427,264 bytes (417.2 KiB)"
    assert out[2] == "dims: hidden=64 heads=4 kv_heads=2 head_dim=16 mlp=128 layers=2 vocab=256"
    rows = [line.split() for line in out if line.startswith("  ")]
    assert len(rows) == 12  # 9 layer templates + embed, norm, lm_head
    q = next(r for r in rows if r[0] == "model.layers.{i}.self_attn.q_proj.weight")
    assert q[1:] == ["[64,", "64]", "float32", "layers", "0-1", "(x2)"]


def test_varying_shapes_in_one_template_get_their_own_rows(capsys):
    assert main(["trees", f"hf:{os.path.join(DATA, 'maxtext_tiny', 'gemma4-dense', 'config.json')}"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip().startswith("model.language_model.layers.{i}.self_attn.q_proj.weight")]
    assert [r[1:] for r in rows] == [["[64,", "64]", "bfloat16", "layers", "0-4,6-10", "(x10)"],
                                     ["[128,", "64]", "bfloat16", "layers", "5,11", "(x2)"]]


def test_spec_words_with_overrides(capsys):
    assert main(["trees", "hf:llama", "num_hidden_layers=80", "hidden_size=64", "num_attention_heads=4",
                 "num_key_value_heads=2", "intermediate_size=128", "vocab_size=256"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.{i}.mlp.up_proj.weight" in out and "layers 0-79 (x80)" in out
    assert out.count("model.layers.{i}.") == 9  # not 80 copies of a layer


def test_out_writes_a_tree_that_reads_back(tmp_path, capsys):
    out = str(tmp_path / "llama.json")
    assert main(["trees", f"hf:{LLAMA_CONFIG}", "--out", out]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"wrote {out}")
    assert read_tree(out).params == read_tree(f"hf:{LLAMA_CONFIG}").params
    assert main(["trees", out]) == 0
    assert "21 tensors, 106,816 parameters" in capsys.readouterr().out


def test_json_flag_prints_the_document(capsys):
    assert main(["trees", os.path.join(DATA, "maxtext_tiny", "llama3.1", "maxtext_params.scan1.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "ckptmap.tree" and doc["count"] == 12
    assert doc["params"]["params-decoder-layers-mlp-wi_0-kernel"] == {"shape": [64, 2, 128], "dtype": "float32"}


def test_maxtext_spec_goes_to_the_maxtext_reader(monkeypatch, capsys):
    import ckptmap.maxtext.sessions as sessions
    from ckptmap.trees.model import ParamInfo, ParamTree

    calls = []

    def fake_reader(model_name, overrides, scan_layers=None):
        calls.append((model_name, overrides, scan_layers))
        return ParamTree.from_items([ParamInfo("params-decoder-decoder_norm-scale", (64,))], origin=model_name,
                                    framework="maxtext")

    monkeypatch.setattr(sessions, "read_maxtext_tree", fake_reader)
    assert main(["trees", "maxtext:llama3.1-8b", "base_emb_dim=64", "scan_layers=false"]) == 0
    assert calls == [("llama3.1-8b", ["base_emb_dim=64"], False)]
    assert "params-decoder-decoder_norm-scale" in capsys.readouterr().out


def _bad_inputs(tmp_path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, the exact one-line error)."""
    missing = str(tmp_path / "missing.json")
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"a": [1, 2]')
    shape = tmp_path / "shape.json"
    shape.write_text('{"model.norm.weight": [4, -1]}')
    dup = tmp_path / "dup.json"
    dup.write_text('{"w": [1], "w": [1]}')
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(struct.pack("<Q", 100) + b'{"w": {"dtype"')
    return {
        "missing": (["trees", missing], f"{missing}: no such file"),
        "invalid": (["trees", str(invalid)],
                    f"{invalid}: invalid JSON at line 1 column 13: Expecting ',' delimiter"),
        "shape": (["trees", str(shape)], f"{shape}: parameter 'model.norm.weight': shape must be a list of "
                                         "non-negative integers, got [4, -1]"),
        "duplicate": (["trees", str(dup)], f"{dup}: parameter 'w': duplicated name in JSON"),
        "model_type": (["trees", "hf:llamma"], "hf:llamma: parameter 'model_type': unknown model_type 'llamma' "
                                               f"(transformers {__import__('transformers').__version__})"),
        "truncated": (["trees", str(cut)], f"{cut}: truncated safetensors header: it declares 100 bytes but the "
                                           "file has only 14 after the length"),
    }


@pytest.mark.parametrize("case", ["missing", "invalid", "shape", "duplicate", "model_type", "truncated"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    argv, message = _bad_inputs(tmp_path)[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"ckptmap trees: error: {message}\n"


@pytest.mark.parametrize("case", ["truncated", "model_type"])
def test_console_script_subprocess_error(tmp_path, case):
    argv, message = _bad_inputs(tmp_path)[case]
    proc = subprocess.run([CKPTMAP, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr == f"ckptmap trees: error: {message}\n"
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_every_fixture_file_prints(capsys):
    """Acceptance: `ckptmap trees` reads every fixture file (trees and configs); only the Qwen3-Omni config needs
    `enable_audio_output=false` (see test_trees_hf.EXTRA_OVERRIDES)."""
    paths = sorted(glob.glob(os.path.join(DATA, "maxtext_tiny", "*", "*.json"))
                   + glob.glob(os.path.join(DATA, "agent_context", "*", "*.json")))
    assert len(paths) == 82
    failed = [p for p in paths if main(["trees", p]) != 0]
    assert failed == [os.path.join(DATA, "maxtext_tiny", "qwen3-omni", "config.json")]
    assert main(["trees", failed[0], "enable_audio_output=false"]) == 0
    assert capsys.readouterr().out.count(" tensors, ") == 82
