"""Writers that know the whole output before any data: each tensor's bytes go once to their planned place.

`safetensors_layout` lays planned targets out in shards (a shard boundary falls only between rules, unless one
rule alone is larger than a shard), so every shard header and every offset is known up front: the header is
written first and each tensor body once, at its offset (pwrite into a file whose size was reserved), by whichever
thread finishes it, in any order. The layout depends on the plan and the shard size only, so the bytes are the
same for any number of worker threads or processes; a process can write its own shards (`ShardFiles` over a
subset) and one commit writes the index.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ckptmap.array_copy import contiguous
from ckptmap.checkpoint_io.base import _NP_TO_ST, CheckpointIOError, CheckpointWriter, write_failure
from ckptmap.checkpoint_io.commit import _remove, _temp_beside
from ckptmap.pipeline import fileio
from ckptmap.pipeline.plan import RulePlan, TargetPlan
from ckptmap.pipeline.write_behind import WriteBehind
from ckptmap.trees.safetensors_tree import INDEX_NAME, dump_header


@dataclass
class ShardLayout:
    """One safetensors file: its final name, header bytes, and name -> absolute offset of each tensor's bytes."""

    file: str
    header: bytes
    offsets: dict[str, int] = field(default_factory=dict)
    rules: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.header) + self.body_size

    body_size: int = 0


@dataclass
class SafetensorsLayout:
    shards: list[ShardLayout]
    where: dict[str, int]  # tensor name -> shard index
    total_size: int

    def units(self) -> list[list[int]]:
        """Groups of shards that share a rule (usually one shard each): the pieces one process writes alone."""
        groups: list[list[int]] = []
        last_rule = None
        for k, shard in enumerate(self.shards):
            if groups and shard.rules and last_rule is not None and shard.rules[0] == last_rule:
                groups[-1].append(k)
            else:
                groups.append([k])
            if shard.rules:
                last_rule = shard.rules[-1]
        return groups


def _st_dtype(t: TargetPlan, file: str) -> str:
    if t.dtype not in _NP_TO_ST:
        raise CheckpointIOError(f"safetensors cannot store dtype {t.dtype}", file=file, key=t.name)
    return _NP_TO_ST[t.dtype]


