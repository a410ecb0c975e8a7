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


def read_cell(slot: Slot, cell: tuple[int, ...], get: GetArray) -> np.ndarray:
    """The array one cell of `slot` holds: its own tensor, or a slice of the stacked tensor."""
    name = slot.name_at(cell)
    arr = np.asarray(get(name))
    if not slot.axes:
        return arr
    inner = cell[slot.depth:]
    if len(slot.axes) != len(inner):
        raise MappingError(f"slot stacks {len(slot.axes)} grid axes but the rule's grid leaves {len(inner)}",
                           key=name)
    return arr[_cell_index(arr.ndim, slot.axes, inner)]


def apply_rule(rule: Rule, get: GetArray) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (target name, array) for every target tensor the rule writes."""
    buffers: dict[tuple[int, str], np.ndarray] = {}
    for cell in rule.cells():
        inputs = tuple(read_cell(s, cell, get) for s in rule.sources)
        try:
            outputs = rule.chain.apply(inputs)
        except Exception as e:  # a chain that does not fit the arrays is a mapping error, with the names
            names = ", ".join(s.name_at(cell) for s in rule.sources)
            raise MappingError(f"chain {rule.chain.describe()} failed on {names}: {e}",
                               key=rule.targets[0].name_at(cell)) from None
        if len(outputs) != len(rule.targets):
            raise MappingError(f"chain gives {len(outputs)} arrays for {len(rule.targets)} targets",
                               key=rule.targets[0].name_at(cell))
        for j, (slot, out) in enumerate(zip(rule.targets, outputs)):
            name = slot.name_at(cell)
            if not slot.axes:
                yield name, out
                continue
            inner = cell[slot.depth:]
            buf = buffers.get((j, name))
            if buf is None:
                shape = list(out.shape)
                for axis, n in sorted(zip(slot.axes, rule.grid[slot.depth:])):
                    shape.insert(axis, n)
                buf = buffers[(j, name)] = np.empty(shape, dtype=out.dtype)
            buf[_cell_index(buf.ndim, slot.axes, inner)] = out
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
