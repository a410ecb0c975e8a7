"""Apply a Mapping to arrays, one rule at a time: the executor shared by convert, verify and the benchmarks.

`apply_rule` reads each grid cell's source arrays (from per-cell tensors, or by indexing a stacked tensor at
its grid axes), runs the rule's chain on them, and writes the outputs into per-cell targets or into a stacked
buffer at the target's grid axes.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ckptmap.errors import MappingError
from ckptmap.mapping import Mapping, Rule, Slot

GetArray = Callable[[str], np.ndarray]


def _cell_index(ndim: int, axes: tuple[int, ...], cell: tuple[int, ...]) -> tuple:
    idx: list = [slice(None)] * ndim
    for axis, i in zip(axes, cell):
        idx[axis] = i
    return tuple(idx)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _nested_shape(keys, name: str) -> tuple[int, ...]:
    """The shape of a nested list of names; a ragged list or a non-string leaf raises MappingError."""
    if isinstance(keys, str):
        return ()
    if not isinstance(keys, list) or not keys:
        raise MappingError(f"slot keys must be a name or a non-empty nested list of names, got {keys!r}"[:300],
                           key=name)
    shapes = {_nested_shape(k, name) for k in keys}
    if len(shapes) != 1:
        raise MappingError("slot keys are a ragged nested list", key=name)
    return (len(keys),) + shapes.pop()


def _check_slot(slot: Slot, grid: tuple[int, ...], where: str) -> None:
    label = f"{where} slot"
    if slot.is_per_cell:
        first = slot.keys
        while isinstance(first, list) and first:
            first = first[0]
        name = first if isinstance(first, str) else label
        shape = _nested_shape(slot.keys, name)
        if shape != tuple(grid[:len(shape)]):
            raise MappingError(f"{label}: keys are nested {list(shape)} but the rule's grid is {list(grid)}",
                               key=name)
        depth = len(shape)
    else:
        if not isinstance(slot.key, str):
            raise MappingError(f"{label}: key must be a tensor name, got {slot.key!r}"[:300])
        name, depth = slot.key, 0
    axes = slot.axes
    if not all(_is_int(a) and a >= 0 for a in axes) or len(set(axes)) != len(axes):
        raise MappingError(f"{label}: axes must be distinct non-negative integers, got {list(axes)}", key=name)
    if axes and len(axes) != len(grid) - depth:
        raise MappingError(f"slot stacks {len(axes)} grid axes but the rule's grid leaves {len(grid) - depth}",
                           key=name)


def check_rules(mapping: Mapping, max_cells: int = 1 << 20) -> None:
    """Raise MappingError naming the first rule part that cannot run: a grid that is not a list of non-negative
    integers, keys that are not nested like the grid, axes that do not fit it, a rule without targets. A mapping
    file edited by hand fails here, before any tensor is read."""
    for i, rule in enumerate(mapping.rules):
        grid = rule.grid
        if not isinstance(grid, tuple) or not all(_is_int(n) and n >= 0 for n in grid):
            raise MappingError(f"rule {i}: grid must be a list of non-negative integers, got {grid!r}"[:300])
        cells = 1
        for n in grid:
            cells *= n
        if cells > max_cells:
            raise MappingError(f"rule {i}: grid {list(grid)} has {cells} cells (more than {max_cells})")
        if not rule.targets:
            raise MappingError(f"rule {i} has no targets")
        if not hasattr(rule.chain, "apply"):
            raise MappingError(f"rule {i}: its chain is not an op")
        for where, slots in (("source", rule.sources), ("target", rule.targets)):
            for slot in slots:
                _check_slot(slot, grid, f"rule {i}: {where}")


def stacked_index(ndim: int, slot: Slot, cell: tuple[int, ...]) -> tuple:
    """The index of one cell's part in a stacked tensor of `ndim` dims (the cell's trailing grid indices at
    `slot.axes`)."""
    return _cell_index(ndim, slot.axes, cell[slot.depth:])


def check_stacked(slot: Slot, cell: tuple[int, ...], shape: tuple[int, ...], grid: tuple[int, ...] | None,
                  name: str) -> None:
    """Raise MappingError unless a stacked tensor of `shape` holds the rule's grid at the slot's axes."""
    inner = cell[slot.depth:]
    if len(slot.axes) != len(inner):
        raise MappingError(f"slot stacks {len(slot.axes)} grid axes but the rule's grid leaves {len(inner)}",
                           key=name)
    if grid is not None:
        sizes = grid[slot.depth:]
        if any(a >= len(shape) for a in slot.axes) or any(shape[a] != n for a, n in zip(slot.axes, sizes)):
            raise MappingError(f"the slot stacks grid {list(sizes)} at axes {list(slot.axes)} of a tensor of shape "
                               f"{list(shape)}", key=name)


def read_cell(slot: Slot, cell: tuple[int, ...], get: GetArray, grid: tuple[int, ...] | None = None) -> np.ndarray:
    """The array one cell of `slot` holds: its own tensor, or a slice of the stacked tensor."""
    name = slot.name_at(cell)
    arr = np.asarray(get(name))
    if not slot.axes:
        return arr
    check_stacked(slot, cell, arr.shape, grid, name)
    return arr[_cell_index(arr.ndim, slot.axes, cell[slot.depth:])]


def cell_outputs(rule: Rule, cell: tuple[int, ...], inputs: tuple) -> tuple:
    """The rule's chain on one cell's source arrays -> one array per target. A chain that does not fit the arrays,
    or gives the wrong number of them, is a MappingError naming the sources and the target."""
    try:
        outputs = rule.chain.apply(inputs)
    except Exception as e:  # a chain that does not fit the arrays is a mapping error, with the names
        names = ", ".join(s.name_at(cell) for s in rule.sources)
        raise MappingError(f"chain {rule.chain.describe()} failed on {names}: {e}",
                           key=rule.targets[0].name_at(cell)) from None
    if len(outputs) != len(rule.targets):
        raise MappingError(f"chain gives {len(outputs)} arrays for {len(rule.targets)} targets",
                           key=rule.targets[0].name_at(cell))
    return outputs


def apply_rule(rule: Rule, get: GetArray) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (target name, array) for every target tensor the rule writes."""
    buffers: dict[tuple[int, str], np.ndarray] = {}
    for cell in rule.cells():
        outputs = cell_outputs(rule, cell, tuple(read_cell(s, cell, get, rule.grid) for s in rule.sources))
        for j, (slot, out) in enumerate(zip(rule.targets, outputs)):
            name = slot.name_at(cell)
            if not slot.axes:
                yield name, out
                continue
            inner = cell[slot.depth:]
            buf = buffers.get((j, name))
            if buf is None:
                shape = list(np.shape(out))
                if any(a >= len(shape) + len(slot.axes) for a in slot.axes):
                    raise MappingError(f"the slot stacks the grid at axes {list(slot.axes)} of a "
                                       f"{len(shape) + len(slot.axes)}-d tensor", key=name)
                for axis, n in sorted(zip(slot.axes, rule.grid[slot.depth:])):
                    shape.insert(axis, n)
                buf = buffers[(j, name)] = np.empty(shape, dtype=np.asarray(out).dtype)
            try:
                buf[_cell_index(buf.ndim, slot.axes, inner)] = out
            except ValueError as e:  # cells of one stacked target that disagree in shape
                raise MappingError(f"a cell's output does not fit the stacked target: {e}", key=name) from None
            if all(i == n - 1 for i, n in zip(inner, rule.grid[slot.depth:])):
                yield name, buffers.pop((j, name))


def apply_mapping(mapping: Mapping, get: GetArray) -> Iterator[tuple[str, np.ndarray]]:
    """Yield every target tensor of `mapping`, rule by rule (a stacked target once all its cells are done)."""
    for rule in mapping.rules:
        yield from apply_rule(rule, get)


def apply_to_dict(mapping: Mapping, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Convenience for in-memory use: source dict -> target dict."""
    def get(name: str) -> np.ndarray:
        try:
            return arrays[name]
        except KeyError:
            raise MappingError("the mapping reads this tensor but the input does not have it", key=name) from None
    return dict(apply_mapping(mapping, get))
