"""`ckptmap check` on a real-shaped ~100M-parameter llama (hidden 768, 8 layers, vocab 32000, float32), HF <-> MaxText.

The mapping is `tests/data/check/llama100m_scan.mapping.json`, written by `ckptmap solve --source
hf:CONFIG --target <benchmarks.check_real.MAXTEXT_SPEC> --verify` for benchmarks.check_real.HF_CONFIG (solving and
verifying at this size takes minutes on CI's 2 cores; `python -m ckptmap.benchmarks.check_real` runs the whole
pipeline, solve included). The checkpoint is saved here, converted by `ckptmap convert`, and checked: transformers'
from_pretrained against MaxText's load_params_from_path, HF -> MaxText passing; MaxText -> HF with a layer's down
projection permuted in the HF checkpoint converted back fails the check (exit 1), which names layer 5 and that
tensor, every earlier layer at the round-off floor. (`check_real` checks the unplanted reverse conversion too.) (The benchmark also plants
a fault in the Orbax checkpoint: one layer of the stacked query kernel, named with its grid cell.)
"""

from __future__ import annotations

import json
import os

import pytest

from ckptmap.benchmarks.check_real import HF_FAULT, plant_hf_fault, save_llama
from ckptmap.cli import main

pytestmark = pytest.mark.maxtext

MAPPING = os.path.join(os.path.dirname(__file__), "data", "check", "llama100m_scan.mapping.json")
FAST = ["--seeded", "2", "--seq-len", "32"]


def test_check_100m_llama_both_ways_and_a_planted_fault(tmp_path):
    hf, mt, back = str(tmp_path / "hf"), str(tmp_path / "mt.orbax"), str(tmp_path / "hf_back")
    assert save_llama(hf) > 99_000_000
    assert main(["convert", "--mapping", MAPPING, "--input", hf, "--output", f"orbax:{mt}", "--quiet",
                 "--require-verified"]) == 0
    report = str(tmp_path / "r.json")
    assert main(["check", "--mapping", MAPPING, "--source", hf, "--converted", mt, *FAST, "--report", report]) == 0
    got = json.load(open(report))
    assert got["passed"] and got["kl_max"] < 1e-5 and got["top1_agreement"] == 1.0 and got["vocab"] == 32000
    assert "load_params_from_path" in got["converted"]["model"]
    assert got["first_divergence"] is None

    # the reverse direction is checked through its planted fault (one check fewer for CI's time): every stage
    # before the fault sits at the round-off floor, and the fault's stage names that tensor alone
    assert main(["convert", "--mapping", MAPPING, "--input", mt, "--output", back, "--reverse", "--quiet"]) == 0
    bad = str(tmp_path / "bad_hf")
    plant_hf_fault(back, bad)
    assert main(["check", "--mapping", MAPPING, "--source", mt, "--converted", bad, "--reverse", *FAST,
                 "--report", report]) == 1
    got = json.load(open(report))
    assert not got["passed"] and got["kl_max"] > 1e-5
    assert "from_pretrained" in got["converted"]["model"]
    assert got["first_divergence"] == HF_FAULT[2] == "layer_5"
    assert all(got["stage_errors"][f"layer_{i}"] < 1e-5 for i in range(5))
    wrong = [d["name"] for d in got["tensor_diffs"] if d["max_abs_diff"] > 0]
    assert wrong == [HF_FAULT[0]]
