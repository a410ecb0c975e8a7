"""Issue 5's acceptance, end to end: for each family, tiny configs derived from the real ones, a trees-only solve,
the value-op search and the final check pass below the float32 threshold (the tied-embedding floor included)."""

from __future__ import annotations

import pytest

from ckptmap.verify.e2e import run_tiny

FAMILIES = ["llama3.1-8b", "qwen3-0.6b", "qwen3-30b-a3b", "mixtral-8x7b", "gemma2-2b", "gemma3-4b",
            "deepseek2-16b", "gpt-oss-20b", "olmo3-7b", "deepseek3-671b", "qwen3.5-35b-a3b"]


@pytest.mark.maxtext
@pytest.mark.slow
@pytest.mark.parametrize("model", FAMILIES)
def test_tiny_solve_and_verify_passes(model):
    mapping, report, seconds = run_tiny(model, scan=True)
    assert mapping.unmapped_targets == []
    assert report.passed, report.table(3)
    assert report.kl_max < 1e-4
    assert report.logits.top1_agreement >= 0.98
    assert seconds < 90
