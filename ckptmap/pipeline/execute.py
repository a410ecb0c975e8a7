"""Run planned rules on worker threads, cell by cell, with the bytes in flight under a budget.

Rules enter in the mapping's order (largest tasks first where the writer takes any order) while their bytes
fit the budget (ckptmap.pipeline.budget); each admitted rule's inputs, kept ones first and then its cells' own in
the order the workers will run them, are queued for the read-ahead thread (ckptmap.pipeline.read_ahead: large
sequential reads into the page cache, streaming up to a window ahead of the workers, also while they wait for
their writes), and its grid cells are spread over the threads: a cell reads its slices of the inputs, runs the
chain, and either writes its targets right away (or, for a writer that takes parts, its slices of the stacked
targets) or copies them into the rule's stacked buffers, which are written when the rule's last cell is done.
numpy copies and the writers' system calls release the GIL, so reading, transforming and writing of several
rules overlap.
The first error stops the run: no new cell starts, and the caller aborts the writer.
"""

from __future__ import annotations

import collections
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ckptmap.apply import cell_outputs, check_stacked, read_cell, stacked_index
from ckptmap.array_copy import (SCANNED_ITEMSIZES, contiguous_scanned, copy_into, native_enabled,
                                views_all_of)
from ckptmap.errors import MappingError
from ckptmap.mapping import Mapping, Rule
from ckptmap.pipeline.budget import MemoryBudget
from ckptmap.pipeline.plan import READ_AHEAD_CELLS, WRITE_BEHIND_CELLS, RulePlan, kept_inputs
from ckptmap.pipeline.read_ahead import ReadAhead


@dataclass
class RunStats:
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)
    largest_rule_bytes: int = 0
    budget_peak: int = 0
    cells: int = 0


class _Deferred:
    """One cell's NaN/Inf counts left to the copies that lay its outputs out: `pending` (input name -> the array
    read for it) and `found` (name -> the largest sign-less bit pattern the transpose kernel saw while copying a
    view of all of that input). An input no copy covered is counted on its own after the cell."""

    def __init__(self):
        self.pending: dict[str, np.ndarray] = {}
        self.found: dict[str, int] = {}


def _found(deferred: _Deferred | None, name: str | None, best: int | None) -> None:
    """Record what the kernel saw while copying a view of all of pending input `name` (nothing when no input was
    covered, or the copy did not go through the kernel)."""
    if name is not None and best is not None:
        deferred.found[name] = best


class _RuleState:
    """One admitted rule: its kept inputs, stacked buffers and the count of cells still to run."""

    def __init__(self, rule: Rule, plan: RulePlan, *, parts_out: bool = False, sliced: frozenset[str] = frozenset()):
        self.rule = rule
        self.plan = plan
        self.targets = {t.name: t for t in plan.targets}
        self.kept: dict[str, np.ndarray] = {}
        self.shared = kept_inputs(rule) - sliced
        self.buffers: dict[str, np.ndarray] = {}
        for slot in rule.targets:
            if slot.axes and not parts_out:
                for name in slot.names():
                    t = self.targets[name]
                    self.buffers[name] = np.empty(t.shape, t.dtype)
        self.cells = list(rule.cells())
        self.left = len(self.cells)
        self.lock = threading.Lock()
        self.stand_in = False  # started ahead of a rule that waited for memory (Executor._admit_next)


