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
import concurrent.futures
import errno
import os
import threading

import numpy as np

from ckptmap import orbax_io
from ckptmap.checkpoint_io.base import _unreadable, write_failure
from ckptmap.checkpoint_io.commit import _remove, _temp_beside
from ckptmap.checkpoint_io.writers import nest_names, scan_layers_of
from ckptmap.errors import CkptmapError
from ckptmap.pipeline.plan import RulePlan
from ckptmap.pipeline.sinks import PlannedWriter


class PendingTensor:
    """A leaf whose array a worker hands over later (`give`, any thread); `written` is resolved once TensorStore
    has written it (or failed)."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype):
        self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.ndim = len(self.shape)
        self.written: concurrent.futures.Future = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._value: list = []  # [array] or [exception]
        self._waiter: tuple | None = None  # (loop, asyncio future) of the coroutine waiting for the array

    def give(self, value) -> None:
        """Hand over the array (or an exception that fails this tensor)."""
        with self._lock:
            if self._value:
                return
            self._value.append(value)
            waiter = self._waiter
        if waiter is not None:
            self._wake(*waiter)

    def _wake(self, loop, fut) -> None:
        def deliver():
            if not fut.done():
                fut.set_result(None)
        try:
            loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the save's loop is gone: nothing waits any more
            pass

    async def take(self):
        """The array, once given (raises the exception given instead)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            ready = bool(self._value)
            self._waiter = (loop, fut)
        if not ready:
            await fut
        with self._lock:
            value = self._value.pop()
            self._value.append(None)  # the array's memory goes once written; a second give is ignored
        if isinstance(value, BaseException):
            raise value
        return value


def _pending_handler():
    """Orbax's NumpyHandler for PendingTensor leaves: no defensive copy, each array written when it arrives. A
    failed write fails its tensor's `written` (the sink reports it) rather than Orbax's gather, so no coroutine
    is left with an exception nobody reads."""
    import tensorstore as ts
    from orbax.checkpoint import type_handlers

    class PendingHandler(type_handlers.NumpyHandler):
        def __init__(self):
            super().__init__(deepcopy_host_arrays=False)

        async def _open_and_write(self, value, tspec, ts_context):
            try:
                array = await value.take()
                t = await ts.open(ts.Spec(tspec), create=True, open=True, context=ts_context)
                await t.write(array, can_reference_source_data_indefinitely=True)
                del array
            except BaseException as e:  # noqa: BLE001 - handed to the worker waiting on it
                if not value.written.done():
                    value.written.set_exception(e)
                return
            if not value.written.done():
                value.written.set_result(True)

    return PendingHandler()


class OrbaxSink(PlannedWriter):
    """`path/<step>/items`, the train state MaxText's own conversion writes, saved by Orbax while the workers
    produce the tensors. `write` returns once TensorStore has the tensor's bytes (so the budget holds);
    `use_compression` is Orbax's zstd (its default, and MaxText's)."""

    def __init__(self, path: str, plans: list[RulePlan], step: int = 0, *, overwrite: bool = True,
                 use_compression: bool = True):
        targets = {t.name: t for p in plans for t in p.targets}
        super().__init__(path, targets, overwrite=overwrite)
        orbax_io.import_orbax(path)
        self.step = step
        self._pending = {n: PendingTensor(n, t.shape, t.dtype) for n, t in targets.items()}
        self._tmp = _temp_beside(path, directory=True)
        self._error: BaseException | None = None
        names = frozenset(targets)
        tree = nest_names({orbax_io.stored_name(n, names): self._pending[n] for n in targets}, path)
        scan = scan_layers_of(targets)
        self._thread = threading.Thread(target=self._save, name="ckptmap-orbax-save", daemon=True,
                                        args=(tree, {} if scan is None else {"scan_layers": scan}, use_compression))
        self._thread.start()

    @property
    def load_path(self) -> str:
        return os.path.join(self.path, str(self.step), orbax_io.ITEM_NAME)

    def _save(self, tree: dict, custom_metadata: dict, use_compression: bool) -> None:
        try:
            orbax_io.save_train_state_with(os.path.join(self._tmp, str(self.step)), tree, step=self.step,
                                           custom_metadata=custom_metadata,
                                           leaf_type=PendingTensor, handler=_pending_handler(),
                                           use_compression=use_compression)
        except BaseException as e:  # reported by commit, or by the next write
            self._error = e
            for p in self._pending.values():
                if not p.written.done():
                    p.written.set_exception(e)

    def _write(self, name: str, array: np.ndarray) -> None:
        p = self._pending[name]
        p.give(np.ascontiguousarray(array))
        try:
            p.written.result()
        except BaseException as e:
            raise self._failure(e) from None

    def _failure(self, e: BaseException) -> BaseException:
        if isinstance(e, (OSError, CkptmapError)):
            return e
        full = "space" in str(e).lower() or "too large" in str(e).lower()
        return write_failure(OSError(errno.ENOSPC if full else errno.EIO, _unreadable(e)), file=self.path)

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
        _remove(self._tmp)
