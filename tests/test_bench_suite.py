"""`ckptmap bench --quick` end to end on two fixture families, the thresholds gate, the baselines and the report."""

import json

import pytest

from ckptmap.benchmarks import report
from ckptmap.benchmarks.baselines import MethodSkipped, llm_only, name_greedy, shapes_only
from ckptmap.benchmarks.cases import load_case
from ckptmap.benchmarks.groups import group_tree
from ckptmap.benchmarks.scoring import score_mapping
from ckptmap.benchmarks.suite import run_suite
from ckptmap.cli import main


@pytest.fixture(scope="module")
def llama_unscanned():
    case = load_case("llama3.1", 0)
    assert not isinstance(case, str), case
    return case


def test_quick_bench_on_two_families_writes_every_run(tmp_path, capsys):
    out = tmp_path / "runs.json"
    rc = main(["bench", "--quick", "--families", "llama3.1", "qwen3", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["family"], r["scan"], r["method"]) for r in runs) == sorted(
        (f, s, m) for f in ("llama3.1", "qwen3") for s in (0, 1) for m in ("ckptmap", "ckptmap+code", "name-greedy", "shapes-only"))
    assert all(r["status"] == "ok" and r["solve_s"] >= 0 and r["peak_mb"] > 0 for r in runs)
    greedy = next(r for r in runs if (r["family"], r["scan"], r["method"]) == ("llama3.1", 0, "name-greedy"))
    assert (greedy["targets"], greedy["exact"], greedy["unmapped"]) == (21, 9, 0)
    assert greedy["verdicts"]["params-token_embedder-embedding"][0] == "exact"
    printed = capsys.readouterr().out
    assert "| method | cases |" in printed and "bench --quick: at or above every floor" in printed


def test_quick_bench_fails_below_a_floor(tmp_path, capsys):
    floors = tmp_path / "floors.json"
    floors.write_text(json.dumps({"method": "name-greedy", "metric": "pct_exact", "min": {"llama3.1/scan0": 50.0}}))
    rc = main(["bench", "--quick", "--families", "llama3.1", "--scans", "0", "--methods", "name-greedy",
               "--thresholds", str(floors)])
    assert rc == 1
    assert "llama3.1/scan0: name-greedy pct_exact 42.86 < floor 50.0" in capsys.readouterr().err


def test_families_maxtext_cannot_map_are_reported_not_dropped():
    lines = []
    result = run_suite(families=["qwen3-vl"], scans=(1,), methods=("shapes-only",), progress=lines.append)
    assert result.runs == []
    assert "scan_layers=False" in result.unavailable["qwen3-vl/scan1"]
    assert lines and lines[0].startswith("qwen3-vl/scan1: not benchmarked: MaxText cannot map it")


def test_baselines_group_layers_and_get_the_unambiguous_tensors_right(llama_unscanned):
    groups = {g.template: g for g in group_tree(llama_unscanned.src)}
    assert groups["model.layers.{i}.mlp.up_proj.weight"].grid == (2,)
    verdicts = {t.name: t.verdict for t in score_mapping(name_greedy(llama_unscanned.src, llama_unscanned.tgt),
                                                         llama_unscanned.gt, llama_unscanned.hf_shapes).targets}
    assert verdicts["params-decoder-logits_dense-kernel"] == "exact"  # [256, 64] -> [64, 256]: a transpose
    assert verdicts["params-decoder-layers_1-self_attention-value-kernel"] == "exact"  # v_proj, by name
    # names alone cannot tell that wo is down_proj: up_proj [128, 64] fits wo [128, 64] without a transpose
    assert verdicts["params-decoder-layers_0-mlp-wo-kernel"] == "wrong"
    shapes = score_mapping(shapes_only(llama_unscanned.src, llama_unscanned.tgt), llama_unscanned.gt,
                           llama_unscanned.hf_shapes)
    assert shapes.unmapped == 0 and shapes.count("wrong") == 14  # equal shapes are a coin toss without names


def test_llm_baseline_is_skipped_without_a_key(llama_unscanned, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(MethodSkipped, match="GEMINI_API_KEY is not set"):
        llm_only(llama_unscanned.src, llama_unscanned.tgt)


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Other topic\n\nkept\n\n## Benchmark suite\n\nold table\n\n"
                    "## Later topic\n\nalso kept\n")
    report.write_section(str(path), "## Benchmark suite\n\nnew table\n")
    assert path.read_text() == ("# Benchmark results\n\n## Other topic\n\nkept\n\n## Benchmark suite\n\nnew table\n\n"
                                "## Later topic\n\nalso kept\n")
    fresh = tmp_path / "NEW.md"
    report.write_section(str(fresh), "## Benchmark suite\n\nfirst\n")
    assert fresh.read_text() == "# Benchmark results\n\n## Benchmark suite\n\nfirst\n"


def test_plot_writes_a_png(tmp_path):
    from ckptmap.benchmarks.plot import plot_accuracy

    result = run_suite(families=["qwen3"], scans=(0,), methods=("name-greedy", "shapes-only"), progress=lambda _: None)
    path = plot_accuracy(result, str(tmp_path / "accuracy.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
