"""Writers that leave nothing at the output until `commit()`: npz, one safetensors file, sharded safetensors + index,
and MaxText's Orbax layout."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
from typing import Iterable

import numpy as np

from ckptmap import orbax_io
from ckptmap.errors import CkptmapError
from ckptmap.checkpoint_io.base import (DEFAULT_MAX_SHARD_BYTES, NPZ_DTYPES_MEMBER, _EXTENSION_DTYPES, _FULL_ERRNOS,
                                      _NP_TO_ST, CheckpointIOError, CheckpointWriter, _c_order, _unreadable,
                                      write_failure)
from ckptmap.checkpoint_io.commit import _remove, _temp_beside
from ckptmap.trees.safetensors_tree import (INDEX_NAME, dump_header)


class NpzWriter(CheckpointWriter):
    """An uncompressed `.npz` (so that it can be memory-mapped back), member by member."""

    def __init__(self, path: str, *, overwrite: bool = True):
        super().__init__(path, overwrite=overwrite)
        self._tmp = _temp_beside(path)
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._extension_dtypes: dict[str, str] = {}

    def _write(self, name: str, array: np.ndarray) -> None:
        if str(array.dtype) in _EXTENSION_DTYPES:
            self._extension_dtypes[name] = str(array.dtype)
        with self._zip.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, _c_order(array), allow_pickle=False)

    def _commit(self) -> None:
        if self._extension_dtypes:
            with self._zip.open(NPZ_DTYPES_MEMBER + ".npy", "w") as f:
                np.lib.format.write_array(f, np.array(json.dumps(self._extension_dtypes)), allow_pickle=False)
        self._zip.close()
        self._install(self._tmp)

    def abort(self) -> None:
        try:
            self._zip.close()  # on a full disk this fails again writing the directory: the file goes anyway
        except Exception:
            pass
        _remove(self._tmp)


class _SafetensorsSpool:
    """One safetensors file being built: tensor bytes go to a body file, the header is written at `finish`."""

    def __init__(self, body_path: str):
        self.body_path = body_path
        self._body = open(body_path, "wb")
        self.header: dict[str, dict] = {}
        self.size = 0

    def add(self, name: str, array: np.ndarray, file: str) -> None:
        dtype = np.dtype(array.dtype)
        if dtype not in _NP_TO_ST:
            raise CheckpointIOError(f"safetensors cannot store dtype {dtype}", file=file, key=name)
        data = _c_order(array)
        start = self.size
        self._body.write(memoryview(data.reshape(-1).view(np.uint8)) if data.size else b"")
        self.size += data.nbytes
        self.header[name] = {"dtype": _NP_TO_ST[dtype], "shape": list(data.shape), "data_offsets": [start, self.size]}

    def finish(self, out_path: str, metadata: dict | None = None) -> None:
        self._body.close()
        head = dump_header(self.header, {"format": "pt", **(metadata or {})})  # the data starts 8-byte aligned
        with open(out_path, "wb") as out, open(self.body_path, "rb") as body:
            out.write(head)
            out.flush()
            _copy_rest(body, out, self.size)
        os.unlink(self.body_path)

    def discard(self) -> None:
        try:
            self._body.close()
        except OSError:
            pass
        _remove(self.body_path)


def _copy_rest(src, dst, nbytes: int) -> None:
    """Append src's bytes to dst: in the kernel (copy_file_range) where it can, else through a buffer."""
    copy_range = getattr(os, "copy_file_range", None)
    start = dst.tell()
    if copy_range is not None:
        try:
            left = nbytes
            while left > 0:
                n = copy_range(src.fileno(), dst.fileno(), min(left, 1 << 30))
                if n == 0:
                    break
                left -= n
            if left == 0:
                return
        except OSError as e:
            if e.errno in _FULL_ERRNOS:
                raise
        # start over with plain reads and writes from where the body began
        os.lseek(src.fileno(), 0, os.SEEK_SET)
        os.lseek(dst.fileno(), start, os.SEEK_SET)
        os.ftruncate(dst.fileno(), start)
        src.seek(0)
        dst.seek(start)
    shutil.copyfileobj(src, dst, 16 * 1024**2)


class SafetensorsFileWriter(CheckpointWriter):
    """One `.safetensors` file."""

    def __init__(self, path: str, *, overwrite: bool = True):
        super().__init__(path, overwrite=overwrite)
        self._tmp = _temp_beside(path)
        self._spool = _SafetensorsSpool(self._tmp + ".body")

    def _write(self, name: str, array: np.ndarray) -> None:
        self._spool.add(name, array, self.path)

    def _commit(self) -> None:
        self._spool.finish(self._tmp)
        self._install(self._tmp)

    def abort(self) -> None:
        self._spool.discard()
        _remove(self._tmp)


