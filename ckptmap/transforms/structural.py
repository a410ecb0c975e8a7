"""Layout ops on one array (1 -> 1): identity, transpose, reshape, expand/squeeze, pad/truncate.

All are exact (no arithmetic) and each has an exact inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptmap.transforms.base import (Op, Shapes, ShapeMismatch, TransformError, freeze_tuple, norm_axis, numel,
                                     single_array, single_shape)
from ckptmap.transforms.codegen import axis_slice, paren, shape_text
from ckptmap.transforms.registry import register


@register("identity")
@dataclass(frozen=True)
class Identity(Op):
    """Any number of arrays -> the same arrays."""

    n_in = None
    elementwise = True

    def shape(self, in_shapes: Shapes) -> Shapes:
        return tuple(tuple(s) for s in in_shapes)

    def apply(self, arrays):
        return tuple(arrays)

    def inverse(self) -> Op:
        return self

    def to_code(self, args: list[str]) -> list[str]:
        return list(args)

    @property
    def cost(self) -> float:
        return 0.0

    def describe(self) -> str:
        return "identity"


def inversions(perm: tuple[int, ...]) -> int:
    """Inversions of `perm` after merging runs of axes that move together ((1, 2, 3, 0) counts as one swap)."""
    heads = [p for i, p in enumerate(perm) if i == 0 or p != perm[i - 1] + 1]
    return sum(1 for i in range(len(heads)) for j in range(i + 1, len(heads)) if heads[i] > heads[j])


@register("transpose")
@dataclass(frozen=True)
class Transpose(Op):
    """[d0, d1, ...] -> [d_perm[0], d_perm[1], ...] (numpy's transpose)."""

    perm: tuple[int, ...]

    def __post_init__(self):
        freeze_tuple(self, "perm")
        if sorted(self.perm) != list(range(len(self.perm))):
            raise TransformError(f"transpose: {self.perm} is not a permutation")

    def shape(self, in_shapes: Shapes) -> Shapes:
        s = single_shape(self, in_shapes)
        if len(s) != len(self.perm):
            raise ShapeMismatch(f"{self.describe()} needs a {len(self.perm)}-d array, got shape {s}")
        return (tuple(s[p] for p in self.perm),)

    def apply(self, arrays):
        x = single_array(self, arrays)
        self.shape((x.shape,))
        return (np.transpose(x, self.perm),)

    def inverse(self) -> Op:
        return Transpose(tuple(int(i) for i in np.argsort(self.perm)))

    @property
    def axis_perm(self) -> tuple[int, ...]:
        return self.perm

    def to_code(self, args: list[str]) -> list[str]:
        return [f"{paren(args[0])}.transpose{shape_text(self.perm)}"]

    @property
    def cost(self) -> float:
        n = inversions(self.perm)
        return 0.0 if n == 0 else 0.5 + 0.5 * n  # a 2-D swap costs 1

    def describe(self) -> str:
        return f"transpose{self.perm}"


@register("reshape")
@dataclass(frozen=True)
class Reshape(Op):
    """in_shape -> out_shape, same elements in the same (C) order. Both shapes are explicit so it inverts."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def __post_init__(self):
        freeze_tuple(self, "in_shape")
        freeze_tuple(self, "out_shape")
        if numel(self.in_shape) != numel(self.out_shape) or min(self.in_shape + self.out_shape, default=1) < 0:
            raise TransformError(f"reshape {self.in_shape} -> {self.out_shape}: element counts differ")

    def shape(self, in_shapes: Shapes) -> Shapes:
        s = single_shape(self, in_shapes)
        if s != self.in_shape:
            raise ShapeMismatch(f"{self.describe()} got shape {s}")
        return (self.out_shape,)

    def apply(self, arrays):
        x = single_array(self, arrays)
        self.shape((x.shape,))
        return (x.reshape(self.out_shape),)

    def inverse(self) -> Op:
        return Reshape(self.out_shape, self.in_shape)

    def to_code(self, args: list[str]) -> list[str]:
        shape = shape_text(self.out_shape) if self.out_shape else "(())"
        return [f"{paren(args[0])}.reshape{shape}"]

    @property
    def cost(self) -> float:
        return 0.0 if self.in_shape == self.out_shape else 0.2

    def describe(self) -> str:
        return f"reshape{list(self.in_shape)}->{list(self.out_shape)}"


@register("expand_dims")
@dataclass(frozen=True)
class ExpandDims(Op):
    """[...] -> [..., 1 at `axis`, ...] (numpy's expand_dims)."""

    axis: int

    def shape(self, in_shapes: Shapes) -> Shapes:
        s = list(single_shape(self, in_shapes))
        s.insert(norm_axis(self.axis, len(s) + 1, self), 1)
        return (tuple(s),)

    def apply(self, arrays):
        x = single_array(self, arrays)
        self.shape((x.shape,))
        return (np.expand_dims(x, self.axis),)

    def inverse(self) -> Op:
        return Squeeze(self.axis)

    def to_code(self, args: list[str]) -> list[str]:
        return [f"np.expand_dims({args[0]}, {self.axis})"]

    @property
    def cost(self) -> float:
        return 0.1

    def describe(self) -> str:
        return f"expand_dims({self.axis})"


@register("squeeze")
@dataclass(frozen=True)
class Squeeze(Op):
    """[..., 1 at `axis`, ...] -> [...]."""

    axis: int

    def shape(self, in_shapes: Shapes) -> Shapes:
        s = list(single_shape(self, in_shapes))
        a = norm_axis(self.axis, len(s), self)
        if s[a] != 1:
            raise ShapeMismatch(f"{self.describe()}: axis {self.axis} of shape {tuple(s)} has size {s[a]}, not 1")
        del s[a]
        return (tuple(s),)

    def apply(self, arrays):
        x = single_array(self, arrays)
        self.shape((x.shape,))
        return (np.squeeze(x, self.axis),)

    def inverse(self) -> Op:
        return ExpandDims(self.axis)

    def to_code(self, args: list[str]) -> list[str]:
        return [f"np.squeeze({args[0]}, {self.axis})"]

    @property
    def cost(self) -> float:
        return 0.1

    def describe(self) -> str:
        return f"squeeze({self.axis})"


@register("pad")
@dataclass(frozen=True)
class Pad(Op):
    """[.., n, ..] -> [.., before + n + after, ..] filled with `value` (vocab padding). Inverse: Truncate."""

    axis: int
    before: int
    after: int
    value: float = 0

    def __post_init__(self):
        if self.before < 0 or self.after < 0:
            raise TransformError(f"pad: negative amounts ({self.before}, {self.after})")

    def shape(self, in_shapes: Shapes) -> Shapes:
        s = list(single_shape(self, in_shapes))
        a = norm_axis(self.axis, len(s), self)
        s[a] += self.before + self.after
        return (tuple(s),)

    def apply(self, arrays):
        x = single_array(self, arrays)
        a = norm_axis(self.axis, x.ndim, self)
        widths = [(self.before, self.after) if i == a else (0, 0) for i in range(x.ndim)]
        return (np.pad(x, widths, constant_values=self.value),)

    def inverse(self) -> Op:
        return Truncate(self.axis, self.before, -self.after if self.after else None)

    def to_code(self, args: list[str]) -> list[str]:
        widths = f"[({self.before}, {self.after}) if i == {self.axis} % a.ndim else (0, 0) for i in range(a.ndim)]"
        return [f"(lambda a: np.pad(a, {widths}, constant_values={self.value!r}))({args[0]})"]

    @property
    def cost(self) -> float:
        return 1.0

    def describe(self) -> str:
        return f"pad(axis={self.axis}, +{self.before}/+{self.after})"


@register("truncate")
@dataclass(frozen=True)
class Truncate(Op):
    """[.., orig, ..] -> [.., start:stop, ..] (python slice bounds; stop may be negative or None).

    `orig`, when given, is the input size along `axis` (checked); the inverse Pad needs it when `stop` > 0.
    """

    axis: int
    start: int
    stop: Optional[int]
    orig: Optional[int] = None

    def __post_init__(self):
        if self.start < 0:
            raise TransformError(f"truncate: negative start {self.start}")

    def _length(self, n: int) -> int:
        if self.orig is not None and n != self.orig:
            raise ShapeMismatch(f"{self.describe()}: axis {self.axis} has size {n}, expected {self.orig}")
        length = len(range(n)[self.start:self.stop])
        if length == 0 or (self.stop is not None and self.stop > n):
            raise ShapeMismatch(f"{self.describe()}: cannot take [{self.start}:{self.stop}] of size {n}")
        return length

    def shape(self, in_shapes: Shapes) -> Shapes:
        s = list(single_shape(self, in_shapes))
        a = norm_axis(self.axis, len(s), self)
        s[a] = self._length(s[a])
        return (tuple(s),)

    def apply(self, arrays):
        x = single_array(self, arrays)
        a = norm_axis(self.axis, x.ndim, self)
        self._length(x.shape[a])
        idx = [slice(None)] * x.ndim
        idx[a] = slice(self.start, self.stop)
        return (x[tuple(idx)],)

    def inverse(self) -> Op:
        if self.stop is None:
            after = 0
        elif self.stop < 0:
            after = -self.stop
        elif self.orig is not None:
            after = self.orig - self.stop
        else:
            raise TransformError(f"{self.describe()} cannot be inverted without `orig` (the size it cuts from)")
        return Pad(self.axis, self.start, after)

    def to_code(self, args: list[str]) -> list[str]:
        stop = "" if self.stop is None else str(self.stop)
        return [paren(args[0]) + axis_slice(self.axis, f"{self.start}:{stop}")]

    @property
    def cost(self) -> float:
        return 1.0

    def describe(self) -> str:
        return f"truncate(axis={self.axis}, [{self.start}:{'' if self.stop is None else self.stop}])"
