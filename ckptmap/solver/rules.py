"""Instantiate a solved local edge over every aligned layer instance: one Rule with a grid.

The grid follows the target's storage: per-layer target tensors give a grid of one cell per layer; a
scanned target gives its stacked axes as grid dims (and, when several tensors of one template each stack
some layers, e.g. `layers_{j}` inside a scanned `layers`, a leading dim over those tensors). Source slots
are per-cell keys laid out on the same grid. Per-expert source tensors become extra source slots that the
chain stacks first.
"""

from __future__ import annotations

from ckptmap.heuristics.candidates import Operand

from ckptmap.errors import SolveError
from ckptmap.mapping import Rule, Slot
from ckptmap.transforms import Chain, Identity, Parallel


def _nested(grid: tuple[int, ...]):
    if not grid:
        return None
    return [_nested(grid[1:]) for _ in range(grid[0])]


def _set(nested, cell: tuple[int, ...], value: str):
    for i in cell[:-1]:
        nested = nested[i]
    nested[cell[-1]] = value


def _check_full(nested, what: str):
    if isinstance(nested, list):
        for x in nested:
            _check_full(x, what)
    elif nested is None:
        raise SolveError(f"the layers aligned to {what} do not fill its stacked axes", key=what)


def layout_cells(first_targets: list[Operand]) -> tuple[tuple[int, ...], list[tuple[int, ...]], list[str], tuple]:
    """From the first target operand of each instance: (grid, cell of each instance, tensor list, axes)."""
    units = [op.units[0] for op in first_targets]
    if all(not u.inner for u in units):
        if len(units) == 1:
            return (), [()], [units[0].tensor], ()
        return (len(units),), [(i,) for i in range(len(units))], [u.tensor for u in units], ()
    tensors: list[str] = []
    for u in units:
        if u.tensor not in tensors:
            tensors.append(u.tensor)
    ndim = len(units[0].inner)
    sizes = tuple(max(u.inner[d] for u in units) + 1 for d in range(ndim))
    axes = units[0].stacked_axes
    if len(tensors) == 1:
        return sizes, [u.inner for u in units], tensors, axes
    return (len(tensors),) + sizes, [(tensors.index(u.tensor),) + u.inner for u in units], tensors, axes


def build_rule(chain, src_ops: list[list[Operand]], tgt_ops: list[list[Operand]], score: float,
               explain: dict, stack_factory) -> Rule:
    """src_ops[p][k]: the k-th source operand of the edge in instance p; tgt_ops[p][k] likewise.

    `stack_factory(n)` returns the op stacking n per-expert arrays at axis 0 (from ckptmap.transforms).
    """
    grid, cells, tensors, axes = layout_cells([ops[0] for ops in tgt_ops])
    n_targets = len(tgt_ops[0])

    # Target slots.
    targets: list[Slot] = []
    for k in range(n_targets):
        if not grid:
            targets.append(Slot.single(tgt_ops[0][k].units[0].tensor))
            continue
        if not axes:
            targets.append(Slot.per_cell([ops[k].units[0].tensor for ops in tgt_ops]))
            continue
        names: list[str] = []
        for ops in tgt_ops:
            if ops[k].units[0].tensor not in names:
                names.append(ops[k].units[0].tensor)
        if len(names) != len(tensors):
            raise SolveError("parts of one fused source are stacked differently in the target",
                             key=tgt_ops[0][k].units[0].tensor)
        ax = tgt_ops[0][k].units[0].stacked_axes
        targets.append(Slot.stacked(names[0], ax) if len(names) == 1 else Slot.mixed(names, ax))

    # Source slots (one per unit of each operand: per-expert operands give several).
    sources: list[Slot] = []
    branch_sizes: list[int] = []
    for k, op0 in enumerate(src_ops[0]):
        n_units = len(op0.units)
        branch_sizes.append(n_units if op0.stacked_experts else 1)
        for e in range(n_units):
            if not grid:
                u = op0.units[e]
                if u.inner:
                    raise SolveError("a stacked (scanned) source is not supported; solve the other direction "
                                     "and use the reversed mapping", key=u.tensor)
                sources.append(Slot.single(u.tensor))
                continue
            keys = _nested(grid)
            for ops, cell in zip(src_ops, cells):
                u = ops[k].units[e]
                if u.inner:
                    raise SolveError("a stacked (scanned) source is not supported; solve the other direction "
                                     "and use the reversed mapping", key=u.tensor)
                _set(keys, cell, u.tensor)
            _check_full(keys, targets[0].names()[0])
            sources.append(Slot.per_cell(keys))

    if any(n > 1 for n in branch_sizes):
        branches = [stack_factory(n) if n > 1 else Identity() for n in branch_sizes]
        pre = branches[0] if len(branches) == 1 else Parallel(tuple(branches))
        chain = Chain((pre, chain))
    return Rule(sources=tuple(sources), targets=tuple(targets), chain=chain, grid=grid, score=score,
                explain=explain)
