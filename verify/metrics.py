"""Logit and activation metrics: KL(source || target) per token, max |logit diff|, top-1 agreement, relative
activation error.

Thresholds (per-token max KL) by the dtype both models run in:
- float32: 1e-4 (round-off of a correct mapping is ~1e-10 on CPU; a wrong value op gives 1e-2 .. 1);
- bfloat16: 1e-2; float16: 1e-3.
MaxText models that compute logits through the (tied) embedding cast it to bf16 on that path even in float32 runs,
which sets a floor of ~1e-6 on the KL (well under the float32 threshold); `VerifyReport` records the measured value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

KL_THRESHOLDS = {"float32": 1e-4, "bfloat16": 1e-2, "float16": 1e-3}
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


def kl_threshold(dtype: str = "float32") -> float:
    return KL_THRESHOLDS.get(dtype, KL_THRESHOLDS["float32"])


def activation_tolerance(dtype: str = "float32") -> float:
    return ACTIVATION_TOLERANCE.get(dtype, ACTIVATION_TOLERANCE["float32"])
