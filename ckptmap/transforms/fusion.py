"""Ops that change the number of arrays: Split / Concat (fused tensors) and Unstack / Stack (layers, experts).

Interleaved layout (`interleave=True`): the fused axis is R rounds of [block_0 | block_1 | ... ] where part k
contributes `block_k` consecutive elements per round (R = sizes[k] // block_k, equal for all parts). With two equal
parts and block 1 this is gpt-oss' gate/up layout: part0 = x[..., ::2], part1 = x[..., 1::2]. A per-part block of
(heads_per_group * head_dim, head_dim, head_dim) describes a qkv fused per kv-head group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from ckptmap.transforms.base import Op, Shapes, ShapeMismatch, TransformError, freeze_tuple, norm_axis
from ckptmap.transforms.codegen import axis_slice, paren
from ckptmap.transforms.registry import register

Block = Union[int, tuple[int, ...]]


def interleave_rounds(sizes: tuple[int, ...], block: Block) -> tuple[int, tuple[int, ...]]:
    """(R, per-part block) of an interleaved layout, or TransformError when sizes and block disagree."""
    blocks = tuple(block) if isinstance(block, tuple) else (int(block),) * len(sizes)
    if len(blocks) != len(sizes) or min(blocks) < 1:
        raise TransformError(f"interleave block {block} does not fit {len(sizes)} parts")
    if any(s % b for s, b in zip(sizes, blocks)):
        raise TransformError(f"interleave block {block} does not divide sizes {sizes}")
    rounds = {s // b for s, b in zip(sizes, blocks)}
    if len(rounds) != 1:
        raise TransformError(f"interleave block {block} gives unequal rounds for sizes {sizes}")
    return rounds.pop(), blocks


def _part_positions(rounds: int, blocks: tuple[int, ...]) -> list[np.ndarray]:
    """Positions along the fused axis that each part occupies, in the part's own order."""
    width = sum(blocks)
    out, offset = [], 0
    for b in blocks:
        out.append((np.arange(rounds)[:, None] * width + np.arange(offset, offset + b)).ravel())
        offset += b
    return out


def _part_positions_code(rounds: int, blocks: tuple[int, ...]) -> list[str]:
    width = sum(blocks)
    out, offset = [], 0
    for b in blocks:
        if b == 1:
            out.append(f"np.arange({offset}, {rounds * width}, {width})")
        else:
            out.append(f"(np.arange(0, {rounds * width}, {width})[:, None] + np.arange({offset}, {offset + b})).ravel()")
        offset += b
    return out


def _check_sizes(op: Op, sizes: tuple[int, ...]) -> None:
    if not sizes or min(sizes) < 1:
        raise TransformError(f"{op.op_name}: sizes must be positive, got {sizes}")


def _fusion_cost(interleave: bool, block: Block) -> float:
    if not interleave:
        return 0.5
    coarse = any(b != 1 for b in (block if isinstance(block, tuple) else (block,)))
    return 1.75 if coarse else 1.5


def _describe(name: str, axis: int, sizes, interleave: bool, block: Block) -> str:
    extra = ""
    if interleave:
        extra = ", interleaved" + (f" block={block}" if block != 1 else "")
    return f"{name}(axis={axis}, {list(sizes)}{extra})"


@dataclass(frozen=True)
class _Fusion(Op):
    """The parameters Split and Concat share: parts of `sizes` along `axis`, contiguous or interleaved."""

    axis: int
    sizes: tuple[int, ...]
    interleave: bool = False
    block: Block = 1

    def __post_init__(self):
        freeze_tuple(self, "sizes")
        if isinstance(self.block, list):
            freeze_tuple(self, "block")
        _check_sizes(self, self.sizes)
        if self.interleave:
            interleave_rounds(self.sizes, self.block)


@register("split")
@dataclass(frozen=True)
class Split(_Fusion):
    """1 -> n: [.., sum(sizes), ..] -> n arrays [.., sizes[k], ..] (contiguous, or interleaved: see module doc)."""

    def shape(self, in_shapes: Shapes) -> Shapes:
        if len(in_shapes) != 1:
            raise ShapeMismatch(f"{self.describe()} takes 1 array, got {len(in_shapes)}")
        s = list(in_shapes[0])
        a = norm_axis(self.axis, len(s), self)
        if s[a] != sum(self.sizes):
            raise ShapeMismatch(f"{self.describe()}: axis {self.axis} of shape {tuple(s)} is {s[a]}, "
                                f"expected {sum(self.sizes)}")
        return tuple(tuple(s[:a] + [n] + s[a + 1:]) for n in self.sizes)

    def apply(self, arrays):
        self.shape(tuple(np.shape(x) for x in arrays))
        x = np.asarray(arrays[0])
        a = norm_axis(self.axis, x.ndim, self)
        if self.interleave:
            return tuple(np.take(x, pos, axis=a) for pos in _part_positions(*interleave_rounds(self.sizes, self.block)))
        return tuple(np.split(x, np.cumsum(self.sizes)[:-1], axis=a))

    def inverse(self) -> Op:
        return Concat(self.axis, self.sizes, self.interleave, self.block)

    def to_code(self, args: list[str]) -> list[str]:
        x = paren(args[0])
        n = len(self.sizes)
        if not self.interleave:
            bounds = np.concatenate([[0], np.cumsum(self.sizes)])
            return [x + axis_slice(self.axis, f"{bounds[k]}:{bounds[k + 1]}") for k in range(n)]
        rounds, blocks = interleave_rounds(self.sizes, self.block)
        if all(b == 1 for b in blocks):
            return [x + axis_slice(self.axis, f"{k}::{n}") for k in range(n)]
        # Index arrays by subscript, not np.take: MaxText hands hooks jax arrays, whose np.take is not supported.
        return [x + axis_slice(self.axis, pos) for pos in _part_positions_code(rounds, blocks)]

    @property
    def cost(self) -> float:
        return _fusion_cost(self.interleave, self.block)

    def describe(self) -> str:
        return _describe("split", self.axis, self.sizes, self.interleave, self.block)