class Executor:
    """`run(mapping, plans)`: every rule through `read(name)` -> chain -> `write(name, array)`.

    With `write_part(name, index, array)` a stacked target goes to the writer cell by cell, as slices, and is
    never assembled (a worker goes on while the last WRITE_BEHIND_CELLS cells are written); with
    `start_read_part(name, index)` the stacked inputs named in `sliced` are read one cell's slice at a time
    instead of whole, READ_AHEAD_CELLS cells ahead. Either way a rule holds a few cells' bytes, not its whole
    stacked tensors. Both return the function that waits for the write or the read. Rules start in the mapping's
    order, or with `any_order` (a writer that takes tensors in any order) the largest tasks first."""

    def __init__(self, read: Callable[[str], np.ndarray], write: Callable[[str, np.ndarray], None], *,
                 workers: int, max_memory: int | None, check_nonfinite: Callable | None = None,
                 want: dict | None = None, prefetch: Callable[[str], int] | None = None,
                 on_tensor: Callable[[str], None] | None = None, out_file: str | None = None,
                 cast: np.dtype | None = None, on_fail: Callable[[], None] | None = None,
                 write_part: Callable[[str, tuple, np.ndarray], Callable[[], None]] | None = None,
                 start_read_part: Callable[[str, tuple], Callable[[], np.ndarray]] | None = None,
                 sliced: frozenset[str] = frozenset(), any_order: bool = False,
                 nonfinite_limit: Callable[[np.dtype], int | None] | None = None):
        self.read = read
        self.any_order = any_order
        self.write = write
        self.write_part = write_part
        self.start_read_part = start_read_part
        self.sliced = frozenset(sliced) if start_read_part is not None else frozenset()
        self.workers = max(1, int(workers))
        self.budget = MemoryBudget(max_memory)
        self.check_nonfinite = check_nonfinite
        # dtype -> the sign-less bit pattern from which its values are NaN or Inf (None: not such a format); with
        # it, an input whose transpose the kernel copies is checked in that copy (_Deferred), not in a pass of its own
        self.nonfinite_limit = nonfinite_limit if check_nonfinite is not None and native_enabled() else None
        self.want = want or {}
        self.prefetch = prefetch
        self._ahead: ReadAhead | None = None  # the read-ahead thread, while a run is on
        self.on_tensor = on_tensor
        self.out_file = out_file
        self.cast = cast
        self.on_fail = on_fail
        self.stats = RunStats()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._counted: set[str] = set()
        self._read_locks: dict[str, threading.Lock] = {}
        self._stand_ins = 0  # rules running ahead of the first waiting one (see _admit_next)

    # --------------------------------------------------------------------------------------------- one cell
    def _get(self, state: _RuleState, name: str, deferred: _Deferred | None = None) -> np.ndarray:
        if name in state.shared:
            with self._lock:
                lock = self._read_locks.setdefault(name, threading.Lock())
            with lock:  # a shared input is read once per rule, by the first cell that needs it (counted at once)
                if name not in state.kept:
                    state.kept[name] = self._read_counted(name)
                return state.kept[name]
        return self._read_counted(name, deferred)

    def _read_counted(self, name: str, deferred: _Deferred | None = None) -> np.ndarray:
        arr = self.read(name)
        if self._ahead is not None:
            self._ahead.consumed(name)
        if self.check_nonfinite is not None:
            with self._lock:
                first = name not in self._counted
                self._counted.add(name)
            if first:
                self._count_or_defer(name, arr, deferred)
        return arr

    def _count_or_defer(self, name: str, arr: np.ndarray, deferred: _Deferred | None) -> None:
        """Count `arr`'s NaN/Inf now, or leave it to the cell's copies where the kernel can take it on the way."""
        if (deferred is not None and self.nonfinite_limit is not None and arr.dtype.itemsize in SCANNED_ITEMSIZES
                and self.nonfinite_limit(arr.dtype) is not None):
            deferred.pending[name] = arr
        else:
            self._count_nonfinite(name, arr)

    def _count_deferred(self, deferred: _Deferred | None) -> None:
        """After a cell: count each pending input no copy covered, and each one whose copy saw a NaN or Inf
        pattern (the exact numbers)."""
        if deferred is None:
            return
        for name, arr in deferred.pending.items():
            best = deferred.found.get(name)
            if best is None or best >= self.nonfinite_limit(arr.dtype):
                self._count_nonfinite(name, arr)
        deferred.pending.clear()

    def _covered(self, out: np.ndarray, deferred: _Deferred | None) -> str | None:
        """The pending input of which `out` is a (non-contiguous) view of every element, if any."""
        if deferred is None or out.flags.c_contiguous:
            return None
        return next((name for name, arr in deferred.pending.items()
                     if name not in deferred.found and views_all_of(out, arr)), None)

    def _laid_out(self, out: np.ndarray, deferred: _Deferred | None) -> np.ndarray:
        """contiguous(out), the kernel checking NaN/Inf on the way where `out` views all of a pending input."""
        name = self._covered(out, deferred)
        laid, best = contiguous_scanned(out, scan=name is not None)
        _found(deferred, name, best)
        return laid

    def _copy_counted(self, dst: np.ndarray, out: np.ndarray, deferred: _Deferred | None) -> None:
        """copy_into(dst, out), the kernel checking NaN/Inf on the way where `out` views all of a pending input."""
        name = self._covered(out, deferred)
        _found(deferred, name, copy_into(dst, out, scan=name is not None))

    def _count_nonfinite(self, name: str, arr: np.ndarray) -> None:
        """Add `arr`'s NaN/Inf to `name`'s counts (a whole tensor once, or each of its slices)."""
        bad = self.check_nonfinite(arr)
        if bad != (0, 0):
            with self._lock:
                nan, inf = self.stats.nonfinite.get(name, (0, 0))
                self.stats.nonfinite[name] = (nan + bad[0], inf + bad[1])

    def memory(self, plan: RulePlan) -> int:
        """The bytes `plan` holds while it runs here (see RulePlan.memory)."""
        return plan.memory(self.workers, parts_out=self.write_part is not None, sliced=self.sliced)

    def _start_slice(self, slot, cell: tuple[int, ...], grid: tuple[int, ...]) -> Callable[[], np.ndarray]:
        """Start reading one cell's slice of a stacked input; returns the wait for it, which also counts the
        slice's NaN/Inf."""
        name = slot.name_at(cell)
        shape = self._stacked_shapes[name]
        check_stacked(slot, cell, shape, grid, name)
        started = self.start_read_part(name, stacked_index(len(shape), slot, cell))

        def wait(deferred: _Deferred | None = None) -> np.ndarray:
            arr = np.asarray(started())
            if self.check_nonfinite is not None:
                self._count_or_defer(name, arr, deferred)
            return arr
        return wait

    def _start_slices(self, state: _RuleState, cell: tuple[int, ...]) -> dict[int, Callable[[], np.ndarray]]:
        """source index -> the started read of its slice, for the sliced stacked inputs of one cell."""
        return {i: self._start_slice(s, cell, state.rule.grid) for i, s in enumerate(state.rule.sources)
                if s.axes and s.name_at(cell) in self.sliced}

    def _check(self, name: str, array: np.ndarray, state: _RuleState) -> None:
        plan = state.targets.get(name)
        want = self.want.get(name)
        if want is not None and tuple(array.shape) != tuple(want[0]):
            raise MappingError(f"the mapping produced {list(array.shape)} where it was solved for {list(want[0])}; "
                               "nothing was written (an edited mapping?)", file=self.out_file, key=name)
        if plan is None or tuple(array.shape) != plan.shape:
            raise MappingError(f"the chain produced {list(np.shape(array))} where the plan has "
                               f"{list(plan.shape) if plan else 'no such target'}; nothing was written",
                               file=self.out_file, key=name)

    def _dtype_ok(self, name: str, dtype: np.dtype, state: _RuleState) -> None:
        planned = state.targets[name].dtype
        if dtype != planned and self.cast is None:
            raise MappingError(f"the chain produced {dtype} where the plan has {planned} (an op whose dtype rule "
                               "ckptmap.pipeline.plan.op_dtypes does not know?); nothing was written",
                               file=self.out_file, key=name)

    def _emit(self, name: str, array: np.ndarray, state: _RuleState, deferred: _Deferred | None = None) -> None:
        t = state.targets[name]
        self._dtype_ok(name, array.dtype, state)
        if array.dtype != t.dtype:
            array = array.astype(t.dtype)
        self.write(name, self._laid_out(array, deferred))
        if self.on_tensor is not None:
            self.on_tensor(name)

    def _emit_part(self, name: str, slot, cell: tuple[int, ...], out: np.ndarray,
                   state: _RuleState, deferred: _Deferred | None = None) -> Callable[[], None]:
        """Hand one cell's slice of a stacked target to the writer; returns the wait for its write."""
        t = state.targets[name]
        idx = stacked_index(len(t.shape), slot, cell)
        want = tuple(n for n, i in zip(t.shape, idx) if isinstance(i, slice))
        if out.shape != want:
            raise MappingError(f"a cell's output {list(out.shape)} does not fit the stacked target "
                               f"{list(t.shape)} at axes {list(slot.axes)}", file=self.out_file, key=name)
        self._dtype_ok(name, out.dtype, state)
        if out.dtype != t.dtype:
            out = out.astype(t.dtype)
        return self.write_part(name, idx, self._laid_out(out, deferred))

    def _run_cell(self, state: _RuleState, cell: tuple[int, ...],
                  reads: dict[int, Callable[[], np.ndarray]]) -> list[Callable[[], None]]:
        """Run one cell (`reads`: its sliced inputs, already started); returns the waits of the slices it
        handed to a part-taking writer."""
        rule = state.rule
        waits = []
        deferred = _Deferred() if self.nonfinite_limit is not None else None
        inputs = tuple(reads[i](deferred) if i in reads
                       else read_cell(s, cell, lambda n: self._get(state, n, deferred), rule.grid)
                       for i, s in enumerate(rule.sources))
        outputs = cell_outputs(rule, cell, inputs)
        del inputs
        for slot, out in zip(rule.targets, outputs):
            name = slot.name_at(cell)
            out = np.asarray(out)
            if slot.axes and self.write_part is not None:
                waits.append(self._emit_part(name, slot, cell, out, state, deferred))
            elif slot.axes:
                buf = state.buffers[name]
                idx = stacked_index(buf.ndim, slot, cell)
                if buf[idx].shape != out.shape:
                    raise MappingError(f"a cell's output {list(out.shape)} does not fit the stacked target "
                                       f"{list(buf.shape)} at axes {list(slot.axes)}", file=self.out_file,
                                       key=name)
                self._dtype_ok(name, out.dtype, state)
                self._copy_counted(buf[idx], out, deferred)
            else:
                self._check(name, out, state)
                self._emit(name, out, state, deferred)
        self._count_deferred(deferred)
        return waits

    def _cell_task(self, state: _RuleState, cells: list[tuple[int, ...]]) -> None:
        try:
            behind: collections.deque = collections.deque()  # waits of the cells whose slices are being written
            ahead: collections.deque = collections.deque()  # started reads of this and the next cells
            started = 0
            for k, cell in enumerate(cells):
                if self._stop.is_set():
                    return
                while started < len(cells) and started <= k + READ_AHEAD_CELLS:
                    ahead.append(self._start_slices(state, cells[started]) if self.sliced else {})
                    started += 1
                behind.append(self._run_cell(state, cell, ahead.popleft()))
                while len(behind) > WRITE_BEHIND_CELLS:
                    for wait in behind.popleft():
                        wait()
            while behind:  # the rule's memory is released only once its slices are written
                for wait in behind.popleft():
                    wait()
            with state.lock:
                state.left -= len(cells)
                last = state.left == 0
            if last:
                self._finish_rule(state)
        except BaseException as e:  # the run loop stops admitting rules and raises it
            self._fail(e)

    def _finish_rule(self, state: _RuleState) -> None:
        state.kept.clear()
        for name in [t.name for t in state.plan.targets if t.name in state.buffers]:  # in the plan's order
            buf = state.buffers.pop(name)
            self._check(name, buf, state)
            if not self._stop.is_set():
                self._emit(name, buf, state)
            del buf
        if self.write_part is not None and self.on_tensor is not None:  # stacked targets went out in parts
            for slot in state.rule.targets:
                for name in (slot.names() if slot.axes else ()):
                    self.on_tensor(name)
        with self._lock:
            self.stats.largest_rule_bytes = max(self.stats.largest_rule_bytes, state.plan.out_bytes)
            if state.stand_in:
                self._stand_ins -= 1
        self.budget.release(self.memory(state.plan))

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = e
        self._stop.set()
        if self.on_fail is not None:
            self.on_fail()

    # --------------------------------------------------------------------------------------------- the run
    def run(self, mapping: Mapping, plans: list[RulePlan]) -> RunStats:
        """Run every rule (plans[i] for mapping.rules[plans[i].index]); raises the first error any thread hit."""
        self._stacked_shapes = {s.name: s.shape for plan in plans for s in plan.stacked_sources}
        self._ahead = ReadAhead(self.prefetch) if self.prefetch is not None else None
        try:
            self._run(mapping, plans)
        finally:
            if self._ahead is not None:
                self._ahead.close()
                self._ahead = None
        self.stats.budget_peak = self.budget.peak
        if self._error is not None:
            raise self._error
        return self.stats

    def _run(self, mapping: Mapping, plans: list[RulePlan]) -> None:
        waiting = collections.deque(largest_tasks_first(plans, self.workers) if self.any_order else plans)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="ckptmap-convert") as pool:
            while waiting:
                plan = self._admit_next(waiting)
                if plan is None:
                    break
                rule = mapping.rules[plan.index]
                if self._stop.is_set():
                    self.budget.release(self.memory(plan))
                    break
                try:
                    state = _RuleState(rule, plan, parts_out=self.write_part is not None, sliced=self.sliced)
                except MemoryError as e:
                    self.budget.release(self.memory(plan))
                    self._fail(e)
                    break
                state.stand_in = plan is not waiting[0]
                waiting.remove(plan)
                if state.stand_in:
                    with self._lock:
                        self._stand_ins += 1
                chunks = _chunks(state.cells, self.workers)
                self._read_ahead(state, chunks)
                self.stats.cells += len(state.cells)
                if not state.cells:  # an empty grid writes nothing
                    self._finish_rule(state)
                for part in chunks:
                    pool.submit(self._cell_task, state, part)
            # the pool's exit waits for every submitted task

    def _admit_next(self, waiting: collections.deque) -> RulePlan | None:
        """Take the budget for the next rule to start and return its plan (None when the run stopped): the first
        waiting rule once its bytes fit, or, where the writer takes tensors in any order and that rule does not
        fit yet, a later one that fits now, so that a worker does not idle behind a large rule (a 16 GB llama's
        two 1 GB whole-tensor rules each take most of the budget; the second waited for the first while a
        stacked rule's small cells could have run). At most one such stand-in runs at a time, so the first rule
        still starts as soon as the rule ahead of it is done."""
        head = waiting[0]
        while True:
            if self.budget.try_acquire(self.memory(head)):
                return head
            if self.any_order and self._stand_ins == 0:
                for plan in itertools.islice(waiting, 1, None):
                    if self.budget.try_acquire(self.memory(plan)):
                        return plan
            if self._stop.is_set():
                return None
            self.budget.wait_for_release(timeout=0.1)

    def _read_ahead(self, state: _RuleState, chunks: list[list[tuple[int, ...]]]) -> None:
        """Queue a rule's inputs for the read-ahead thread: the ones it keeps, then each cell's own in the order
        the workers will run them (the pool takes the chunks `workers` at a time, each front to back)."""
        if self._ahead is None:
            return
        names = list(state.shared)
        for first in range(0, len(chunks), self.workers):
            running = chunks[first:first + self.workers]
            for k in range(max((len(c) for c in running), default=0)):
                for chunk in running:
                    if k < len(chunk):
                        cell_names = ((s, s.name_at(chunk[k])) for s in state.rule.sources)
                        names += [n for s, n in cell_names if not (s.axes and n in self.sliced)]
        self._ahead.want(names)  # a name already queued or read is not queued again

    def cancel(self) -> None:
        self._stop.set()


