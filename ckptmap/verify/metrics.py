"""Logit and activation metrics: KL(source || target) per token, max |logit diff|, top-1 agreement, relative
activation error; the pass marks (per-token max KL) and the long sequence verify checks last.

Pass marks, each set from the floor measured on correct mappings (ckptmap/benchmarks/RESULTS.md, "Verify: pass marks"):
- float32: KL_FLOAT32 (a correct mapping's round-off: 1e-12 .. 1.5e-9 on attention models; a wrong RoPE scaling,
  theta or activation gives 1e-6 and more); KL_FLOAT32_RECURRENT(_LONG) where gated-delta-net layers' scans set a
  higher floor (qwen3.5, qwen3-next);
- float32 where MaxText's bf16 cast of a tied embedding table stays in the logits (ckptmap.verify.tied_cast could
  not take it out): KL_FLOAT32_TIED_CAST, above the cast's measured floor;
- bfloat16 1e-2, float16 1e-3 (the models' own round-off);
- float32, raised to ROUNDOFF_FACTOR x the source model's own round-off where that is higher (its float32 logits
  against float64, measured on the run's weights and tokens): a tiny random model that amplifies round-off layer
  by layer (Gemma 4: x3 per layer) sets a floor no float32 implementation beats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# float32: 65x the largest floor of a correct mapping measured on attention models (gemma3, 1.5e-9; most sit at
# 1e-12 .. 6e-10, 64 and 1024 tokens), 38x below the smallest mismatch the issue measured (llama4, RoPE scaling off).
KL_FLOAT32 = 1e-7
# float32, models with gated-delta-net (linear attention) layers: 23x qwen3.5's measured floor (4.3e-8, 64 tokens):
# HF's chunked torch scan and MaxText's accumulate differently.
KL_FLOAT32_RECURRENT = 1e-6
# the same on the long sequence, where the scans' round-off grows: 20x qwen3-next's 5.0e-6 at 1024 tokens.
KL_FLOAT32_RECURRENT_LONG = 1e-4
# float32 with MaxText's bf16 cast of a tied table left in the logits: 5x the cast's measured floor (1.8e-5, gemma3).
KL_FLOAT32_TIED_CAST = 1e-4
# float32: the mark is at least this many times the source model's own round-off, KL(float64 || float32) of its
# logits on the run's inputs. Two float32 computations each that far from the exact logits differ by up to twice the
# logit error (KL x4); different op orders and fusions (XLA vs torch) add the rest: tiny gemma4-26b at 64 tokens,
# own round-off 3.9e-8, HF eager vs sdpa attention 7.2e-8, MaxText 1.8e-7 (4.6x); gemma4-31b at 1024 tokens,
# see ckptmap/benchmarks/RESULTS.md. Attention models without that amplification sit at 1e-12 .. 2e-10, where 25x stays
# under KL_FLOAT32 and the fixed mark holds.
ROUNDOFF_FACTOR = 25.0
# ... where that round-off is smooth: at most this. Smooth round-off measured at most 1.6e-6 (tiny gemma4-26b, 512
# tokens; it grows with the length: 3.9e-8 at 64, 3.4e-7 at 256). Above it the source model's float32 and float64
# logits differ by a discontinuity, not by accumulated round-off: a top-k selection flips on near-tied scores
# (deepseek4-tiny at 1024 tokens: the indexer's top-16 in a compressed-attention layer, KL 1.7e-2); the mark is not
# raised, and a long check whose KL is of that size moves to a shorter sequence.
ROUNDOFF_SMOOTH_MAX = 1e-5
# the models' own round-off in half precision
KL_BFLOAT16 = 1e-2
KL_FLOAT16 = 1e-3
KL_THRESHOLDS = {"float32": KL_FLOAT32, "bfloat16": KL_BFLOAT16, "float16": KL_FLOAT16}
# Long context: when a mapping passes, verify runs it once more on a sequence this long (positions 0..N-1), where
# RoPE scaling (llama3.1, YaRN, linear) and theta act on long distances. Tiny llama3.1 with MaxText's RoPE scaling
# off: KL 3.3e-2 at 256 tokens, 0.58 at 1024; the correct mapping's floor there: 3.1e-10 (1.4e-11 at 256).
LONG_RANGE_TOKENS = 1024
# Where the source model itself is not reproducible in float32 at that length (its own round-off above
# ROUNDOFF_SMOOTH_MAX: a selection flips), the long check runs at the next of these lengths instead; 256 tokens
# still catch a RoPE scaling mismatch (above).
LONG_RANGE_FALLBACK_TOKENS = (512, 256)
# ... and where the long check fails on at most this fraction of its tokens while the rest agree: a selection flipped
# on a near-tie there, not a RoPE mismatch (which moves every far position). Tiny gemma4-26b at 1024 tokens: 2 of
# 1024 tokens, from one MoE routing decision in layer 4 whose top-2 margin is 2.4e-7 relative, under the model's own
# amplified round-off (1e-5 relative by then).
LONG_RANGE_LOCALISED_FRACTION = 0.01
# Relative RMS error above which an activation counts as diverged (float32; bf16 paths stay near 1e-3).
ACTIVATION_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 1e-2}


@dataclass
class LogitStats:
    """Per-token KL(source || target) max and mean (nats), max |logit diff|, top-1 agreement in [0, 1], over
    the first `vocab` logits of both (a padded vocab on one side is cut off)."""

    kl_max: float
    kl_mean: float
    max_abs_diff: float
    top1_agreement: float
    vocab: int
    tokens: int
    kl_per_token: np.ndarray | None = field(default=None, repr=False, compare=False)  # [tokens], not in to_json

    def to_json(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in asdict(self).items()
                if k != "kl_per_token"}

    def tokens_over(self, mark: float) -> int:
        """How many tokens have KL above `mark` (all of them when the per-token KLs are not known)."""
        return self.tokens if self.kl_per_token is None else int((self.kl_per_token > mark).sum())


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_logits(source: np.ndarray, target: np.ndarray) -> LogitStats:
    """Compare logits [batch, seq, vocab] (or [tokens, vocab]) of the source and the converted target model."""
    vocab = min(source.shape[-1], target.shape[-1])
    s = np.asarray(source, dtype=np.float64)[..., :vocab].reshape(-1, vocab)
    t = np.asarray(target, dtype=np.float64)[..., :vocab].reshape(-1, vocab)
    if s.shape != t.shape:
        raise ValueError(f"logit shapes differ: {source.shape} vs {target.shape}")
    if not (np.isfinite(s).all() and np.isfinite(t).all()):
        return LogitStats(float("inf"), float("inf"), float("inf"), 0.0, vocab, s.shape[0])
    ls, lt = _log_softmax(s), _log_softmax(t)
    kl = (np.exp(ls) * (ls - lt)).sum(axis=-1)
    kl = np.maximum(kl, 0.0)
    return LogitStats(
        kl_max=float(kl.max()),
        kl_mean=float(kl.mean()),
        max_abs_diff=float(np.abs(s - t).max()),
        top1_agreement=float((s.argmax(-1) == t.argmax(-1)).mean()),
        vocab=vocab,
        tokens=s.shape[0],
        kl_per_token=kl,
    )


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    """RMS(other - reference) / RMS(reference): 0 for identical activations, ~1.4 for unrelated ones."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not np.isfinite(b).all():
        return float("inf")
    denom = np.sqrt(np.mean(a * a)) or 1.0
    return float(np.sqrt(np.mean((a - b) ** 2)) / denom)


def kl_threshold(dtype: str = "float32", *, tied_cast: bool = False, recurrent: bool = False,
                 long: bool = False, roundoff: float | None = None) -> float:
    """The pass mark for runs in `dtype`. `tied_cast`: a bf16 cast of a tied table remains in the logits;
    `recurrent`: the models have gated-delta-net layers; `long`: the long-sequence check (LONG_RANGE_TOKENS);
    `roundoff`: the source model's own float32 round-off on the run's inputs (KL against float64), which raises
    the float32 mark to ROUNDOFF_FACTOR x it."""
    mark = KL_THRESHOLDS.get(dtype, KL_THRESHOLDS["float32"])
    if recurrent and mark == KL_FLOAT32:
        mark = KL_FLOAT32_RECURRENT_LONG if long else KL_FLOAT32_RECURRENT
    if roundoff and dtype == "float32" and roundoff <= ROUNDOFF_SMOOTH_MAX:
        mark = max(mark, ROUNDOFF_FACTOR * float(roundoff))
    return max(mark, KL_FLOAT32_TIED_CAST) if tied_cast else mark


def activation_tolerance(dtype: str = "float32") -> float:
    return ACTIVATION_TOLERANCE.get(dtype, ACTIVATION_TOLERANCE["float32"])
