"""MaxText's Orbax layout written as the tensors arrive, through Orbax and TensorStore (see ckptmap.orbax_io).

Orbax saves a whole tree in one call. Here the tree's leaves are `PendingTensor`s: shape and dtype from the plan,
the array still to come. A save runs on its own thread from the start; Orbax lays out the checkpoint and opens
every array, and `PendingHandler` (Orbax's numpy handler, for this leaf type) writes each array through
TensorStore the moment a worker hands it over, many at once, then lets the worker go. Nothing is spooled or
copied: memory is the rules in flight, each byte is written once, and the result is the checkpoint Orbax would
write for numpy arrays (leaves typed `np.ndarray`, so MaxText and Orbax restore them as usual).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import os
import threading

import numpy as np

from ckptmap import orbax_io
from ckptmap.array_copy import contiguous
from ckptmap.checkpoint_io.base import _unreadable, write_failure
from ckptmap.checkpoint_io.commit import _fsync_tree, _remove, _temp_beside
from ckptmap.checkpoint_io.writers import nest_names, scan_layers_of
from ckptmap.errors import CkptmapError
from ckptmap.pipeline.plan import RulePlan, TargetPlan
from ckptmap.pipeline.sinks import PlannedWriter


class _Axes:
    """A tree leaf holding a target's stacked axes (a bare tuple would be a subtree to Orbax)."""

    def __init__(self, axes: tuple[int, ...]):
        self.axes = tuple(axes)


