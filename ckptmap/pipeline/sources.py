"""How the pipeline reads an opened checkpoint from several threads: safetensors tensors are memory maps (each
read is its own map, safe from any thread), Orbax arrays TensorStore reads (whole, or one cell's slice where
the chunks allow: `sliced_inputs`), every other reader is called one thread at a time; `prefetcher` pulls a
tensor's bytes into the page cache (fileio.prefetch) before the cell that reads it runs."""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from ckptmap.checkpoint_io import CheckpointReader, SafetensorsDirReader, SafetensorsFileReader
from ckptmap.pipeline import fileio


def threaded_read(reader: CheckpointReader) -> Callable[[str], np.ndarray]:
    """reader.read, safe to call from several threads at once."""
    if isinstance(reader, (SafetensorsFileReader, SafetensorsDirReader)) or getattr(reader, "thread_safe", False):
        return reader.read
    lock = threading.Lock()

    def read(name: str) -> np.ndarray:
        with lock:
            return reader.read(name)
    return read


def sliced_inputs(reader: CheckpointReader, plans) -> frozenset[str]:
    """The stacked inputs the reader reads one cell's slice at a time (chunks one index thick along the grid's
    axes), instead of whole; empty for readers that read whole tensors only."""
    reads_slices = getattr(reader, "reads_slices", None)
    if reads_slices is None:
        return frozenset()
    return frozenset(s.name for p in plans for s in p.stacked_sources if reads_slices(s.name, s.axes))


def byte_range(reader: CheckpointReader, name: str) -> tuple[str, int, int] | None:
    """(file, offset, length) of a tensor's bytes where the format stores them plainly; None otherwise."""
    if isinstance(reader, SafetensorsDirReader):
        if name not in reader:
            return None
        return byte_range(reader._shard(name), name)
    if isinstance(reader, SafetensorsFileReader) and name in reader:
        e = reader._info(name)
        return reader.path, reader._data_start + e.begin, e.end - e.begin
    return None


def prefetcher(reader: CheckpointReader) -> Callable[[str], int] | None:
    """A function that reads a tensor's bytes into the page cache ahead of use and returns how many (None when
    the format has no plain byte range)."""
    if not isinstance(reader, (SafetensorsFileReader, SafetensorsDirReader)):
        return None

    def prefetch(name: str) -> int:
        where = byte_range(reader, name)
        return 0 if where is None else fileio.prefetch(*where)
    return prefetch
