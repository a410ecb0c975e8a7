"""The interface every model runner (HF/torch, MaxText worker, ...) implements for verify."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Forward:
    """One forward pass: `logits` [batch, seq, vocab] (float32) and named activations [batch, seq, hidden].

    Activation names are shared by all runners so that two runs can be compared layer by layer:
    `embed` (the scaled input embeddings entering block 0), `layer_{i}` (the output of block i, i the global
    layer index counted from 0), `final_norm` (after the final norm, before the LM head).
    """

    logits: np.ndarray
    activations: dict[str, np.ndarray] = field(default_factory=dict)


class ModelRunner(Protocol):
    """A model built once, run many times with different parameter dicts (name -> array, its own names)."""

    def param_shapes(self) -> dict[str, tuple[int, ...]]: ...

    def forward(self, params: dict[str, np.ndarray], tokens: np.ndarray) -> Forward: ...

    def close(self) -> None: ...


def seeded_tensor(name: str, shape: tuple[int, ...], seed: int = 0, *, integer: bool = False) -> np.ndarray:
    """A reproducible float32 tensor for `name`, identical in every process and Python version.

    integer=True gives small integers in [-8, 8] (exact under transposes, splits and power-of-two scales: used for
    ground truth); otherwise values ~ N(0, 0.02) plus a per-tensor offset so norms and biases are non-constant.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if integer:
        return rng.integers(-8, 9, size=shape).astype(np.float32)
    return (rng.standard_normal(size=shape) * 0.02).astype(np.float32)