class ShardedSafetensorsWriter(CheckpointWriter):
    """A directory of `model-0000k-of-0000n.safetensors` shards of at most `max_shard_bytes` each (a larger
    tensor gets a shard of its own) plus `model.safetensors.index.json`, the layout transformers loads."""

    def __init__(self, path: str, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, *, overwrite: bool = True):
        super().__init__(path, overwrite=overwrite)
        if max_shard_bytes <= 0:
            raise CheckpointIOError(f"max shard size must be positive, got {max_shard_bytes}", file=path)
        self.max_shard_bytes = max_shard_bytes
        self._tmp_dir = _temp_beside(path, directory=True)
        self._done: list[tuple[str, list[str]]] = []  # (finished shard file, its names)
        self._spool: _SafetensorsSpool | None = None
        self.total_size = 0
        self.extra_files: dict[str, str] = {}  # file name -> text, written beside the shards (config.json, ...)

    def _close_shard(self) -> None:
        if self._spool is None:
            return
        out = os.path.join(self._tmp_dir, f"shard-{len(self._done):05d}.tmp")
        self._spool.finish(out)
        self._done.append((out, list(self._spool.header)))
        self._spool = None

    def _write(self, name: str, array: np.ndarray) -> None:
        if self._spool is not None and self._spool.size + array.nbytes > self.max_shard_bytes and self._spool.header:
            self._close_shard()
        if self._spool is None:
            self._spool = _SafetensorsSpool(os.path.join(self._tmp_dir, f"shard-{len(self._done):05d}.body"))
        self._spool.add(name, array, self.path)
        self.total_size += array.nbytes

    def _commit(self) -> None:
        self._close_shard()
        n = len(self._done)
        weight_map = {}
        for k, (tmp_file, names) in enumerate(self._done):
            final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            os.rename(tmp_file, os.path.join(self._tmp_dir, final))
            weight_map.update({name: final for name in names})
        with open(os.path.join(self._tmp_dir, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": self.total_size}, "weight_map": weight_map}, f, indent=1)
        for fname, text in self.extra_files.items():
            with open(os.path.join(self._tmp_dir, fname), "w") as f:
                f.write(text)
        self._install(self._tmp_dir)

    def abort(self) -> None:
        if self._spool is not None:
            self._spool.discard()
        _remove(self._tmp_dir)


nest_names = orbax_io.nest_names


def scan_layers_of(names: Iterable[str]) -> bool | None:
    """Whether MaxText names are of a scanned model (`decoder-layers-...`), unscanned (`decoder-layers_0-...`), or
    neither can be told (None)."""
    names = list(names)
    if any(re.search(r"-layers_\d+-", n) for n in names):
        return False
    if any("-layers-" in n for n in names):
        return True
    return None


class OrbaxWriter(CheckpointWriter):
    """A MaxText checkpoint: `path/0/items`, the train state `{"step": 0, "params": {collections}}` that MaxText's
    own conversion writes (ckptmap.orbax_io), so `load_parameters_path=path/0/items` loads it. Tensors are
    spooled to `.npy` files (plain writes, so a full disk is an error, not a SIGBUS on a mapped page) and handed
    to Orbax as memory maps at `commit`, so memory stays at one tensor."""

    def __init__(self, path: str, step: int = 0, *, overwrite: bool = True):
        super().__init__(path, overwrite=overwrite)
        orbax_io.import_orbax(path)
        self.step = step
        self._spool_dir = _temp_beside(path, directory=True)
        self._tmp: str | None = None
        self._files: dict[str, tuple[str, np.dtype]] = {}

    @property
    def load_path(self) -> str:
        """What MaxText's `load_parameters_path` names."""
        return os.path.join(self.path, str(self.step), orbax_io.ITEM_NAME)

    def _write(self, name: str, array: np.ndarray) -> None:
        spool = os.path.join(self._spool_dir, f"{len(self._files):06d}.npy")
        with open(spool, "wb") as f:
            np.lib.format.write_array(f, _c_order(array), allow_pickle=False)
        self._files[name] = (spool, array.dtype)

    def _commit(self) -> None:
        def load(node):
            if isinstance(node, dict):
                return {k: load(v) for k, v in node.items()}
            spool, dtype = self._files[node]
            return np.load(spool, mmap_mode="r").view(dtype)  # .npy keeps bfloat16 as raw V2

        names = frozenset(self._files)
        collections = load(nest_names({orbax_io.stored_name(n, names): n for n in self._files}, self.path))
        scan = scan_layers_of(self._files)
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