CHUNKS_PER_WORKER = 4  # a rule's cells go out in up to this many runs per worker


def _chunks(cells: list, workers: int) -> list[list]:
    """Cells in contiguous runs, a few per worker, so that threads share a large rule and finish together."""
    if not cells:
        return []
    size = -(-len(cells) // _task_count(len(cells), workers))
    return [cells[i:i + size] for i in range(0, len(cells), size)]


def _task_count(cells: int, workers: int) -> int:
    """How many runs `_chunks` cuts a rule's cells into (at least 1)."""
    return max(1, min(cells, workers * CHUNKS_PER_WORKER))


def task_bytes(plan: RulePlan, workers: int) -> int:
    """Bytes read and written by one of the rule's tasks (a run of cells one thread takes, see _chunks)."""
    return (plan.in_bytes + plan.out_bytes) // _task_count(plan.cells, workers)


def largest_tasks_first(plans: list[RulePlan], workers: int) -> list[RulePlan]:
    """The plans with the largest tasks first (ties in the mapping's order): a rule that one thread runs whole,
    such as an embedding, starts while the stacked rules' small tasks keep the other threads busy, instead of
    running alone at the end (a 16 GB llama's two 1 GB single-cell rules came last in the mapping's order, and
    one thread worked through them while the others idled)."""
    return sorted(plans, key=lambda p: -task_bytes(p, workers))
