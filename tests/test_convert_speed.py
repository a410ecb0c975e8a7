"""convert_speed's comparison with MaxText's own to_maxtext.py: the command per size, why it does not run, the
memory guard, and the HF input it reads (config.json of the shapes; no tensor repeating another)."""

from __future__ import annotations

import json
import os
import shlex
import sys

import numpy as np

from ckptmap.benchmarks import convert_speed as cs
from ckptmap.benchmarks.bench_convert import llama_trees
from ckptmap.checkpoint_io import open_reader


def _run(cmd: list[str]) -> list[str]:
    """The to_maxtext part of `sh -c 'RUN && find OUT ... sync'`."""
    assert cmd[:2] == ["sh", "-c"]
    run, sync = cmd[2].split(" && ")
    assert sync.startswith("find ") and "sync" in sync
    return shlex.split(run)


def test_llama31_8b_shapes_run_to_maxtext_as_is():
    run = _run(cs.to_maxtext_cmd("/v/bin/python", "/in/hf", "/out/own", cs.SIZES["16GB"]))
    assert run[:3] == ["/v/bin/python", "-m", "maxtext.checkpoint_conversion.to_maxtext"]
    assert {"model_name=llama3.1-8b", "hf_model_path=/in/hf", "base_output_directory=/out/own", "scan_layers=true",
            "hardware=cpu", "skip_jax_distributed_system=true"} == set(run[3:])


def test_other_shapes_override_maxtext_and_give_it_the_hf_config():
    run = _run(cs.to_maxtext_cmd("/v/bin/python", "/in/hf", "/out/own", cs.SIZES["tiny"]))
    assert run[1] == cs.TO_MAXTEXT_HF_CONFIG and os.path.isfile(run[1])
    assert {"override_model_config=true", "base_emb_dim=256", "base_num_query_heads=8", "base_num_kv_heads=2",
            "head_dim=32", "base_mlp_dim=1024", "base_num_decoder_layers=2", "vocab_size=8000",
            "hf_model_path=/in/hf"} <= set(run)


def test_memory_guard():
    assert cs.maxtext_fits(10**9, 4 * 10**9) is None
    why = cs.maxtext_fits(16 * 10**9, 24 * 10**9)
    assert "33.2 GB" in why and "24.0 GB" in why and "--maxtext-anyway" in why


def test_says_why_to_maxtext_cannot_run():
    assert cs.maxtext_runnable("/nonexistent/bin/python") == "no MaxText venv at /nonexistent/bin/python"
    why = cs.maxtext_runnable(sys.executable)  # ckptmap's venv: no MaxText (torch or not)
    assert why is not None and ("maxtext" in why or "no torch" in why)


def test_hf_input_has_its_config_and_no_repeated_tensor(tmp_path):
    from transformers import AutoConfig

    shape = (64, 4, 2, 16, 128, 2, 256)
    hf, _ = llama_trees(*shape)
    path = str(tmp_path / "hf")
    cs.write_hf(path, hf, config=cs.llama_config(*shape))
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    assert raw["dtype"] == "bfloat16" and raw["tie_word_embeddings"] is False
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size,
            cfg.num_hidden_layers, cfg.vocab_size) == shape
    with open_reader(path) as r:
        a, b = r.read("model.layers.0.mlp.up_proj.weight"), r.read("model.layers.1.mlp.up_proj.weight")
        assert (a.view(np.uint16) != b.view(np.uint16)).mean() >= 0.95  # layers differ (fresh mantissas)
        std = float(a.astype(np.float32).std())
        assert 0.015 <= std <= 0.03 and np.isfinite(a.astype(np.float32)).all()


def test_repeated_runs_report_the_median_and_keep_every_run():
    rows = None
    for seconds, rss in ((30.0, 100), (10.0, 300), (20.0, 200)):
        rows = cs.merged(rows, {"seconds": seconds, "peak_rss_mb": rss, "rc": 0, "tail": [], "out_bytes": 5})
    assert rows["seconds"] == 20.0 and rows["peak_rss_mb"] == 300
    assert [r["seconds"] for r in rows["runs"]] == [30.0, 10.0, 20.0]
    failed = cs.merged(rows, {"seconds": 1.0, "peak_rss_mb": 1, "rc": 1, "tail": ["boom"], "out_bytes": 0})
    assert failed["rc"] == 1 and failed["tail"] == ["boom"] and len(failed["runs"]) == 4
    table = cs.table({"x": {"bytes": 10**9, "largest_rule_bytes": 2**20,
                            "cases": {"hf->mt cp": cs.merged(None, {"seconds": 2.0, "peak_rss_mb": 1, "rc": 0}),
                                      "hf->mt ckptmap 2 workers": rows}}}, 2)
    assert "| 1.00 GB | hf->mt | ckptmap 2 workers | 20.0 (10.0-30.0) | 50 | 0.10 | 300 |" in table


def test_differing_files_names_every_difference_but_orbax_commit_notes(tmp_path):
    for side, stamp in (("a", 1), ("b", 2)):
        d = tmp_path / side / "0"
        (d / "items" / "w").mkdir(parents=True)
        (d / "items" / "w" / "c").write_bytes(b"x" * 100)
        (d / "commit_success.txt").write_text(f"committed to /tmp/{side}")
        (d / "_CHECKPOINT_METADATA").write_text(json.dumps({"init_timestamp_nsecs": stamp, "custom": {"s": 1}}))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert cs.differing_files(a, b) == []
    (tmp_path / "b" / "0" / "items" / "w" / "c").write_bytes(b"x" * 99 + b"y")
    (tmp_path / "b" / "0" / "extra").write_text("")
    (tmp_path / "b" / "0" / "_CHECKPOINT_METADATA").write_text(json.dumps({"init_timestamp_nsecs": 2,
                                                                          "custom": {"s": 2}}))
    assert cs.differing_files(a, b) == ["0/_CHECKPOINT_METADATA", "0/extra", "0/items/w/c"]


def test_process_peaks_come_from_converts_report_and_show_beside_the_drivers(tmp_path):
    """time -v sees only the driver of a Ray conversion; each process's own peak comes from convert's summary."""
    script = tmp_path / "fake.sh"
    script.write_text("#!/bin/sh\necho 'wrote 4 tensors (1.0 MB, orbax) to x in 1.00 s (1 worker(s)); largest rule 1 MB'\n"
                      "echo 'process vm:11 wrote 2 tensors (0.5 MB), peak RSS 700 MB'\n"
                      "echo 'process vm:12 wrote 2 tensors (0.5 MB), peak RSS 900 MB'\n")
    script.chmod(0o755)
    run = cs.timed([str(script)])
    assert run["rc"] == 0 and run["process_peak_rss_mb"] == [700, 900]
    run["seconds"] = 2.0  # the fake ran in a few ms, which the harness rounds to 0
    rows = cs.merged(cs.merged(None, run), {**run, "process_peak_rss_mb": [800, 1000]})
    assert rows["process_peak_rss_mb"] == [700, 800, 900, 1000]
    table = cs.table({"x": {"bytes": 10**9, "largest_rule_bytes": 2**20,
                            "cases": {"hf->mt ckptmap 2 processes": rows}}}, 2)
    assert f"| {rows['peak_rss_mb']} driver, 1000 largest process | 1000.00 |" in table
