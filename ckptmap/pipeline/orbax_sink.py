"""MaxText's Orbax layout for planned tensors written from several threads (see ckptmap.orbax_io)."""

from __future__ import annotations

import errno
import os

import numpy as np

from ckptmap import orbax_io
from ckptmap.array_copy import contiguous
from ckptmap.checkpoint_io.base import _unreadable, write_failure
from ckptmap.checkpoint_io.commit import _remove, _temp_beside
from ckptmap.checkpoint_io.writers import nest_names, scan_layers_of
from ckptmap.errors import CkptmapError
from ckptmap.pipeline.plan import RulePlan
from ckptmap.pipeline.sinks import PlannedWriter


class OrbaxSink(PlannedWriter):
    """`path/<step>/items`, the train state MaxText's own conversion writes. Each tensor goes to a `.npy` file
    named by its place in the plan as it is finished (any thread), and at `commit` Orbax saves them all from
    memory maps (no copy held in memory), so memory stays at the rules in flight."""

    def __init__(self, path: str, plans: list[RulePlan], step: int = 0, *, overwrite: bool = True):
        targets = {t.name: t for p in plans for t in p.targets}
        super().__init__(path, targets, overwrite=overwrite)
        orbax_io.import_orbax(path)
        self.step = step
        self._order = {name: i for i, name in enumerate(targets)}
        self._spool_dir = _temp_beside(path, directory=True)
        self._tmp: str | None = None

    @property
    def load_path(self) -> str:
        return os.path.join(self.path, str(self.step), orbax_io.ITEM_NAME)

    def _spool(self, name: str) -> str:
        return os.path.join(self._spool_dir, f"{self._order[name]:06d}.npy")

    def _write(self, name: str, array: np.ndarray) -> None:
        with open(self._spool(name), "wb") as f:
            np.lib.format.write_array(f, contiguous(array), allow_pickle=False)

    def _commit(self) -> None:
        self.check_complete()

        def load(node):
            if isinstance(node, dict):
                return {k: load(v) for k, v in node.items()}
            return np.load(self._spool(node), mmap_mode="r").view(self.targets[node].dtype)

        names = frozenset(self.targets)
        collections = load(nest_names({orbax_io.stored_name(n, names): n for n in self.targets}, self.path))
        scan = scan_layers_of(self.targets)
        self._tmp = _temp_beside(self.path, directory=True)
        try:
            orbax_io.save_train_state(os.path.join(self._tmp, str(self.step)), collections, step=self.step,
                                      custom_metadata={} if scan is None else {"scan_layers": scan})
        except (OSError, CkptmapError):
            raise
        except Exception as e:  # Orbax / tensorstore report a failed write (a full disk, ...) in their own types
            full = "space" in str(e).lower() or "too large" in str(e).lower()
            raise write_failure(OSError(errno.ENOSPC if full else errno.EIO, _unreadable(e)), file=self.path) \
                from None
        _remove(self._spool_dir)
        self._install(self._tmp)

    def abort(self) -> None:
        _remove(self._spool_dir)
        _remove(self._tmp)
