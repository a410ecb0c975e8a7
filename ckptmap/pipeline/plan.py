"""What a conversion will write, known from the mapping and the input's header before any tensor is read.

For every rule: the tensors it reads, and each target it writes with its shape (the chain's shape rule on the
input's shapes), its dtype (`op_dtypes`: the dtype rule of each op) and its byte count, in the order the executor
(ckptmap.pipeline.execute) finishes them: cell by cell, a rule's stacked targets after its last cell. A writer lays the output out from this before any data arrives, so every
byte is written once at a known offset, whatever order the workers finish in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptmap.errors import MappingError
from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.transforms.combinators import Chain, Parallel, branch_arity
from ckptmap.transforms.constant import Fill
from ckptmap.transforms.expr import np_dtype
from ckptmap.transforms.value import Cast


@dataclass(frozen=True)
class TargetPlan:
    """One output tensor: name, shape, dtype, bytes, and the index of the rule that writes it."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    rule: int
    stacked_axes: tuple[int, ...] = ()  # the axes that hold the rule's grid (one slice per cell), if stacked

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


# slices a worker may have handed to a part-taking writer and not seen written yet, so that it transforms the next
# cell while TensorStore writes the last ones (the executor waits for the oldest beyond this)
WRITE_BEHIND_CELLS = 2
READ_AHEAD_CELLS = 2  # cells whose inputs are being read (or prefetched) while a worker runs this one


@dataclass(frozen=True)
class StackedInput:
    """An input tensor that holds the rule's grid at `axes`: its shape and bytes, and one cell's slice of it."""

    name: str
    nbytes: int
    slice_bytes: int
    axes: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RulePlan:
    """One rule: the input tensors it reads (each once, in order), its targets in the executor's yield order, and
    its bytes in (read) and out (written)."""

    index: int
    sources: tuple[str, ...]
    targets: tuple[TargetPlan, ...]
    in_bytes: int
    largest_source_bytes: int
    stacked_out_bytes: int = 0  # targets assembled whole before they are written
    cell_out_bytes: int = 0  # the largest target written cell by cell
    shared_in_bytes: int = 0  # inputs kept for the whole rule (stacked or read by every cell)
    cell_in_bytes: int = 0  # the largest input read by one cell only
    cells: int = 1
    stacked_cell_out_bytes: int = 0  # one cell's slices of the stacked targets
    stacked_sources: tuple[StackedInput, ...] = ()

    @property
    def out_bytes(self) -> int:
        return sum(t.nbytes for t in self.targets)

    def memory(self, workers: int = 1, *, parts_out: bool = False, sliced: frozenset[str] = frozenset()) -> int:
        """Bytes this rule may hold while it runs on `workers` threads: its stacked targets (assembled whole, or
        with `parts_out` per thread the cell's slices and WRITE_BEHIND_CELLS more still being written by a
        writer that takes parts), the inputs it keeps (a stacked input in `sliced` is read one cell's slice at a
        time instead, READ_AHEAD_CELLS ahead), and per thread at work one cell's input and output (twice: the
        chain's result and its C-ordered copy)."""
        kept_sliced = sum(s.nbytes for s in self.stacked_sources if s.name in sliced)
        per_cell_sliced = (1 + READ_AHEAD_CELLS) * sum(s.slice_bytes for s in self.stacked_sources
                                                       if s.name in sliced)
        per_cell = self.cell_in_bytes + per_cell_sliced + 2 * self.cell_out_bytes
        if parts_out:
            per_cell += (2 + WRITE_BEHIND_CELLS) * self.stacked_cell_out_bytes
        stacked = 0 if parts_out else self.stacked_out_bytes
        return stacked + self.shared_in_bytes - kept_sliced + max(1, min(workers, self.cells)) * per_cell


def op_dtypes(op, in_shapes: tuple, in_dtypes: tuple) -> tuple[tuple, tuple]:
    """(output shapes, output dtypes) of `op` on inputs of these shapes and dtypes, with no array: shapes by
    the op's own shape rule; dtypes by kind: a cast gives its dtype, a fill float32, a chain or parallel op
    composes its parts, every other op (layout, fusion, and value ops, which round back to their input's dtype)
    keeps its inputs' dtype (their common one when the count changes)."""

    if isinstance(op, Chain):
        shapes, dtypes = tuple(in_shapes), tuple(in_dtypes)
        for part in op.ops:
            shapes, dtypes = op_dtypes(part, shapes, dtypes)
        return shapes, dtypes
    if isinstance(op, Parallel):
        shapes_out, dtypes_out, start = [], [], 0
        for b in op.branches:
            k = branch_arity(b)
            sh, dt = op_dtypes(b, in_shapes[start:start + k], in_dtypes[start:start + k])
            shapes_out += sh
            dtypes_out += dt
            start += k
        if start != len(in_shapes):
            op.shape(tuple(in_shapes))  # the op's own error for a wrong input count
        return tuple(shapes_out), tuple(dtypes_out)
    shapes = tuple(tuple(int(d) for d in s) for s in op.shape(tuple(in_shapes)))
    if isinstance(op, Cast):
        return shapes, tuple(np_dtype(op.dtype) for _ in shapes)
    if isinstance(op, Fill):
        return shapes, tuple(np.dtype(np.float32) for _ in shapes)
    if len(shapes) == len(in_dtypes):
        return shapes, tuple(in_dtypes)
    common = np.result_type(*in_dtypes) if in_dtypes else np.dtype(np.float32)
    return shapes, tuple(common for _ in shapes)