def _map_tree(tree, fn):
    return {k: _map_tree(v, fn) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


class PendingTensor:
    """A leaf whose data workers hand over later, from any thread: the whole array (`give`) or one cell's slice
    at a time (`give_part`, a stacked target's chunks). `written` is resolved once TensorStore has written every
    element (or failed)."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype, writer: int = 0):
        self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)
        self.writer = writer  # which of the OCDBT_WRITERS databases holds it
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.ndim = len(self.shape)
        self.written: concurrent.futures.Future = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._items: collections.deque = collections.deque()  # (index or None, array, future) or an exception
        self._closed = False
        self._reason: BaseException | None = None  # what closed it
        self._waiter: tuple | None = None  # (loop, asyncio future) of the coroutine waiting for the next item

    def give(self, value) -> concurrent.futures.Future:
        """Hand over the whole array (or an exception that fails this tensor)."""
        if isinstance(value, BaseException):
            self._put(value)
            return self.written
        return self._put((None, value, self.written))

    def give_part(self, index: tuple, part: np.ndarray) -> concurrent.futures.Future:
        """Hand over the slice `index` of the array; the future resolves once TensorStore has written it."""
        return self._put((index, part, concurrent.futures.Future()))

    def _put(self, item):
        with self._lock:
            if self._closed:  # failed or cancelled: nothing more is taken, and the sender hears why
                fut = concurrent.futures.Future()
                fut.set_exception(self._reason)
                return fut if not isinstance(item, BaseException) else None
            if isinstance(item, BaseException):
                self._closed, self._reason = True, item
                for queued in self._items:  # nobody will write these: their workers hear why
                    if not isinstance(queued, BaseException) and not queued[2].done():
                        queued[2].set_exception(item)
                self._items.clear()
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, fut = waiter
            try:
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))
            except RuntimeError:  # the save's loop is gone: nothing waits any more
                pass
        return None if isinstance(item, BaseException) else item[2]

    async def take(self):
        """The next (index, array, future) handed over (raises the exception given instead)."""
        while True:
            loop = asyncio.get_running_loop()
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    break
                fut = loop.create_future()
                self._waiter = (loop, fut)
            await fut
        if isinstance(item, BaseException):
            raise item
        return item


OCDBT_WRITERS = 4  # OCDBT databases written side by side (`ocdbt.process_<k>`), the layout of Orbax's multi-host
# save; one database commits its writes one after another (about 0.8 GB/s on this project's VM even in RAM, 1.1 GB/s
# with two). Orbax's own finalize merges them into the checkpoint's root manifest, as after a multi-host save.
_PROCESS_DIR = "ocdbt.process_"


def _with_writer(tspec: dict, writer: int) -> dict:
    """Orbax's write spec with its per-process OCDBT directory `ocdbt.process_0` replaced by `writer`'s."""
    if writer == 0:
        return tspec
    kvstore = dict(tspec.get("kvstore", {}))
    for key in ("base", "manifest"):
        part = kvstore.get(key)
        if isinstance(part, dict) and isinstance(part.get("path"), str):
            kvstore[key] = {**part, "path": _other_process_dir(part["path"], writer)}
        elif isinstance(part, str):
            kvstore[key] = _other_process_dir(part, writer)
    return {**tspec, "kvstore": kvstore}


def _other_process_dir(path: str, writer: int) -> str:
    head, sep, tail = path.rstrip("/").rpartition("/")
    if not tail.startswith(_PROCESS_DIR):  # not Orbax's per-process layout: leave it
        return path
    return f"{head}{sep}{_PROCESS_DIR}{writer}/"


def _pending_handler(data_elsewhere: bool = False):
    """Orbax's NumpyHandler for PendingTensor leaves: no defensive copy, each array (or each part of it) written
    when it arrives, parts side by side. A failed write fails its tensor's `written` and the part's future (the
    sink reports it) rather than Orbax's gather, so no coroutine is left with an exception nobody reads.
    `data_elsewhere`: each array is only created (its zarr metadata), its data left to other processes."""
    import tensorstore as ts
    from orbax.checkpoint import type_handlers

    async def write_part(store, index, array, fut):
        try:
            await store[index].write(array, can_reference_source_data_indefinitely=True)
        except BaseException as e:  # noqa: BLE001 - handed to the worker waiting on it
            if not fut.done():
                fut.set_exception(e)
            raise
        if not fut.done():
            fut.set_result(True)

    class PendingHandler(type_handlers.NumpyHandler):
        def __init__(self):
            super().__init__(deepcopy_host_arrays=False)
            self._contexts: dict[int, tuple] = {}

        def _context(self, ts_context):
            """Orbax's context for this save (one per save, shared by its arrays, so one OCDBT writer) less its
            fsync of every write: the sink fsyncs the whole tree once before the rename (base._install), and a
            sync per chunk made each write wait for the disk."""
            key = id(ts_context)
            if key not in self._contexts:
                self._contexts[key] = (ts_context, ts.Context(ts.Context.Spec({"file_io_sync": False}),
                                                              parent=ts_context))
            return self._contexts[key][1]

        async def _open_and_write(self, value, tspec, ts_context):
            try:
                tspec = _with_writer(tspec, value.writer)
                store = await ts.open(ts.Spec(tspec), create=True, open=True, context=self._context(ts_context))
                done, writes = (value.size if data_elsewhere else 0), []
                while done < value.size:
                    index, array, fut = await value.take()
                    if index is None:  # the whole array
                        await store.write(array, can_reference_source_data_indefinitely=True)
                        done = value.size
                    else:
                        writes.append(asyncio.ensure_future(write_part(store, index, array, fut)))
                        done += array.size
                    del array
                if writes:
                    await asyncio.gather(*writes)
            except BaseException as e:  # noqa: BLE001 - handed to the worker waiting on it
                value.give(e if isinstance(e, Exception) else CkptmapError("the conversion stopped", key=value.name))
                if not value.written.done():
                    value.written.set_exception(e)
                return
            if not value.written.done():
                value.written.set_result(True)

    return PendingHandler()


def _write_error(e: BaseException, path: str) -> BaseException:
    """A failed TensorStore or Orbax write as the OSError-shaped error the writers raise (a full disk as ENOSPC)."""
    if isinstance(e, (OSError, CkptmapError)):
        return e
    full = "space" in str(e).lower() or "too large" in str(e).lower()
    return write_failure(OSError(errno.ENOSPC if full else errno.EIO, _unreadable(e)), file=path)


class OrbaxSink(PlannedWriter):
    """`path/<step>/items`, the train state MaxText's own conversion writes, saved by Orbax while the workers
    produce the tensors. `write` returns once TensorStore has the tensor's bytes (so the budget holds), and
    `write_part` once it has one cell's slice of a stacked target: such a target is stored in chunks of one slice
    each (Orbax's `shard_axes` on its stacked axes), so every slice is whole chunks, written on its own and side
    by side with the others, and no stacked array is ever assembled. `options` (orbax_io.OrbaxWriteOptions) choose
    zstd and OCDBT.

    `data_elsewhere=True` (a conversion over several processes, pipeline.distributed): Orbax lays the checkpoint
    out (its metadata, each array's zarr metadata) but writes no data; `laid_out()` waits for that and returns
    the item directory where OrbaxArraySinks in other processes write the arrays, `written_elsewhere` counts
    what they wrote, and `commit` renames the whole into place as usual."""

    accepts_parts = True

    def __init__(self, path: str, plans: list[RulePlan], step: int = 0, *, overwrite: bool = True,
                 options: orbax_io.OrbaxWriteOptions = orbax_io.OrbaxWriteOptions(), data_elsewhere: bool = False):
        targets = {t.name: t for p in plans for t in p.targets}
        super().__init__(path, targets, overwrite=overwrite)
        if data_elsewhere and options.ocdbt:
            raise CkptmapError("OCDBT output is written by one process only (each array's data cannot be left to "
                               "another process)", file=path)
        self.step = step
        self._pending = {n: PendingTensor(n, t.shape, t.dtype, writer=i % OCDBT_WRITERS)
                         for i, (n, t) in enumerate(targets.items())}
        self._tmp = _temp_beside(path, directory=True)
        if not data_elsewhere:
            self._start_write_behind(self._tmp)
        self._error: BaseException | None = None
        names = frozenset(targets)
        tree = nest_names({orbax_io.stored_name(n, names): self._pending[n] for n in targets}, path)
        chunk_axes = nest_names({orbax_io.stored_name(n, names): _Axes(t.stacked_axes) for n, t in targets.items()},
                                path)
        scan = scan_layers_of(targets)
        # Orbax is imported on the save's own thread (about 3 s, mostly JAX), while the workers already read and
        # transform; what they hand over waits in the PendingTensors, inside the executor's memory budget
        self._thread = threading.Thread(target=self._save, name="ckptmap-orbax-save", daemon=True,
                                        args=(tree, chunk_axes, {} if scan is None else {"scan_layers": scan},
                                              options, data_elsewhere))
        self._thread.start()

    @property
    def load_path(self) -> str:
        return os.path.join(self.path, str(self.step), orbax_io.ITEM_NAME)

    def _save(self, tree: dict, chunk_axes: dict, custom_metadata: dict,
              options: orbax_io.OrbaxWriteOptions, data_elsewhere: bool) -> None:
        try:
            ocp = orbax_io.import_orbax(self.path)
            save_args = _map_tree(chunk_axes, lambda a: ocp.SaveArgs(shard_axes=a.axes))
            orbax_io.save_train_state_with(os.path.join(self._tmp, str(self.step)), tree, step=self.step,
                                           custom_metadata=custom_metadata, save_args=save_args,
                                           leaf_type=PendingTensor, handler=_pending_handler(data_elsewhere),
                                           options=options)
        except BaseException as e:  # reported by commit, or by the next write
            self._error = e
            for p in self._pending.values():
                p.give(e)  # fails what waits in it, and what comes later
                if not p.written.done():
                    p.written.set_exception(e)

    def laid_out(self) -> str:
        """(data_elsewhere) Wait until Orbax has laid the checkpoint out; the item directory (inside the temp
        output) whose arrays other processes then write."""
        self._thread.join()
        if self._error is not None:
            raise self._failure(self._error)
        return os.path.join(self._tmp, str(self.step), orbax_io.ITEM_NAME)

    def _write(self, name: str, array: np.ndarray) -> None:
        self._wait(self._pending[name].give(contiguous(array)))

    def _write_part(self, name: str, index: tuple, array: np.ndarray):
        written = self._pending[name].give_part(index, contiguous(array))
        return lambda: self._wait(written)

    def _wait(self, written: concurrent.futures.Future) -> None:
        try:
            written.result()
        except BaseException as e:
            raise self._failure(e) from None

    def _failure(self, e: BaseException) -> BaseException:
        return _write_error(e, self.path)

    def cancel(self) -> None:
        """Stop the save: every tensor not yet handed over fails it."""
        err = CkptmapError("the conversion stopped", file=self.path)
        for p in self._pending.values():
            p.give(err)

    def _commit(self) -> None:
        self.check_complete()
        self._thread.join()
        if self._error is not None:
            raise self._failure(self._error)
        for p in self._pending.values():  # every tensor written (a write that failed fails the commit)
            if not p.written.done():
                raise CkptmapError("Orbax finished without writing this tensor", file=self.path, key=p.name)
            if p.written.exception() is not None:
                raise self._failure(p.written.exception())
        self._install(self._tmp)

    def abort(self) -> None:
        self.cancel()
        self._thread.join(timeout=60)
        self._stop_write_behind()
        _remove(self._tmp)


class OrbaxArraySink(PlannedWriter):
    """Some targets' arrays, written into a checkpoint that an OrbaxSink with `data_elsewhere` laid out at
    `item_dir` (another process, pipeline.distributed): each array opened by TensorStore from the zarr metadata
    Orbax wrote there (a shape or dtype other than planned is an error), then written whole or one cell's slice at
    a time from any thread, as OrbaxSink writes it, so the chunks are the same bytes. `all_names` are every
    target of the conversion (where a variable is stored depends on the others). Commit flushes this sink's
    arrays to disk and leaves them in place; the laying-out process renames the whole checkpoint."""

    accepts_parts = True

    def __init__(self, path: str, item_dir: str, targets: dict[str, TargetPlan], all_names: frozenset[str], *,
                 zarr3: bool = True):
        super().__init__(path, targets, overwrite=True)
        self.item_dir, self.zarr3 = item_dir, zarr3
        self._keys = {n: orbax_io.stored_keys(n, all_names) for n in targets}
        self._dirs = {n: os.path.join(item_dir, ".".join(keys)) for n, keys in self._keys.items()}
        self._stores: dict[str, object] = {}
        self._open_lock = threading.Lock()
        self._context = None
        self._start_write_behind(sorted(self._dirs.values()))

    def _store(self, name: str):
        import tensorstore as ts

        with self._open_lock:
            if name not in self._stores:
                if self._context is None:  # no fsync per chunk: commit flushes every file once
                    self._context = ts.Context({"file_io_sync": False})
                spec = orbax_io.array_spec(self.item_dir, self._keys[name], use_ocdbt=False, zarr3=self.zarr3)
                try:
                    store = ts.open(spec, open=True, write=True, context=self._context).result()
                except Exception as e:  # noqa: BLE001 - the laid-out checkpoint lacks it
                    raise CkptmapError(f"cannot open the laid-out array {self._dirs[name]}: "
                                       f"{_unreadable(e)}", file=self.path, key=name) from None
                plan = self.targets[name]
                if tuple(store.shape) != plan.shape or np.dtype(store.dtype.numpy_dtype) != plan.dtype:
                    raise CkptmapError(f"the laid-out array is {store.dtype.numpy_dtype} {list(store.shape)}, "
                                       f"planned {plan.dtype} {list(plan.shape)}", file=self.path, key=name)
                self._stores[name] = store
            return self._stores[name]

    def _wait(self, future) -> None:
        try:
            future.result()
        except BaseException as e:
            raise _write_error(e, self.path) from None

    def _write(self, name: str, array: np.ndarray) -> None:
        self._wait(self._store(name).write(contiguous(array), can_reference_source_data_indefinitely=True))

    def _write_part(self, name: str, index: tuple, array: np.ndarray):
        written = self._store(name)[index].write(contiguous(array), can_reference_source_data_indefinitely=True)
        return lambda: self._wait(written)

    def _commit(self) -> None:
        self.check_complete()
        self._stop_write_behind()
        for directory in self._dirs.values():
            _fsync_tree(directory)

    def abort(self) -> None:
        self._stop_write_behind()
