"""The Op protocol every transform follows, and the errors transforms raise.

An op maps a tuple of arrays to a tuple of arrays. Concrete ops are frozen dataclasses (hashable, comparable,
serialisable); this base class supplies the shared plumbing: arity checks, JSON, `__call__`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from ckptmap.errors import MappingError

Shape = tuple[int, ...]
Shapes = tuple[Shape, ...]


class TransformError(MappingError, ValueError):
    """An op was built with parameters that make no sense, or cannot be read back from JSON."""


class ShapeMismatch(TransformError):
    """The input shapes do not fit the op (wrong count, wrong size along an axis, ...)."""


def as_shapes(shapes: Any) -> Shapes:
    """Normalise `(4, 8)` or `[(4, 8), (8,)]` to a tuple of int tuples; a bare `()` is one scalar shape."""
    shapes = tuple(shapes)
    if not shapes:
        return ((),)
    if all(isinstance(d, (int, np.integer)) for d in shapes):
        return (tuple(int(d) for d in shapes),)
    return tuple(tuple(int(d) for d in s) for s in shapes)


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def norm_axis(axis: int, ndim: int, op: "Op") -> int:
    """A non-negative axis, or ShapeMismatch naming the op."""
    if not -ndim <= axis < ndim:
        raise ShapeMismatch(f"{op.describe()}: axis {axis} out of range for a {ndim}-d array")
    return axis % ndim


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Op):
        return value.to_json()
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_from_jsonable(v) for v in value)
    return value


class Op:
    """Base of every transform: tuple of arrays -> tuple of arrays.

    Subclasses are frozen dataclasses registered under a JSON name (`op_name`). `n_in` is the number of arrays
    the op consumes (None: any number, each handled alike). `is_value_op` marks ops that change values rather
    than layout (RoPE permutation, scale, offset, cast): shape search never proposes them, verify does.
    `elementwise` marks ops that act on each element alone and keep every shape (identity, scale, offset, cast):
    they commute with any slicing or stacking, which export relies on. `value_slot` names the place a value op
    takes in a target's finishing chain ("rope", "scale", "offset", "cast"; transforms.value_kinds orders them).
    `axis_perm` is the axis permutation an op applies (a transpose), `sub_ops` the ops a combinator is built from:
    the layout prior asks these instead of matching class names.
    """

    op_name: ClassVar[str] = ""
    is_value_op: ClassVar[bool] = False
    elementwise: ClassVar[bool] = False
    value_slot: ClassVar[str | None] = None
    n_in: ClassVar[int | None] = 1

    # --- the interface (overridden by each op) ---
    def shape(self, in_shapes: Shapes) -> Shapes:
        raise NotImplementedError

    def apply(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def inverse(self) -> "Op":
        raise NotImplementedError

    def to_code(self, args: list[str]) -> list[str]:
        raise NotImplementedError

    @property
    def cost(self) -> float:
        return 1.0

    @property
    def axis_perm(self) -> tuple[int, ...] | None:
        """The permutation of its one input's axes this op applies; None for an op that is not a transpose."""
        return None

    @property
    def sub_ops(self) -> tuple["Op", ...]:
        """The ops this op is built from (a Chain's steps, a Parallel's branches); () for a primitive op."""
        return ()

    def describe(self) -> str:
        parts = [f"{f.name}={_to_jsonable(getattr(self, f.name))}" for f in dataclasses.fields(self)]
        return f"{self.op_name}({', '.join(parts)})"

    # --- shared plumbing ---
    def __call__(self, *arrays: Any) -> tuple[np.ndarray, ...]:
        """`op(x)`, `op(x, y)` or `op((x, y))`: always returns a tuple."""
        if len(arrays) == 1 and isinstance(arrays[0], (tuple, list)):
            arrays = tuple(arrays[0])
        return self.apply(tuple(arrays))

    def check_arity(self, count: int) -> None:
        if self.n_in is not None and count != self.n_in:
            raise ShapeMismatch(f"{self.describe()} takes {self.n_in} array(s), got {count}")

    def to_json(self) -> dict:
        d: dict = {"op": self.op_name}
        for f in dataclasses.fields(self):
            d[f.name] = _to_jsonable(getattr(self, f.name))
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Op":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"op"}
        if unknown:
            raise TransformError(f"op {cls.op_name!r} has no field(s) {sorted(unknown)}")
        try:
            return cls(**{k: _from_jsonable(v) for k, v in d.items() if k != "op"})
        except TypeError as e:
            raise TransformError(f"op {cls.op_name!r}: {e}") from None


def freeze_tuple(obj: Any, name: str, depth: int = 1) -> None:
    """Turn a list field of a frozen dataclass into a tuple (lists are not hashable)."""
    value = getattr(obj, name)
    if isinstance(value, (list, tuple)):
        value = tuple(tuple(v) if depth > 1 and isinstance(v, (list, tuple)) else v for v in value)
        object.__setattr__(obj, name, value)


def single_array(op: Op, arrays: tuple) -> np.ndarray:
    if len(arrays) != 1:
        raise ShapeMismatch(f"{op.describe()} takes 1 array, got {len(arrays)}")
    return np.asarray(arrays[0])


def single_shape(op: Op, in_shapes: Shapes) -> Shape:
    if len(in_shapes) != 1:
        raise ShapeMismatch(f"{op.describe()} takes 1 array, got {len(in_shapes)}")
    return tuple(in_shapes[0])