def _cell_shape(slot: Slot, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape one cell of a source slot has: the tensor's shape less the stacked grid axes."""
    return tuple(n for i, n in enumerate(shape) if i not in slot.axes)


def _stacked_shape(slot: Slot, cell_shape: tuple[int, ...], grid: tuple[int, ...]) -> tuple[int, ...]:
    shape = list(cell_shape)
    for axis, n in sorted(zip(slot.axes, grid[slot.depth:])):
        shape.insert(axis, n)
    return tuple(shape)


def kept_inputs(rule: Rule) -> set[str]:
    """Source tensors that several cells of the rule slice (stacked or single slots): read once, kept per rule."""
    return {n for s in rule.sources if s.axes or not s.is_per_cell for n in s.names()}


def _slices(slot: Slot, grid: tuple[int, ...]) -> int:
    """How many cells' slices a stacked tensor of `slot` holds."""
    return max(1, int(np.prod(grid[slot.depth:], dtype=np.int64)))


def _is_last(slot: Slot, cell: tuple[int, ...], grid: tuple[int, ...]) -> bool:
    return all(i == n - 1 for i, n in zip(cell[slot.depth:], grid[slot.depth:]))


def plan_rule(index: int, rule: Rule, shape_of, dtype_of, cast: np.dtype | None) -> RulePlan:
    """Plan one rule; `shape_of(name)` / `dtype_of(name)` give an input tensor's shape and dtype."""
    seen: dict[tuple, tuple[tuple, tuple]] = {}
    targets: list[TargetPlan] = []
    stacked_targets: list[TargetPlan] = []
    for cell in rule.cells():
        names = tuple(s.name_at(cell) for s in rule.sources)
        in_shapes = tuple(_cell_shape(s, tuple(shape_of(n))) for s, n in zip(rule.sources, names))
        in_dtypes = tuple(np.dtype(dtype_of(n)) for n in names)
        key = (in_shapes, in_dtypes)
        if key not in seen:
            try:
                shapes, dtypes = op_dtypes(rule.chain, in_shapes, in_dtypes)
            except Exception as e:  # the chain does not fit the input's shapes: named before anything is read
                raise MappingError(f"chain {rule.chain.describe()} does not fit the input's shapes "
                                   f"{[list(s) for s in in_shapes]}: {e}"[:400],
                                   key=rule.targets[0].name_at(cell)) from None
            if len(shapes) != len(rule.targets):
                raise MappingError(f"chain gives {len(shapes)} arrays for {len(rule.targets)} targets",
                                   key=rule.targets[0].name_at(cell))
            seen[key] = (shapes, dtypes)
        shapes, dtypes = seen[key]
        for slot, shape, dtype in zip(rule.targets, shapes, dtypes):
            if slot.axes and not _is_last(slot, cell, rule.grid):
                continue
            full = _stacked_shape(slot, shape, rule.grid) if slot.axes else shape
            plan = TargetPlan(slot.name_at(cell), full, np.dtype(cast if cast is not None else dtype), index,
                              tuple(slot.axes))
            (stacked_targets if slot.axes else targets).append(plan)
    targets += stacked_targets  # the executor writes a rule's stacked targets once its last cell is done
    sources = tuple(dict.fromkeys(rule.source_names()))
    size = {n: int(np.prod(shape_of(n), dtype=np.int64)) * np.dtype(dtype_of(n)).itemsize for n in sources}
    shared = kept_inputs(rule)
    stacked = {n for s in rule.targets if s.axes for n in s.names()}
    by_name = {t.name: t for t in targets}
    stacked_cell_out = sum(max((by_name[n].nbytes // _slices(s, rule.grid) for n in s.names() if n in by_name),
                               default=0) for s in rule.targets if s.axes)
    stacked_sources = tuple(dict.fromkeys(StackedInput(n, size[n], size[n] // _slices(s, rule.grid), tuple(s.axes),
                                                       tuple(shape_of(n)))
                                          for s in rule.sources if s.axes for n in s.names()))
    return RulePlan(index, sources, tuple(targets), sum(size.values()), max(size.values(), default=0),
                    stacked_out_bytes=sum(t.nbytes for t in targets if t.name in stacked),
                    cell_out_bytes=max((t.nbytes for t in targets if t.name not in stacked), default=0),
                    shared_in_bytes=sum(v for n, v in size.items() if n in shared),
                    cell_in_bytes=max((v for n, v in size.items() if n not in shared), default=0),
                    cells=max(1, int(np.prod(rule.grid, dtype=np.int64))),
                    stacked_cell_out_bytes=stacked_cell_out, stacked_sources=stacked_sources)


def plan_mapping(mapping: Mapping, shape_of, dtype_of, cast: np.dtype | None = None) -> list[RulePlan]:
    """Every rule's plan, in the mapping's order; a target two rules write is a MappingError."""
    plans = [plan_rule(i, rule, shape_of, dtype_of, cast) for i, rule in enumerate(mapping.rules)]
    seen: set[str] = set()
    for p in plans:
        for t in p.targets:
            if t.name in seen:
                raise MappingError("two rules write this target", key=t.name)
            seen.add(t.name)
    return plans


def check_planned_shapes(plans: list[RulePlan], want: dict, file: str) -> None:
    """Raise MappingError naming the first planned target whose shape differs from the recorded one."""
    for p in plans:
        for t in p.targets:
            if t.name in want and t.shape != tuple(want[t.name][0]):
                raise MappingError(f"the mapping produces {list(t.shape)} where it was solved for "
                                   f"{list(want[t.name][0])}; nothing was written (an edited mapping?)", file=file,
                                   key=t.name)
