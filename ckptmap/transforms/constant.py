"""Constant ops: a target the source model has no tensor for, filled with a neutral value, and its inverse.

`Fill(shape, value)` takes no array and gives one array of `shape` full of `value` (a norm whose scale the source
model does not learn: its scale is 1 everywhere). `Discard()` takes one array and gives none: the reverse mapping
has nothing to write back. Neither is a layout op the shape search proposes; the solver uses Fill only for a
target no source can explain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptmap.transforms.base import Op, Shapes, ShapeMismatch, freeze_tuple
from ckptmap.transforms.codegen import shape_text
from ckptmap.transforms.registry import register


@register("fill")
@dataclass(frozen=True)
class Fill(Op):
    """() -> (an array of `shape` holding `value` everywhere, float32)."""

    out_shape: tuple[int, ...]
    value: float = 1.0
    n_in = 0

    def __post_init__(self):
        freeze_tuple(self, "out_shape")

    def shape(self, in_shapes: Shapes) -> Shapes:
        if len(in_shapes):
            raise ShapeMismatch(f"{self.describe()} takes no array, got {len(in_shapes)}")
        return (tuple(self.out_shape),)

    def apply(self, arrays):
        self.shape(tuple(np.shape(a) for a in arrays))
        return (np.full(self.out_shape, self.value, dtype=np.float32),)

    def inverse(self) -> Op:
        return Discard()

    def to_code(self, args: list[str]) -> list[str]:
        return [f"np.full({shape_text(self.out_shape)}, {float(self.value)!r}, dtype=np.float32)"]

    @property
    def cost(self) -> float:
        return 1.0

    def describe(self) -> str:
        return f"fill{list(self.out_shape)}={self.value:g}"


@register("discard")
@dataclass(frozen=True)
class Discard(Op):
    """(one array) -> (): nothing is written back."""

    n_in = 1

    def shape(self, in_shapes: Shapes) -> Shapes:
        if len(in_shapes) != 1:
            raise ShapeMismatch(f"{self.describe()} takes 1 array, got {len(in_shapes)}")
        return ()

    def apply(self, arrays):
        self.shape(tuple(np.shape(a) for a in arrays))
        return ()

    def inverse(self) -> Op:
        raise ShapeMismatch("a discarded array cannot be rebuilt")

    def to_code(self, args: list[str]) -> list[str]:
        return []

    @property
    def cost(self) -> float:
        return 0.0

    def describe(self) -> str:
        return "discard"
