"""The sweep over MaxText's models with an HF counterpart (ckptmap/benchmarks/maxtext_models.py, issue 11)."""

from __future__ import annotations

import pytest

from ckptmap.benchmarks.maxtext_models import dedupe, markdown, maxtext_build_error, order, outcome, parse_solve_output

SOLVE_OUTPUT = """\
15 rules, 55 target tensors mapped, 0 unmapped, 0 sources unused (0.08 s)
[  42.0s] verifying with random-weight forward passes of both models
verify: PASS  max KL 7.93e-13 (threshold 1.00e-04, float32)  mean KL 4.34e-13  max |logit diff| 4.77e-06  \
top-1 agreement 100.0%  (64 tokens, vocab 256)
"""


def test_solve_output_is_parsed():
    row = parse_solve_output(SOLVE_OUTPUT)
    assert row["structural_ok"] and row["mapped"] == 55 and row["unmapped"] == 0
    assert row["verify"] == "PASS" and row["kl_max"] == pytest.approx(7.93e-13) and row["top1"] == 1.0
    assert row["dtype"] == "float32" and row["kl_threshold"] == pytest.approx(1e-4)
    failed = parse_solve_output("3 rules, 5 target tensors mapped, 2 unmapped, 1 sources unused (0.1 s)\n"
                                "verify: FAIL  the target model could not be built\n")
    assert not failed["structural_ok"] and failed["verify"] == "FAIL" and "could not be built" in failed["verify_error"]


def test_repeated_tiny_pairs_run_once_and_derived_models_run_first():
    rows = [{"model": "a-paired", "hf": "paired", "decoder_block": "x", "dedupe_key": "k1"},
            {"model": "b-paired", "hf": "paired", "decoder_block": "x", "dedupe_key": "k2"},
            {"model": "c-paired", "hf": "paired", "decoder_block": "y", "dedupe_key": "k3"},
            {"model": "d-derived", "hf": "derived", "decoder_block": "x", "dedupe_key": "k1"},
            {"model": "e-derived", "hf": "derived", "decoder_block": "z", "dedupe_key": "k4"},
            {"model": "f-none", "hf": None, "reason": "no transformers type"}]
    dedupe(rows)
    assert rows[3]["same_as"] == "a-paired" and "same_as" not in rows[4]
    assert [r["model"] for r in order(rows)] == ["e-derived", "a-paired", "c-paired", "b-paired"]


def test_a_model_maxtext_cannot_build_is_reported_with_maxtext_s_error_not_as_a_failure():
    text = ("ckptmap solve: error: maxtext:llama3-405b base_emb_dim=128 scan_layers=true: MaxText could not build the "
            "model: ValidationError: 1 validation error for MaxTextConfig | model_name | Input should be 'default', "
            "'llama2-7b', 'llama3.1-405b' or 'gemma-7b' [type=literal_error]")
    assert maxtext_build_error(text) == ("ValidationError: 1 validation error for MaxTextConfig / model_name is not "
                                         "among the model names MaxText's config accepts")
    assert maxtext_build_error("verify: FAIL  max KL 0.3") == ""
    runs = [{"model": "llama3-405b", "scan": True, "passed": False, "maxtext_cannot_build": maxtext_build_error(text)},
            {"model": "gemma4-e2b", "scan": True, "passed": False,
             "maxtext_cannot_build": "gemma4-e2b requires scan_layers=False"},
            {"model": "gemma4-e2b", "scan": False, "passed": True, "structural_ok": True, "kl_max": 1e-9},
            {"model": "gemma4-26b", "scan": True, "passed": False, "structural_ok": True, "kl_max": 0.4}]
    assert [outcome(r) for r in runs] == ["maxtext_cannot_build", "maxtext_cannot_build", "pass", "fail"]
    table = markdown([{"models": [{"model": m, "hf": "paired", "hf_class": "X"}
                                  for m in ("llama3-405b", "gemma4-e2b", "gemma4-26b")], "runs": runs}])
    assert "| llama3-405b | X | paired | MaxText cannot build / - / - / - |" in table
    assert "MaxText's error: ValidationError" in table
    assert "best scan setting per model: 1 pass, 1 fail, 0 timeout, 1 maxtext cannot build" in table


@pytest.mark.maxtext
def test_plan_finds_the_counterparts_and_names_the_models_without_one():
    from ckptmap.benchmarks.maxtext_models import plan

    rows = {r["model"]: r for r in plan(["llama4-17b-16e", "mistral-7b", "gemma-7b", "kimi-k2-1t", "gpt3-52k",
                                         "qwen3-4b", "qwen3-4b-base"])}
    assert rows["llama4-17b-16e"]["hf"] == "derived" and rows["llama4-17b-16e"]["model_type"] == "llama4_text"
    assert rows["mistral-7b"]["model_type"] == "mistral" and rows["gemma-7b"]["model_type"] == "gemma"
    assert rows["kimi-k2-1t"]["model_type"] == "deepseek_v3" and "deepseek3-671b" in rows["kimi-k2-1t"]["derived_from"]
    assert rows["gpt3-52k"]["hf"] is None and "gpt3" in rows["gpt3-52k"]["reason"]
    assert rows["qwen3-4b"]["hf"] == "paired"
    dedupe(list(rows.values()))
    assert rows["qwen3-4b-base"].get("same_as") == "qwen3-4b"
