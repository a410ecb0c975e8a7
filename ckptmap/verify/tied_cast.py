"""MaxText's bf16 cast of a tied embedding table, measured and taken out, so that verify measures the mapping.

MaxText computes tied logits as `dot(y, bf16(table).T)` in float32 (`attend_on_embedding`), then divides by
sqrt(emb_dim) (`normalize_embedding_logits`) and applies the final soft-cap. The cast alone moves the logits of a
correct mapping by a KL of ~1e-6 .. 2e-5 at verify's random weights (the "tied floor"), far above the float32 floor of
untied models (~1e-12), so a pass mark above it would let real mismatches through. Two measures:

1. verify draws tied source tables from bf16-representable values (`round_to_bf16`): where the mapping copies the
   table (qwen3, llama), the cast is exact;
2. where the mapping moves it off the grid (gemma: x sqrt(hidden)), the target's logits are recomputed from its
   final-norm output with and without the cast (`cast_effect`); when the recomputation with the cast reproduces the
   model's own logits, the difference is taken out and the KL measures the mapping alone.

Either way the floor a real (off-grid) checkpoint gets is still reported (`CastEffect.floor_off_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The recomputed logits must match the model's own to this relative max |diff| (float32 matmul round-off is ~1e-6)
# before the cast's effect is taken out of them.
REPRODUCTION_TOLERANCE = 1e-4


def round_to_bf16(a: np.ndarray) -> np.ndarray:
    """`a` rounded to the nearest bfloat16 value (ties to even), as float32: what `astype(bfloat16)` keeps."""
    a32 = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    bits = a32.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(a32), out, a32).astype(np.float32)


def on_bf16_grid(a: np.ndarray) -> bool:
    a32 = np.asarray(a, dtype=np.float32)
    return bool(np.array_equal(a32, round_to_bf16(a32)))


@dataclass(frozen=True)
class TiedHead:
    """How a runner turns its final-norm output into logits through a tied table it casts to bf16."""

    table: str  # the parameter name of the table
    normalize: bool = True  # divide by sqrt(emb_dim)
    soft_cap: float = 0.0  # final logit soft-cap (0: off)

    def logits(self, y: np.ndarray, table: np.ndarray) -> np.ndarray:
        z = np.asarray(y, dtype=np.float64) @ np.asarray(table, dtype=np.float64).T
        if self.normalize:
            z = z / np.sqrt(y.shape[-1])
        if self.soft_cap:
            z = self.soft_cap * np.tanh(z / self.soft_cap)
        return z


@dataclass
class CastEffect:
    """What the cast does in one forward pass. `exact_logits`: the model's logits with the cast taken out (None
    where the recomputation did not reproduce them: `reproduction_error`); `floor`: max per-token KL the cast causes
    on this table (0 on the bf16 grid); `floor_off_grid`: the same for a table off the grid (a real checkpoint)."""

    exact_logits: np.ndarray | None
    floor: float
    floor_off_grid: float
    reproduction_error: float
    on_grid: bool

    def to_json(self) -> dict:
        return {"floor": self.floor, "floor_off_grid": self.floor_off_grid, "on_grid": self.on_grid,
                "reproduction_error": self.reproduction_error, "removed": self.exact_logits is not None}


def _kl_max(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0).max())


def off_grid_twin(table: np.ndarray, seed: int = 0) -> np.ndarray:
    """`table` moved off the bf16 grid by a seeded fraction of one bf16 step per element (what a float32 table
    of a real checkpoint looks like to the cast)."""
    t = np.asarray(table, dtype=np.float32)
    rng = np.random.default_rng([seed, t.size, 29])
    step = np.abs(t) * np.float32(2.0 ** -8)
    return (t + step * rng.uniform(-0.5, 0.5, size=t.shape).astype(np.float32)).astype(np.float32)


def cast_effect(head: TiedHead, params: dict[str, np.ndarray], logits: np.ndarray,
                activations: dict[str, np.ndarray]) -> CastEffect | None:
    """The cast's effect on one forward pass of a model with tied head `head` (None without a final-norm output)."""
    y = activations.get("final_norm")
    table = params.get(head.table)
    if y is None or table is None or np.shape(y)[-1] != np.shape(table)[-1]:
        return None
    table = np.asarray(table, dtype=np.float32)
    cast = round_to_bf16(table)
    with_cast = head.logits(y, cast)
    exact = head.logits(y, table)
    model = np.asarray(logits, dtype=np.float64)
    if model.shape != with_cast.shape:
        return None
    scale = max(1.0, float(np.abs(model).max()))
    error = float(np.abs(with_cast - model).max() / scale)
    twin = off_grid_twin(table)
    floor_off_grid = _kl_max(head.logits(y, twin), head.logits(y, round_to_bf16(twin)))
    reproduced = error <= REPRODUCTION_TOLERANCE
    return CastEffect(exact_logits=(model + (exact - with_cast)) if reproduced else None,
                      floor=_kl_max(exact, with_cast), floor_off_grid=floor_off_grid, reproduction_error=error,
                      on_grid=bool(np.array_equal(cast, table)))
