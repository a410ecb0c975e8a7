"""Targets the forward passes cannot test (a tower the source model does not build, or does not read on a text-only
pass) are reported as not checked, with the target's logits shown not to depend on them; a target model that does
read them fails verify. Without MaxText: tiny llama and the qwen3-vl fixture's composite."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.runner import Forward
from ckptmap.transforms import Chain
from ckptmap.verify import HFRunner, verify_mapping

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "maxtext_tiny")


def fixture(family: str) -> dict:
    with open(os.path.join(FIXTURES, family, "config.json")) as f:
        return json.load(f)


LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 256}
TOWER = "tower.proj.kernel"


class WithTower:
    """The llama runner plus a target tensor `TOWER` its forward ignores (or, with `reads`, adds to the logits)."""

    framework = "hf"

    def __init__(self, inner: HFRunner, reads: bool = False):
        self.inner, self.reads, self.aliases, self.vocab = inner, reads, inner.aliases, inner.vocab

    def param_shapes(self):
        return {**self.inner.param_shapes(), TOWER: (8, 4)}

    def dims(self):
        return self.inner.dims()

    def forward(self, params, tokens):
        fwd = self.inner.forward({n: v for n, v in params.items() if n != TOWER}, tokens)
        if self.reads:
            fwd = Forward(fwd.logits + np.float32(params[TOWER].mean()), fwd.activations)
        return fwd

    def close(self):
        pass


def identity_mapping(names) -> Mapping:
    return Mapping(rules=[Rule((Slot.single(n),), (Slot.single(n),), Chain(())) for n in sorted(names)],
                   source="hf:llama", target="hf:llama")


@pytest.fixture(scope="module")
def llama():
    return HFRunner(LLAMA)


def test_targets_of_a_tower_the_source_model_lacks_are_reported_not_checked(llama):
    tower_rule = Rule((Slot.single("model.vision_tower.proj.weight"),), (Slot.single(TOWER),), Chain(()))
    mapping = replace(identity_mapping(llama.param_shapes()),
                      rules=[*identity_mapping(llama.param_shapes()).rules, tower_rule])
    report = verify_mapping(mapping, llama, WithTower(llama))
    assert report.passed and report.kl_max < 1e-12
    assert list(report.unchecked) == [TOWER] and "not in the model verify runs" in report.unchecked[TOWER]
    assert report.unchecked_logit_change == 0.0
    assert "1 targets not checked" in report.unchecked_summary() and "not checked" in report.table()
    assert report.to_json()["unchecked"] == report.unchecked


def test_a_target_that_reads_what_verify_cannot_check_fails(llama):
    tower_rule = Rule((Slot.single("model.vision_tower.proj.weight"),), (Slot.single(TOWER),), Chain(()))
    mapping = replace(identity_mapping(llama.param_shapes()),
                      rules=[*identity_mapping(llama.param_shapes()).rules, tower_rule])
    report = verify_mapping(mapping, llama, WithTower(llama, reads=True), diagnose=False)
    assert not report.passed and report.unchecked_logit_change > 0
    assert "reads 1 tensors the forward passes cannot check" in report.error


def test_targets_whose_sources_the_source_forward_does_not_read_are_not_checked():
    """Qwen3-VL's composite holds its vision tower (under the fixture's names) but a text forward does not read
    it: the rules from it are converted, and reported as not checked."""
    runner = HFRunner(fixture("qwen3-vl")["hf_config"], layout="memory")
    names = sorted(runner.param_shapes())
    rules = [Rule((Slot.single(n),), (Slot.single(n),), Chain(())) for n in names]
    report = verify_mapping(Mapping(rules=rules, source="hf", target="hf"), runner, runner)
    vision = {n for n in names if n.startswith("model.visual.")}
    assert report.passed and set(report.unchecked) == vision
    assert all("not read by the source model's forward pass" in why for why in report.unchecked.values())
    assert report.unchecked_logit_change == 0.0
