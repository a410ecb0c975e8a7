"""Value ops, which shapes cannot see: RoPE layout permutation, scale, offset, cast.

Each works array by array on any number of arrays (n_in None). Arithmetic runs in float32 and the result is cast
back to the input dtype (bfloat16 included), as MaxText's converters do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptmap.transforms.base import Op, Shapes, ShapeMismatch, TransformError
from ckptmap.transforms.codegen import paren
from ckptmap.transforms.expr import eval_expr, np_dtype, reciprocal_expr, round_to
from ckptmap.transforms.registry import register

ROPE_MODES = ("half_to_interleaved", "interleaved_to_half")


def _in_float32(x: np.ndarray, fn) -> np.ndarray:
    x = np.asarray(x)
    return fn(x.astype(np.float32)).astype(x.dtype)


class _PerArray(Op):
    n_in = None
    is_value_op = True

    def shape(self, in_shapes: Shapes) -> Shapes:
        return tuple(tuple(s) for s in in_shapes)

    def apply(self, arrays):
        return tuple(self._one(np.asarray(x)) for x in arrays)

    def to_code(self, args: list[str]) -> list[str]:
        return [self._code(a) for a in args]


@register("rope_permute")
@dataclass(frozen=True)
class RopePermute(_PerArray):
    """[..., d] -> [..., d], permuting the last axis between RoPE layouts.

    half: [x0 .. x_{d/2-1}, y0 .. y_{d/2-1}] (HF's rotate_half); interleaved: [x0, y0, x1, y1, ...] (MaxText).
    """

    value_slot = "rope"

    mode: str

    def __post_init__(self):
        if self.mode not in ROPE_MODES:
            raise TransformError(f"rope_permute: mode must be one of {ROPE_MODES}, got {self.mode!r}")

    def shape(self, in_shapes: Shapes) -> Shapes:
        for s in in_shapes:
            if not s or s[-1] % 2:
                raise ShapeMismatch(f"{self.describe()}: last axis of {tuple(s)} must be even")
        return super().shape(in_shapes)

    def _one(self, x: np.ndarray) -> np.ndarray:
        self.shape((x.shape,))
        if self.mode == "half_to_interleaved":
            half = x.shape[-1] // 2
            return np.stack([x[..., :half], x[..., half:]], axis=-1).reshape(x.shape)
        return np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)

    def _code(self, a: str) -> str:
        if self.mode == "half_to_interleaved":
            return ("(lambda a: np.stack([a[..., :a.shape[-1] // 2], a[..., a.shape[-1] // 2:]], axis=-1)"
                    f".reshape(a.shape))({a})")
        return f"np.concatenate([{paren(a)}[..., 0::2], {paren(a)}[..., 1::2]], axis=-1)"

    def inverse(self) -> Op:
        return RopePermute(ROPE_MODES[1 - ROPE_MODES.index(self.mode)])

    @property
    def cost(self) -> float:
        return 2.0

    def describe(self) -> str:
        return f"rope({self.mode})"


@register("scale")
@dataclass(frozen=True)
class Scale(_PerArray):
    """x -> x * value (in float32). `expr` is value in config terms, e.g. `1/sqrt(head_dim)`.

    `round_dtype` records that value was rounded to that dtype before use (Gemma3's bf16 sqrt(hidden)).
    """

    elementwise = True
    value_slot = "scale"

    expr: str
    value: float
    round_dtype: Optional[str] = None

    @classmethod
    def from_expr(cls, expr: str, dims: dict[str, int] | None = None, round_dtype: str | None = None) -> "Scale":
        value = eval_expr(expr, dims)
        if round_dtype:
            value = round_to(value, round_dtype)
        return cls(expr, value, round_dtype)

    def _one(self, x: np.ndarray) -> np.ndarray:
        return _in_float32(x, lambda v: v * np.float32(self.value))

    def _code(self, a: str) -> str:
        return f"(lambda a: (a.astype(np.float32) * np.float32({float(self.value)!r})).astype(a.dtype))({a})"

    def inverse(self) -> Op:
        if self.value == 0:
            raise TransformError(f"{self.describe()} cannot be inverted")
        expr = f"{self.round_dtype}({self.expr})" if self.round_dtype else self.expr
        return Scale(reciprocal_expr(expr), 1.0 / self.value)

    @property
    def cost(self) -> float:
        return 1.0

    def describe(self) -> str:
        rounded = f" rounded to {self.round_dtype}" if self.round_dtype else ""
        return f"scale({self.expr} = {self.value:.6g}{rounded})"


@register("offset")
@dataclass(frozen=True)
class Offset(_PerArray):
    """x -> x + value (in float32): the RMSNorm `1 + w` convention is Offset(1.0)."""

    elementwise = True
    value_slot = "offset"

    value: float

    def _one(self, x: np.ndarray) -> np.ndarray:
        return _in_float32(x, lambda v: v + np.float32(self.value))

    def _code(self, a: str) -> str:
        return f"(lambda a: (a.astype(np.float32) + np.float32({float(self.value)!r})).astype(a.dtype))({a})"

    def inverse(self) -> Op:
        return Offset(-self.value)

    @property
    def cost(self) -> float:
        return 1.0

    def describe(self) -> str:
        return f"offset({self.value:+g})"


@register("cast")
@dataclass(frozen=True)
class Cast(_PerArray):
    """x (from_dtype) -> x.astype(dtype). Names like `float32`, `bfloat16`."""

    elementwise = True
    value_slot = "cast"

    dtype: str
    from_dtype: str

    def __post_init__(self):
        np_dtype(self.dtype)
        np_dtype(self.from_dtype)

    def _one(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np_dtype(self.dtype))

    def _code(self, a: str) -> str:
        return f"{paren(a)}.astype({self.dtype!r})"

    def inverse(self) -> Op:
        return Cast(self.from_dtype, self.dtype)

    @property
    def cost(self) -> float:
        return 0.5

    def describe(self) -> str:
        return f"cast({self.from_dtype}->{self.dtype})"