def safetensors_layout(plans: list[RulePlan], max_shard_bytes: int | None, file: str,
                       metadata: dict | None = None) -> SafetensorsLayout:
    """Shards of at most `max_shard_bytes` of tensor data (None: one file), split between rules; a rule larger
    than a shard is split between its tensors, and a tensor larger than a shard has a shard of its own. Final
    names `model-0000k-of-0000n.safetensors` (one file: the name is the caller's)."""
    groups: list[list[TargetPlan]] = []
    size = 0
    for plan in plans:
        if max_shard_bytes is not None and groups and groups[-1] and size + plan.out_bytes > max_shard_bytes:
            groups.append([])
            size = 0
        for t in plan.targets:
            if not groups:
                groups.append([])
            elif (max_shard_bytes is not None and groups[-1] and size + t.nbytes > max_shard_bytes):
                groups.append([])
                size = 0
            groups[-1].append(t)
            size += t.nbytes
    if not groups:
        groups = [[]] if max_shard_bytes is None else []
    n = len(groups)
    shards, where, total = [], {}, 0
    for k, group in enumerate(groups):
        entries, offset = {}, 0
        for t in group:
            entries[t.name] = {"dtype": _st_dtype(t, file), "shape": list(t.shape),
                               "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        head = dump_header(entries, {"format": "pt", **(metadata or {})})
        shard = ShardLayout(f"model-{k + 1:05d}-of-{n:05d}.safetensors", head, body_size=offset)
        for t in group:
            shard.offsets[t.name] = len(head) + entries[t.name]["data_offsets"][0]
            where[t.name] = k
            if not shard.rules or shard.rules[-1] != t.rule:
                shard.rules.append(t.rule)
        shards.append(shard)
        total += offset
    return SafetensorsLayout(shards, where, total)


class ShardFiles:
    """The shard files of `layout` numbered `which` (default all) in `directory`: created at their full size
    with their headers, then written tensor by tensor from any thread."""

    def __init__(self, layout: SafetensorsLayout, directory: str, which: list[int] | None = None,
                 file_names: dict[int, str] | None = None):
        self.layout = layout
        self.paths: dict[int, str] = {}
        self._fds: dict[int, int] = {}
        for k in (range(len(layout.shards)) if which is None else which):
            shard = layout.shards[k]
            path = os.path.join(directory, (file_names or {}).get(k, shard.file))
            self.paths[k] = path
            self._fds[k] = fileio.create_sized(path, shard.size)
            fileio.write_at(self._fds[k], shard.header, 0)

    def write(self, name: str, array: np.ndarray) -> None:
        k = self.layout.where[name]
        fileio.write_at(self._fds[k], _raw_bytes(contiguous(array)), self.layout.shards[k].offsets[name])

    def close(self) -> None:
        """Flush and close every file (raises the first OSError after closing them all)."""
        first = None
        for k in list(self._fds):
            try:
                fileio.flush_and_close(self._fds.pop(k))
            except OSError as e:
                first = first or e
        if first is not None:
            raise first

    def discard(self) -> None:
        for k in list(self._fds):
            try:
                os.close(self._fds.pop(k))
            except OSError:
                pass
        for path in self.paths.values():
            _remove(path)


def _index_text(index: tuple) -> str:
    return "[" + ", ".join(":" if isinstance(i, slice) else str(i) for i in index) + "]"


def _raw_bytes(array: np.ndarray):
    """A C-ordered array's bytes as a flat uint8 buffer (any dtype, 0-d included)."""
    if array.size == 0:
        return b""
    return array.reshape(-1).view(np.uint8)


class PlannedWriter(CheckpointWriter):
    """A CheckpointWriter that knows its targets: `write` may be called from several threads at once; a name
    it was not planned for, or an array of another shape or dtype than planned, is an error."""

    accepts_parts = False  # True where `write_part` writes a stacked target slice by slice
    any_order = True  # tensors may arrive in any order (False: in the plan's order, see OrderedSink)

    def __init__(self, path: str, targets: dict[str, TargetPlan], *, overwrite: bool = True):
        super().__init__(path, overwrite=overwrite)
        self.targets = targets
        self._lock = threading.Lock()
        self._parts: dict[str, int] = {}  # elements written so far of targets written slice by slice
        self._write_behind: WriteBehind | None = None

    def _start_write_behind(self, root: str) -> None:
        """Flush what is written under `root` (the temp output) while the conversion runs (pipeline.write_behind)."""
        self._write_behind = WriteBehind(root)

    def _stop_write_behind(self) -> None:
        if self._write_behind is not None:
            self._write_behind.close()
            self._write_behind = None

    def _count_written(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_written += nbytes
        behind = self._write_behind
        if behind is not None:
            behind.wrote(nbytes)

    def _install(self, tmp: str) -> None:
        self._stop_write_behind()
        super()._install(tmp)

    def write(self, name: str, array: np.ndarray) -> None:
        plan = self.targets.get(name)
        if plan is None:
            raise CheckpointIOError("the conversion plan has no such target", file=self.path, key=name)
        array = np.asarray(array)
        if tuple(array.shape) != plan.shape or array.dtype != plan.dtype:
            raise CheckpointIOError(f"got {array.dtype} {list(array.shape)}, planned {plan.dtype} "
                                    f"{list(plan.shape)}", file=self.path, key=name)
        with self._lock:
            if name in self._names:
                raise CheckpointIOError("tensor written twice", file=self.path, key=name)
            self._names.add(name)
        try:
            self._write(name, array)
        except OSError as e:
            raise write_failure(e, file=self.path, key=name) from None
        self._count_written(array.nbytes)

    def write_part(self, name: str, index: tuple, array: np.ndarray) -> Callable[[], None]:
        """Start writing one cell's slice of a stacked target: `index` holds an int at each of the target's
        stacked axes and a full slice elsewhere. Returns `wait`, which blocks until the slice is written (and
        raises its error); the array must stay untouched until then. The target counts as written once its
        slices cover all of its elements; a slice of another shape or dtype than planned, or one past the
        target's size, is an error."""
        plan = self.targets.get(name)
        if plan is None:
            raise CheckpointIOError("the conversion plan has no such target", file=self.path, key=name)
        array = np.asarray(array)
        want = tuple(n for n, i in zip(plan.shape, index) if not isinstance(i, (int, np.integer)))
        if len(index) != len(plan.shape) or tuple(array.shape) != want or array.dtype != plan.dtype:
            raise CheckpointIOError(f"got a slice {array.dtype} {list(array.shape)} at {_index_text(index)}, "
                                    f"planned {plan.dtype} {list(want)} of {list(plan.shape)}", file=self.path,
                                    key=name)
        size = int(np.prod(plan.shape, dtype=np.int64))
        with self._lock:
            done = self._parts.get(name, 0) + array.size
            if name in self._names or done > size:
                raise CheckpointIOError("tensor written twice", file=self.path, key=name)
            self._parts[name] = done
        try:
            written = self._write_part(name, index, array)
        except OSError as e:
            raise write_failure(e, file=self.path, key=name) from None
        nbytes = array.nbytes

        def wait() -> None:
            try:
                written()
            except OSError as e:
                raise write_failure(e, file=self.path, key=name) from None
            self._count_written(nbytes)
            if done == size:
                with self._lock:
                    self._names.add(name)
        return wait

    def _write_part(self, name: str, index: tuple, array: np.ndarray) -> Callable[[], None]:
        """Start the write; return the function that waits for it."""
        raise CheckpointIOError("this writer takes whole tensors only", file=self.path, key=name)

    def written_elsewhere(self, written: dict[str, int]) -> None:
        """Count tensors (name -> bytes) that another process wrote into this writer's temp output
        (pipeline.distributed); a name not planned, or counted twice, is an error."""
        for name, nbytes in written.items():
            if name not in self.targets:
                raise CheckpointIOError("a process wrote a tensor the plan does not have", file=self.path, key=name)
            with self._lock:
                if name in self._names:
                    raise CheckpointIOError("tensor written twice", file=self.path, key=name)
                self._names.add(name)
                self.bytes_written += nbytes

    def check_complete(self) -> None:
        missing = [n for n in self.targets if n not in self._names]
        if missing:
            raise CheckpointIOError(f"{len(missing)} planned tensor(s) were never written; nothing was written",
                                    file=self.path, key=missing[0])


class ShardSubsetSink(PlannedWriter):
    """The shard files numbered `which` of `layout`, written into `directory` (the targets of their rules); the
    process that laid the shards out writes the index and renames the directory (pipeline.distributed)."""

    def __init__(self, path: str, layout: SafetensorsLayout, directory: str, which: list[int],
                 targets: dict[str, TargetPlan]):
        super().__init__(path, targets)
        self._files = ShardFiles(layout, directory, which=which)

    def _write(self, name: str, array: np.ndarray) -> None:
        self._files.write(name, array)

    def _commit(self) -> None:
        self.check_complete()
        self._files.close()

    def abort(self) -> None:
        self._files.discard()


class SafetensorsSink(PlannedWriter):
    """A sharded safetensors directory (`single=False`: shards + model.safetensors.index.json + extra files)
    or one `.safetensors` file, each tensor written once at its planned offset."""

    def __init__(self, path: str, plans: list[RulePlan], *, max_shard_bytes: int | None, single: bool = False,
                 overwrite: bool = True):
        targets = {t.name: t for p in plans for t in p.targets}
        super().__init__(path, targets, overwrite=overwrite)
        self.single = single
        self.layout = safetensors_layout(plans, None if single else max_shard_bytes, path)
        self.extra_files: dict[str, str] = {}
        self.total_size = self.layout.total_size
        self._tmp = _temp_beside(path, directory=not single)
        self._files: ShardFiles | None = None
        try:
            if single:
                self._files = ShardFiles(self.layout, os.path.dirname(self._tmp),
                                         file_names={0: os.path.basename(self._tmp)})
            else:
                self._files = ShardFiles(self.layout, self._tmp)
        except OSError:
            self.abort()
            raise
        self._start_write_behind(self._tmp)

    def _write(self, name: str, array: np.ndarray) -> None:
        self._files.write(name, array)

    def finish_shards(self) -> None:
        if self._files is not None:
            self._files.close()
            self._files = None

    def _commit(self) -> None:
        self.check_complete()
        self.finish_shards()
        if not self.single:
            write_index(self._tmp, self.layout, self.extra_files)
        self._install(self._tmp)

    def abort(self) -> None:
        self._stop_write_behind()
        if self._files is not None:
            self._files.discard()
            self._files = None
        _remove(self._tmp)


def write_index(directory: str, layout: SafetensorsLayout, extra_files: dict[str, str]) -> None:
    """model.safetensors.index.json (and config.json & co) beside finished shards."""
    weight_map = {name: layout.shards[k].file for name, k in layout.where.items()}
    with open(os.path.join(directory, INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": layout.total_size}, "weight_map": weight_map}, f, indent=1)
    for fname, text in extra_files.items():
        with open(os.path.join(directory, fname), "w") as f:
            f.write(text)


class OrderedSink(PlannedWriter):
    """Any plain CheckpointWriter (npz) fed in plan order, whatever order the threads finish in: a thread
    whose tensor is not next waits for its turn, so the file is the same for any number of workers."""

    any_order = False

    def __init__(self, inner: CheckpointWriter, plans: list[RulePlan]):
        targets = {t.name: t for p in plans for t in p.targets}
        super().__init__(inner.path, targets, overwrite=inner.overwrite)
        self.inner = inner
        self._order = {t.name: i for i, t in enumerate(t for p in plans for t in p.targets)}
        self._next = 0
        self._turn = threading.Condition()
        self.failed = False

    def _write(self, name: str, array: np.ndarray) -> None:
        me = self._order[name]
        with self._turn:
            while self._next != me and not self.failed:
                self._turn.wait(0.1)
            if self.failed:
                raise CheckpointIOError("an earlier tensor failed", file=self.path, key=name)
            try:
                self.inner.write(name, array)
            except BaseException:
                self.failed = True
                raise
            finally:
                self._next += 1
                self._turn.notify_all()

    def _commit(self) -> None:
        self.check_complete()
        self.inner.commit()

    def abort(self) -> None:
        self.failed = True
        with self._turn:
            self._turn.notify_all()
        self.inner.abort()
