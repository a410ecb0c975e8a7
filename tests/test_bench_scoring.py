"""Scoring a mapping against a ground truth: a tiny hand-made HF -> MaxText case built here with plain numpy."""

import numpy as np
import pytest

from ckptmap.benchmarks.gt_store import SEED, GroundTruth, MappingEntry
from ckptmap.benchmarks.scoring import compare, rope_ranges, score_mapping
from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.runner import seeded_tensor
from ckptmap.transforms import Chain, Identity, Reshape, RopePermute, Scale, Transpose

HF = {"model.embed.weight": (10, 6), "model.layers.0.q.weight": (8, 6), "model.layers.1.q.weight": (8, 6),
      "model.layers.0.k.weight": (8, 6), "model.layers.1.k.weight": (8, 6)}
Q_LAYERS = ["model.layers.0.q.weight", "model.layers.1.q.weight"]
K_LAYERS = ["model.layers.0.k.weight", "model.layers.1.k.weight"]


def hf(name):
    return seeded_tensor(name, HF[name], SEED, integer=True)


def interleave(x):
    """HF's rotate-half layout -> MaxText's interleaved one, on the last axis."""
    half = x.shape[-1] // 2
    return np.stack([x[..., :half], x[..., half:]], axis=-1).reshape(x.shape)


@pytest.fixture
def truth():
    """MaxText-style targets: the embedding as is; query kernels [in 6, heads 2, head_dim 4] stacked over layers at
    axis 1, RoPE-interleaved and scaled by 1/sqrt(4); key kernels the same without the scale."""
    def kernel(name, scale):
        return interleave(hf(name).T.reshape(6, 2, 4)) * scale
    tensors = {
        "params-token_embedder-embedding": hf("model.embed.weight"),
        "params-decoder-layers-query-kernel": np.stack([kernel(n, 0.5) for n in Q_LAYERS], axis=1),
        "params-decoder-layers-key-kernel": np.stack([kernel(n, 1.0) for n in K_LAYERS], axis=1),
    }
    entries = [MappingEntry("params-token_embedder-embedding", "model.embed.weight"),
               MappingEntry("params-decoder-layers-query-kernel", list(Q_LAYERS)),
               MappingEntry("params-decoder-layers-key-kernel", list(K_LAYERS))]
    shapes = {n: list(a.shape) for n, a in tensors.items()}
    shapes["params-decoder-layers-sink"] = [2]  # a target MaxText itself cannot produce
    return GroundTruth(family="hand", scan=1, model_name="hand-made", status="ok", entries=entries,
                       tensors=tensors, target_shapes=shapes, failed={"params-decoder-layers-sink": "no HF source"})


def attention_rule(sources, target, *, rope=True, scale=None):
    ops = [Transpose((1, 0)), Reshape((6, 8), (6, 2, 4))]
    if rope:
        ops.append(RopePermute("half_to_interleaved"))
    if scale is not None:
        ops.append(Scale("1/sqrt(head_dim)", scale))
    return Rule(sources=(Slot.per_cell(list(sources)),), targets=(Slot.stacked(target, [1]),), chain=Chain(tuple(ops)),
                grid=(2,))


def full_mapping(**query_options):
    return Mapping(rules=[
        Rule(sources=(Slot.single("model.embed.weight"),), targets=(Slot.single("params-token_embedder-embedding"),),
             chain=Identity()),
        attention_rule(Q_LAYERS, "params-decoder-layers-query-kernel", **{"scale": 0.5, **query_options}),
        attention_rule(K_LAYERS, "params-decoder-layers-key-kernel"),
    ])


def verdicts(score):
    return {t.name: t.verdict for t in score.targets}


def test_correct_mapping_scores_every_target_exact(truth):
    score = score_mapping(full_mapping(), truth, HF, method="hand")
    assert verdicts(score) == {"params-token_embedder-embedding": "exact", "params-decoder-layers-query-kernel": "exact",
                               "params-decoder-layers-key-kernel": "exact", "params-decoder-layers-sink": "no_truth"}
    assert (score.scored, score.pct_exact, score.pct_structural, score.unmapped) == (3, 100.0, 100.0, 0)
    assert score.pct_sources_ok == 100.0


def test_planted_wrong_source_scores_wrong_and_names_the_sources(truth):
    mapping = full_mapping()
    mapping.rules[1] = attention_rule(K_LAYERS, "params-decoder-layers-query-kernel", scale=0.5)
    score = score_mapping(mapping, truth, HF)
    query = next(t for t in score.targets if t.name == "params-decoder-layers-query-kernel")
    assert (query.verdict, query.sources_ok) == ("wrong", False)
    assert score.pct_exact == pytest.approx(200 / 3)
    assert score.pct_structural == pytest.approx(200 / 3)


def test_dropped_rope_permutation_scores_structural(truth):
    score = score_mapping(full_mapping(rope=False), truth, HF)
    query = next(t for t in score.targets if t.name == "params-decoder-layers-query-kernel")
    assert (query.verdict, query.detail) == ("structural", "rope halves->interleaved on last axis [0:4]")
    assert (score.pct_exact, score.pct_structural) == (pytest.approx(200 / 3), 100.0)


def test_dropped_rope_and_scale_together_score_structural(truth):
    score = score_mapping(full_mapping(rope=False, scale=None), truth, HF)
    query = next(t for t in score.targets if t.name == "params-decoder-layers-query-kernel")
    assert (query.verdict, query.detail) == ("structural",
                                             "rope halves->interleaved on last axis [0:4] + affine 0.5*x+0")


def test_dropped_query_scale_scores_structural_affine(truth):
    score = score_mapping(full_mapping(scale=None), truth, HF)
    query = next(t for t in score.targets if t.name == "params-decoder-layers-query-kernel")
    assert (query.verdict, query.detail) == ("structural", "affine 0.5*x+0")


def test_missing_rule_scores_unmapped(truth):
    mapping = full_mapping()
    del mapping.rules[2]
    score = score_mapping(mapping, truth, HF)
    assert verdicts(score)["params-decoder-layers-key-kernel"] == "unmapped"
    assert score.unmapped == 1


def test_rule_reading_a_missing_tensor_fails_only_its_targets(truth):
    mapping = full_mapping()
    mapping.rules[0] = Rule(sources=(Slot.single("model.nope.weight"),),
                            targets=(Slot.single("params-token_embedder-embedding"),), chain=Identity())
    score = score_mapping(mapping, truth, HF)
    embed = next(t for t in score.targets if t.name == "params-token_embedder-embedding")
    assert embed.verdict == "wrong" and "model.nope.weight" in embed.detail
    assert verdicts(score)["params-decoder-layers-key-kernel"] == "exact"


def test_compare_reports_shape_mismatch_and_partial_rope():
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    assert compare(x, x.T.copy()) == ("wrong", "shape (2, 12), expected (12, 2)")
    rotated_tail = x.copy()
    rotated_tail[:, 4:] = interleave(x[:, 4:])  # deepseek-style: only the trailing rope part is permuted
    assert compare(x, rotated_tail) == ("structural", "rope halves->interleaved on last axis [4:12]")
    assert compare(x, 2 * x + 1) == ("structural", "affine 2*x+1")


def test_rope_ranges_cover_whole_leading_and_trailing_even_parts():
    assert rope_ranges(8) == [(0, 8), (2, 8), (0, 6), (4, 8), (0, 4)]
    assert rope_ranges(5) == [(1, 5), (0, 4)]
    assert rope_ranges(3) == []
