"""Checkpoints at a remote URL (gs://, s3://, any fsspec URL; ckptmap.storage), read without a local copy where the
format allows it.

- safetensors (one file, or a directory with or without its index): the headers with ranged reads at open (checked
  as for local files), each tensor with one ranged read of its bytes when asked for: memory stays at one tensor and
  nothing else is fetched;
- npz and Orbax: copied to a local temp directory first (an npz's members and Orbax's TensorStore chunks are read
  by libraries that want a local path), removed at close.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np

from ckptmap import storage
from ckptmap.checkpoint_io.base import _ST_TO_NP, CheckpointIOError, CheckpointReader
from ckptmap.checkpoint_io.readers import SafetensorsDirReader, SafetensorsFileReader
from ckptmap.trees.safetensors_tree import index_in, read_index_checked


class RemoteSafetensorsFileReader(SafetensorsFileReader):
    """One `.safetensors` object: header checked at open, each tensor one ranged read."""

    def read(self, name: str) -> np.ndarray:
        e = self._info(name)
        dtype = _ST_TO_NP[e.dtype]
        if e.end == e.begin:
            return np.zeros(e.shape, dtype)
        data = storage.read_bytes(self.path, self._data_start + e.begin, e.end - e.begin)
        if len(data) != e.end - e.begin:
            raise CheckpointIOError(f"short read: {len(data)} of {e.end - e.begin} bytes (the object changed since "
                                    "it was opened?)", file=self.path, key=name)
        return np.frombuffer(data, dtype=dtype).reshape(e.shape)


class RemoteSafetensorsDirReader(SafetensorsDirReader):
    """A remote directory of safetensors shards, through its index or every `*.safetensors` in it."""

    def __init__(self, path: str):
        self.path = path
        self._where: dict[str, str] = {}
        self._shards: dict[str, SafetensorsFileReader] = {}
        index = index_in(path)
        if index:
            self._where, headers = read_index_checked(index, CheckpointIOError)
            self._shards = {shard: RemoteSafetensorsFileReader(shard, header) for shard, header in headers.items()}
            return
        for fname in storage.listdir(path):
            if not fname.endswith(".safetensors"):
                continue
            shard = storage.join(path, fname)
            reader = self._shards[shard] = RemoteSafetensorsFileReader(shard)
            for name in reader.names():
                if name in self._where:
                    raise CheckpointIOError(f"two shards hold this tensor: {storage.basename(self._where[name])!r} "
                                            f"and {fname!r}", file=path, key=name)
                self._where[name] = shard


class StagedReader(CheckpointReader):
    """A reader on a local copy of a remote checkpoint (npz, Orbax), the copy removed at close."""

    def __init__(self, url: str, open_local, step: int | None = None):
        self.path = url
        self._dir = tempfile.mkdtemp(prefix="ckptmap-in-")
        try:
            self._reader = open_local(storage.download_tree(url, self._dir), step=step)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    def names(self) -> list[str]:
        return self._reader.names()

    def __contains__(self, name: str) -> bool:
        return name in self._reader

    def shape(self, name: str) -> tuple[int, ...]:
        return self._reader.shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self._reader.dtype(name)

    def read(self, name: str) -> np.ndarray:
        return self._reader.read(name)

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


def open_remote_reader(url: str, open_local, *, step: int | None = None) -> CheckpointReader:
    """A reader for the checkpoint at remote `url` (`orbax:URL` for Orbax); `open_local(path, step=)` opens the
    local copy where one is needed (checkpoint_io.open_reader)."""
    orbax = url.startswith("orbax:")
    bare = url[len("orbax:"):] if orbax else url
    if not storage.exists(bare):
        raise CheckpointIOError("no such file or directory", file=url)
    if not orbax:
        if bare.endswith(".safetensors"):
            return RemoteSafetensorsFileReader(bare)
        if storage.isdir(bare):
            names = storage.listdir(bare)
            if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
                return RemoteSafetensorsDirReader(bare)
    staged = (lambda p, step=None: open_local(f"orbax:{p}", step=step)) if orbax else open_local
    return StagedReader(bare, staged, step)