@register("concat")
@dataclass(frozen=True)
class Concat(_Fusion):
    """n -> 1: arrays [.., sizes[k], ..] -> [.., sum(sizes), ..] (contiguous or interleaved); inverse of Split."""

    @property
    def n_in(self) -> int:
        return len(self.sizes)

    def shape(self, in_shapes: Shapes) -> Shapes:
        self.check_arity(len(in_shapes))
        first = list(in_shapes[0])
        a = norm_axis(self.axis, len(first), self)
        for s, n in zip(in_shapes, self.sizes):
            s = list(s)
            if len(s) != len(first) or s[a] != n or s[:a] + s[a + 1:] != first[:a] + first[a + 1:]:
                raise ShapeMismatch(f"{self.describe()}: input shapes {[tuple(t) for t in in_shapes]} do not fit")
        return (tuple(first[:a] + [sum(self.sizes)] + first[a + 1:]),)

    def apply(self, arrays):
        self.shape(tuple(np.shape(x) for x in arrays))
        parts = [np.asarray(x) for x in arrays]
        a = norm_axis(self.axis, parts[0].ndim, self)
        joined = np.concatenate(parts, axis=a)
        if not self.interleave:
            return (joined,)
        positions = np.concatenate(_part_positions(*interleave_rounds(self.sizes, self.block)))
        return (np.take(joined, np.argsort(positions), axis=a),)

    def inverse(self) -> Op:
        return Split(self.axis, self.sizes, self.interleave, self.block)

    def to_code(self, args: list[str]) -> list[str]:
        joined = f"np.concatenate([{', '.join(args)}], axis={self.axis})"
        if not self.interleave:
            return [joined]
        positions = ", ".join(_part_positions_code(*interleave_rounds(self.sizes, self.block)))
        return [joined + axis_slice(self.axis, f"np.argsort(np.concatenate([{positions}]))")]

    @property
    def cost(self) -> float:
        return _fusion_cost(self.interleave, self.block)

    def describe(self) -> str:
        return _describe("concat", self.axis, self.sizes, self.interleave, self.block)


@register("stack")
@dataclass(frozen=True)
class Stack(Op):
    """n -> 1: n arrays of one shape -> one array with a new axis of size n at `axis` (layers, experts)."""

    axis: int
    n: int

    def __post_init__(self):
        if self.n < 1:
            raise TransformError(f"stack: n must be >= 1, got {self.n}")

    @property
    def n_in(self) -> int:
        return self.n

    def shape(self, in_shapes: Shapes) -> Shapes:
        self.check_arity(len(in_shapes))
        first = tuple(in_shapes[0])
        if any(tuple(s) != first for s in in_shapes):
            raise ShapeMismatch(f"{self.describe()}: inputs differ in shape: {sorted(set(map(tuple, in_shapes)))}")
        out = list(first)
        out.insert(norm_axis(self.axis, len(first) + 1, self), self.n)
        return (tuple(out),)

    def apply(self, arrays):
        self.shape(tuple(np.shape(x) for x in arrays))
        return (np.stack([np.asarray(x) for x in arrays], axis=self.axis),)

    def inverse(self) -> Op:
        return Unstack(self.axis, self.n)

    def to_code(self, args: list[str]) -> list[str]:
        return [f"np.stack([{', '.join(args)}], axis={self.axis})"]

    @property
    def cost(self) -> float:
        return 0.5

    def describe(self) -> str:
        return f"stack(axis={self.axis}, n={self.n})"


@register("unstack")
@dataclass(frozen=True)
class Unstack(Op):
    """1 -> n: [.., n at `axis`, ..] -> n arrays without that axis."""

    axis: int
    n: int

    def __post_init__(self):
        if self.n < 1:
            raise TransformError(f"unstack: n must be >= 1, got {self.n}")

    def shape(self, in_shapes: Shapes) -> Shapes:
        if len(in_shapes) != 1:
            raise ShapeMismatch(f"{self.describe()} takes 1 array, got {len(in_shapes)}")
        s = list(in_shapes[0])
        a = norm_axis(self.axis, len(s), self)
        if s[a] != self.n:
            raise ShapeMismatch(f"{self.describe()}: axis {self.axis} of shape {tuple(s)} is {s[a]}, not {self.n}")
        return (tuple(s[:a] + s[a + 1:]),) * self.n

    def apply(self, arrays):
        self.shape(tuple(np.shape(x) for x in arrays))
        x = np.asarray(arrays[0])
        a = norm_axis(self.axis, x.ndim, self)
        return tuple(np.take(x, i, axis=a) for i in range(self.n))

    def inverse(self) -> Op:
        return Stack(self.axis, self.n)

    def to_code(self, args: list[str]) -> list[str]:
        x = paren(args[0])
        return [x + axis_slice(self.axis, str(i)) for i in range(self.n)]

    @property
    def cost(self) -> float:
        return 0.5

    def describe(self) -> str:
        return f"unstack(axis={self.axis}, n={self.n})"
