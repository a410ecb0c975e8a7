"""Code layouts in use: stored for the bundled families, read live for hf:/maxtext: specs, carried from a tiny
twin to a full-size tree, and taken by `ckptmap solve` (or not, with --code off)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ckptmap import code_reading
from ckptmap.cli import main
from ckptmap.trees import read_tree

REPO = Path(__file__).resolve().parents[1]
MAXTEXT_PYTHON = REPO / ".venv-maxtext" / "bin" / "python"


def _gate_up_chain(path: Path) -> str:
    doc = json.loads(path.read_text())
    rule = next(r for r in doc["rules"] if any("wi_0" in json.dumps(t) and "bias" not in json.dumps(t)
                                               for t in r["targets"]))
    return json.dumps(rule["chain"])


def test_solve_takes_the_code_layout_of_the_bundled_pair(tmp_path, capsys):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    assert main(["solve", "gpt-oss", "--tiny", "--quiet", "--out", str(tmp_path / "code.json")]) == 0
    assert "8 fused-axis layouts read off the code" in capsys.readouterr().out
    assert '"interleave": true' in _gate_up_chain(tmp_path / "code.json")
    assert main(["solve", "gpt-oss", "--tiny", "--quiet", "--code", "off", "--out", str(tmp_path / "off.json")]) == 0
    assert '"interleave": true' not in _gate_up_chain(tmp_path / "off.json")


def test_a_model_too_large_to_run_is_read_on_its_tiny_twin():
    """gpt-oss at a config over max_params: the tiny twin's interleave is carried to every layer of the tree."""
    config = json.loads((REPO / "ckptmap/data/maxtext_tiny/gpt-oss/config.json").read_text())["hf_config"]
    config = dict(config, hidden_size=256, intermediate_size=384, num_hidden_layers=6, head_dim=32,
                  layer_types=["sliding_attention", "full_attention"] * 3, pad_token_id=None, eos_token_id=None,
                  bos_token_id=None)
    from ckptmap.trees import hf, hf_config

    tree = hf.read_hf_tree(hf_config.build_config(config, "big gpt-oss"), origin="big gpt-oss")
    notes: list[str] = []
    found = code_reading.hf_layouts(config, tree, notes, max_params=100_000)
    gate_up = {n: v for n, v in found.items() if n.endswith("experts.gate_up_proj")}
    assert len(gate_up) == 6 and any("tiny twin" in n for n in notes)
    assert all(v == {"axis": 2, "rounds": 384, "blocks": [1, 1]} for v in gate_up.values())


@pytest.mark.maxtext
@pytest.mark.parametrize("family", ["gpt-oss", "qwen3.5"])
def test_stored_layouts_are_what_the_tracers_read_now(family):
    """The committed ckptmap/data/code_layouts are the tracers' output, not hand-written (rebuild: python -m
    ckptmap.code_reading)."""
    assert MAXTEXT_PYTHON.exists(), f"the MaxText tests need {MAXTEXT_PYTHON} (make maxtext-venv)"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fresh, problems, _ = code_reading.build(family)
    assert problems == []
    assert fresh == code_reading.load(family)


@pytest.mark.maxtext
def test_maxtext_spec_layouts_are_read_live():
    assert MAXTEXT_PYTHON.exists(), f"the MaxText tests need {MAXTEXT_PYTHON} (make maxtext-venv)"
    cfg = json.loads((REPO / "ckptmap/data/maxtext_tiny/qwen3.5/config.json").read_text())
    spec = "maxtext:" + " ".join([cfg["maxtext_model_name"], *cfg["maxtext_overrides"], "scan_layers=false"])
    tree = read_tree(spec)
    found = code_reading.layouts_for_spec(spec, tree, [])
    assert found["params-decoder-layers_0-attention-in_proj_qkvz-kernel"] == \
        {"axis": 1, "rounds": 2, "blocks": [16, 16, 32, 32]}
