"""Acceptance: an exported module, run by MaxText's own to_maxtext loading steps (and to_huggingface's saving
steps), gives exactly the tensors `ckptmap convert` gives. Runs MaxText in .venv-maxtext through a subprocess
(`python -m ckptmap.export_check`, which imports to_maxtext / to_huggingface and calls their functions)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from ckptmap import checkpoint_io as cio
from ckptmap.convert import convert
from ckptmap.benchmarks.cases import load_case
from ckptmap.benchmarks.scoring import best_of_alternatives
from ckptmap.export import export_maxtext_module
from ckptmap.solver import solve
from test_convert_cases import fixture, fused_qkv_mapping, gpt_oss_experts_mapping, llama_mapping, mixtral_mapping, seeded

REPO = Path(__file__).resolve().parents[1]
MAXTEXT_PYTHON = REPO / ".venv-maxtext" / "bin" / "python"


def write_case(root: Path, name: str, family: str, mapping, hf_shapes: dict, scan: int, model: str) -> str:
    """hf.npz, expected.npz (ckptmap convert), module.py (ckptmap export) and case.json for export_check."""
    cfg, _, mt = fixture(family)
    d = root / name
    d.mkdir()
    hf = seeded({n: s for n, s in hf_shapes.items() if n in set(mapping.source_names())})
    cio.write_all(str(d / "hf.npz"), hf)
    convert(mapping, str(d / "hf.npz"), str(d / "expected.npz"), progress=False)
    expected = cio.read_all(str(d / "expected.npz"))
    export_maxtext_module(mapping, str(d / "module.py"), model, hf_config=cfg["hf_config"], target_shapes=mt[scan])
    case = {"model_name": model, "hf_config": cfg["hf_config"],
            "maxtext_config": cfg["maxtext_config_values"][f"scan{scan}"],
            "target_shapes": {n: list(a.shape) for n, a in expected.items()}}
    (d / "case.json").write_text(json.dumps(case))
    return str(d)


@pytest.mark.maxtext
def test_maxtext_loads_the_exported_module_to_the_same_tensors_as_convert(tmp_path):
    assert MAXTEXT_PYTHON.exists(), f"the MaxText tests need {MAXTEXT_PYTHON} (make maxtext-venv)"
    cases = []
    for scan in (0, 1):
        _, hf, _ = fixture("llama3.1")
        cases.append(write_case(tmp_path, f"llama-scan{scan}", "llama3.1", llama_mapping(bool(scan)), hf, scan,
                                "llama3.1-8b"))
        _, hf, _ = fixture("mixtral")
        cases.append(write_case(tmp_path, f"mixtral-scan{scan}", "mixtral", mixtral_mapping(bool(scan)), hf, scan,
                                "mixtral-8x7b"))
        _, hf, _ = fixture("gpt-oss")
        cases.append(write_case(tmp_path, f"gpt-oss-experts-scan{scan}", "gpt-oss", gpt_oss_experts_mapping(bool(scan)),
                                hf, scan, "gpt-oss-20b"))
        mapping, hf = fused_qkv_mapping(bool(scan))
        cases.append(write_case(tmp_path, f"fused-qkv-scan{scan}", "llama3.1", mapping, hf, scan, "fused-qkv"))
        # Per-key-head regrouped qkvz / ba (a nested split-then-interleaved-concat chain): hooks receive jax
        # arrays when MaxText saves scanned layers.
        case = load_case("qwen3.5", scan)
        solved = solve(case.src, case.tgt)
        mapping, taken = best_of_alternatives(solved.mapping, solved.alternatives, case.gt, case.hf_shapes)
        assert taken
        cfg, hf, _ = fixture("qwen3.5")
        cases.append(write_case(tmp_path, f"qwen3.5-grouped-scan{scan}", "qwen3.5", mapping, hf, scan,
                                cfg["maxtext_model_name"]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([str(MAXTEXT_PYTHON), "-m", "ckptmap.export_check", *cases], capture_output=True, text=True,
                          env=env, timeout=600, cwd=str(REPO))
    results = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
               if line.startswith("CKPTMAP_EXPORT_CHECK ")]
    assert len(results) == len(cases), proc.stderr[-3000:]
    for r in results:
        assert r["load_errors"] == {} and r["load_mismatches"] == {}, r
        assert r["loaded"] == r["expected"] > 0, r
        assert r["save_errors"] == {} and r["save_mismatches"] == {}, r
        assert r["saved"] > 0, r
    assert proc.returncode == 0


def family_cases(root: Path) -> list[str]:
    """One case per fixture family and scan setting, from the solver's mapping (trees alone)."""
    from ckptmap.solver import solve
    from ckptmap.trees import read_tree

    data = REPO / "tests" / "data" / "maxtext_tiny"
    cases = []
    for family in sorted(p.name for p in data.iterdir() if (p / "config.json").exists()):
        cfg, hf_shapes, mt = fixture(family)
        src = read_tree(str(data / family / "hf_params.json"))
        for scan in sorted(mt):
            mapping = solve(src, read_tree(str(data / family / f"maxtext_params.scan{scan}.json"))).mapping
            cases.append(write_case(root, f"{family}-scan{scan}", family, mapping, hf_shapes, scan,
                                    cfg["maxtext_model_name"]))
    return cases


@pytest.mark.maxtext
@pytest.mark.slow
def test_every_fixture_family_exports_a_module_maxtext_loads_like_convert(tmp_path):
    """The solver's mapping for each family and scan setting, exported and run through MaxText's own loaders."""
    assert MAXTEXT_PYTHON.exists(), f"the MaxText tests need {MAXTEXT_PYTHON} (make maxtext-venv)"
    cases = family_cases(tmp_path)
    assert len(cases) >= 36
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([str(MAXTEXT_PYTHON), "-m", "ckptmap.export_check", *cases], capture_output=True, text=True,
                          env=env, timeout=900, cwd=str(REPO))
    results = {r["case"]: r for r in (json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
                                      if line.startswith("CKPTMAP_EXPORT_CHECK "))}
    assert len(results) == len(cases), proc.stderr[-3000:]
    failed = {name: {k: r[k] for k in ("load_mismatches", "load_errors", "save_mismatches", "save_errors") if r[k]}
              for name, r in results.items()}
    assert {name: f for name, f in failed.items() if f} == {}
    assert all(r["loaded"] == r["expected"] > 0 and r["saved"] > 0 for r in results.values())
    for case in cases:  # loop lengths come from the config: always for layers, and for every count in these
        text = Path(case, "module.py").read_text()
        assert "range(config[" in text, case
        if Path(case).name.rsplit("-scan", 1)[0] in ("llama3.1", "mixtral", "qwen3-moe", "deepseek3", "gpt-oss"):
            assert not re.search(r"range\(\d+\)", text), case
