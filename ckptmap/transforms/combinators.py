"""Chain (ops in sequence) and Parallel (branches side by side): both are ops themselves.

Chain([a, b]) applies a then b; Chain([]) is the identity. Parallel([f, g]) hands f its first f.n_in inputs
(1 when f does not say), g the next ones, and concatenates the outputs in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckptmap.transforms.base import Op, Shapes, ShapeMismatch, TransformError, as_shapes
from ckptmap.transforms.registry import op_from_json, register
from ckptmap.transforms.structural import Identity


def branch_arity(op: Op) -> int:
    """How many inputs `op` takes as a Parallel branch: its n_in, or 1 for ops that take any number."""
    return 1 if op.n_in is None else op.n_in


def op_length(op: Op) -> int:
    """Primitive ops on the longest path through `op` (a Chain counts its ops, a Parallel its longest branch)."""
    if isinstance(op, Chain):
        return sum(op_length(o) for o in op.ops)
    if isinstance(op, Parallel):
        return max((op_length(b) for b in op.branches), default=0)
    return 0 if isinstance(op, Identity) else 1


def has_value_ops(op: Op) -> bool:
    if isinstance(op, Chain):
        return any(has_value_ops(o) for o in op.ops)
    if isinstance(op, Parallel):
        return any(has_value_ops(b) for b in op.branches)
    return op.is_value_op


@register("chain")
@dataclass(frozen=True)
class Chain(Op):
    """ops[0] then ops[1] ... (tuple of arrays -> tuple of arrays). Nested chains are flattened, identities dropped.

    `prior` is extra cost for conventions the ops themselves cannot see (e.g. splitting a merged heads*head_dim
    axis as head_dim-major); it is not part of equality.
    """

    ops: tuple[Op, ...] = ()
    prior: float = field(default=0.0, compare=False)

    def __post_init__(self):
        flat: list[Op] = []
        prior = float(self.prior)
        for op in self.ops:
            if not isinstance(op, Op):
                raise TransformError(f"chain: {op!r} is not an op")
            if isinstance(op, Chain):
                flat.extend(op.ops)
                prior += op.prior
            elif not isinstance(op, Identity):
                flat.append(op)
        object.__setattr__(self, "ops", tuple(flat))
        object.__setattr__(self, "prior", prior)

    @property
    def sub_ops(self) -> tuple[Op, ...]:
        return self.ops

    @property
    def n_in(self) -> int | None:
        for op in self.ops:
            if op.n_in is not None:
                return op.n_in
        return None

    def shape(self, in_shapes: Shapes) -> Shapes:
        shapes = as_shapes(in_shapes) if in_shapes else ()
        for op in self.ops:
            shapes = op.shape(shapes)
        return shapes

    def apply(self, arrays):
        arrays = tuple(arrays)
        for op in self.ops:
            arrays = op.apply(arrays)
        return arrays

    def inverse(self) -> Op:
        return Chain(tuple(op.inverse() for op in reversed(self.ops)), self.prior)

    def to_code(self, args: list[str]) -> list[str]:
        exprs = list(args)
        for op in self.ops:
            exprs = op.to_code(exprs)
        return exprs

    @property
    def cost(self) -> float:
        return sum(op.cost for op in self.ops) + self.prior

    def describe(self) -> str:
        return " | ".join(op.describe() for op in self.ops) if self.ops else "identity"

    def to_json(self) -> dict:
        d: dict = {"op": "chain", "ops": [op.to_json() for op in self.ops]}
        if self.prior:
            d["prior"] = round(self.prior, 6)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Chain":
        if not isinstance(d.get("ops", []), list):
            raise TransformError("chain: \"ops\" must be a list")
        return cls(tuple(op_from_json(o) for o in d.get("ops", [])), float(d.get("prior", 0.0)))


@register("parallel")
@dataclass(frozen=True)
class Parallel(Op):
    """Branch i maps its own inputs (branch_arity of them, in order) to its outputs; all outputs in order."""

    branches: tuple[Op, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "branches", tuple(self.branches))
        for b in self.branches:
            if not isinstance(b, Op):
                raise TransformError(f"parallel: {b!r} is not an op")

    @property
    def sub_ops(self) -> tuple[Op, ...]:
        return self.branches

    @property
    def n_in(self) -> int:
        return sum(branch_arity(b) for b in self.branches)

    def _portions(self, items: tuple) -> list[tuple]:
        if len(items) != self.n_in:
            raise ShapeMismatch(f"{self.describe()} takes {self.n_in} array(s), got {len(items)}")
        out, start = [], 0
        for b in self.branches:
            k = branch_arity(b)
            out.append(tuple(items[start:start + k]))
            start += k
        return out

    def shape(self, in_shapes: Shapes) -> Shapes:
        return tuple(s for b, part in zip(self.branches, self._portions(tuple(in_shapes))) for s in b.shape(part))

    def apply(self, arrays):
        return tuple(y for b, part in zip(self.branches, self._portions(tuple(arrays))) for y in b.apply(part))

    def inverse(self) -> Op:
        return Parallel(tuple(b.inverse() for b in self.branches))

    def to_code(self, args: list[str]) -> list[str]:
        return [e for b, part in zip(self.branches, self._portions(tuple(args))) for e in b.to_code(list(part))]

    @property
    def cost(self) -> float:
        return sum(b.cost for b in self.branches)

    def describe(self) -> str:
        return "[" + " ; ".join(b.describe() for b in self.branches) + "]"

    def to_json(self) -> dict:
        return {"op": "parallel", "branches": [b.to_json() for b in self.branches]}

    @classmethod
    def from_json(cls, d: dict) -> "Parallel":
        if not isinstance(d.get("branches", []), list):
            raise TransformError("parallel: \"branches\" must be a list")
        return cls(tuple(op_from_json(b) for b in d.get("branches", [])))
