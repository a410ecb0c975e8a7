"""Logit and activation metrics: KL(source || target) per token, max |logit diff|, top-1 agreement, relative
activation error; the pass marks (per-token max KL) and the long sequence verify checks last.

Pass marks, each set from the floor measured on correct mappings (benchmarks/RESULTS.md, "Verify: pass marks"):
- float32: KL_FLOAT32 (a correct mapping's round-off: 1e-12 .. 1.5e-9 on attention models; a wrong RoPE scaling,
  theta or activation gives 1e-6 and more); KL_FLOAT32_RECURRENT(_LONG) where gated-delta-net layers' scans set a
  higher floor (qwen3.5, qwen3-next);
- float32 where MaxText's bf16 cast of a tied embedding table stays in the logits (ckptmap.verify.tied_cast could
  not take it out): KL_FLOAT32_TIED_CAST, above the cast's measured floor;
- bfloat16 1e-2, float16 1e-3 (the models' own round-off).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
# the models' own round-off in half precision
KL_BFLOAT16 = 1e-2
KL_FLOAT16 = 1e-3
KL_THRESHOLDS = {"float32": KL_FLOAT32, "bfloat16": KL_BFLOAT16, "float16": KL_FLOAT16}
# Long context: when a mapping passes, verify runs it once more on a sequence this long (positions 0..N-1), where
# RoPE scaling (llama3.1, YaRN, linear) and theta act on long distances. Tiny llama3.1 with MaxText's RoPE scaling
# off: KL 3.3e-2 at 256 tokens, 0.58 at 1024; the correct mapping's floor there: 3.1e-10 (1.4e-11 at 256).
LONG_RANGE_TOKENS = 1024
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

    def to_json(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in asdict(self).items()}


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
                 long: bool = False) -> float:
    """The pass mark for runs in `dtype`. `tied_cast`: a bf16 cast of a tied table remains in the logits;
    `recurrent`: the models have gated-delta-net layers; `long`: the long-sequence check (LONG_RANGE_TOKENS)."""
    mark = KL_THRESHOLDS.get(dtype, KL_THRESHOLDS["float32"])
    if recurrent and mark == KL_FLOAT32:
        mark = KL_FLOAT32_RECURRENT_LONG if long else KL_FLOAT32_RECURRENT
    return max(mark, KL_FLOAT32_TIED_CAST) if tied_cast else mark


def activation_tolerance(dtype: str = "float32") -> float:
    return ACTIVATION_TOLERANCE.get(dtype, ACTIVATION_TOLERANCE["float32"])
