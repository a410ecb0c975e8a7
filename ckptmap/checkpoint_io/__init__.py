"""Read and write checkpoints one tensor at a time: `.npz`, `.safetensors` (one file or a sharded directory), Orbax.

Readers are lazy: `read(name)` maps or reads only that tensor. Safetensors files are memory-mapped through their
own header (the `safetensors` numpy backend has no bfloat16; the format is a JSON header plus raw bytes, so a
memmap view is exact, zero-copy and knows every dtype through ml_dtypes). Uncompressed `.npz` members are
memory-mapped in place; compressed ones are read member by member.

Writers never leave a half-written output: everything goes to a temp path beside the output and is renamed into
place by `commit()`. Safetensors needs every offset in its header before the data, so tensor bytes are spooled to
a body file and the final file is header + body (memory stays at one tensor).

bfloat16 and float8 live in numpy through ml_dtypes. `.npz` cannot name them (numpy stores them as raw `V2`/`V1`),
so the npz writer records their dtype names in a `__ckptmap_dtypes__` member that the reader uses to restore them.
"""

from __future__ import annotations

import os

import numpy as np

from ckptmap import orbax_io, storage
from ckptmap.checkpoint_io.base import (DEFAULT_MAX_SHARD_BYTES, FORMATS, NPZ_DTYPES_MEMBER,  # noqa: F401
                                      CheckpointIOError, CheckpointReader, CheckpointWriter, write_failure)
from ckptmap.checkpoint_io.commit import TEMP_PREFIX, _temp_owner, remove_stale_temps, stale_temps  # noqa: F401
from ckptmap.checkpoint_io.remote import open_remote_reader
from ckptmap.checkpoint_io.readers import (NpzReader, OrbaxReader, SafetensorsDirReader,  # noqa: F401
                                         SafetensorsFileReader)
from ckptmap.checkpoint_io.writers import (NpzWriter, OrbaxWriter, SafetensorsFileWriter,  # noqa: F401
                                         ShardedSafetensorsWriter, nest_names, scan_layers_of)
from ckptmap.trees.safetensors_tree import INDEX_NAME, index_in  # noqa: F401 - INDEX_NAME re-exported


def open_reader(path: str, *, step: int | None = None) -> CheckpointReader:
    """Open IN by what it is: `.npz`, `.safetensors`, a directory of safetensors (with or without an index),
    or an Orbax checkpoint (a root of steps: the latest, or `step`). Raises CheckpointIOError naming the path
    otherwise. A remote URL (gs://, s3://, any fsspec URL; `orbax:URL`) is read through ckptmap.storage
    (checkpoint_io.remote: safetensors with ranged reads, npz and Orbax from a local copy)."""
    bare = path[len("orbax:"):] if path.startswith("orbax:") else path
    if storage.is_remote(bare):
        return open_remote_reader(path, open_reader, step=step)
    if storage.scheme(bare) == "file":
        path = path.replace(bare, storage.local_path(bare), 1)
    if path.startswith("orbax:"):
        return OrbaxReader(path[len("orbax:"):], step)
    if not os.path.exists(path):
        raise CheckpointIOError("no such file or directory", file=path)
    if os.path.isdir(path):
        if index_in(path) or any(f.endswith(".safetensors") for f in os.listdir(path)):
            return SafetensorsDirReader(path)
        if orbax_io.is_orbax_dir(path):
            return OrbaxReader(path, step)
        raise CheckpointIOError("unknown checkpoint directory: expected model.safetensors.index.json, "
                                "*.safetensors files or an Orbax checkpoint", file=path)
    if path.endswith(".npz"):
        return NpzReader(path)
    if path.endswith(".safetensors"):
        return SafetensorsFileReader(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":
        return NpzReader(path)
    try:
        return SafetensorsFileReader(path)
    except CheckpointIOError:
        raise CheckpointIOError("unknown checkpoint format: expected .npz, .safetensors, a sharded safetensors "
                                "directory or an Orbax checkpoint", file=path) from None


# ----------------------------------------------------------------------------------------------------- writers


FORM_HELP = ("OUT.npz, OUT.safetensors, a directory (sharded safetensors + model.safetensors.index.json), or "
             "orbax:DIR / DIR.orbax (MaxText's Orbax layout)")


def output_format(path: str, fmt: str | None = None) -> str:
    """The format OUT will be written in: `fmt` if given, else from the path (`.npz`, `.safetensors`,
    `orbax:DIR` or `DIR.orbax`, a path without an extension is a sharded safetensors directory). A path whose
    extension names no format is an error listing the forms, never a guess."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise CheckpointIOError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}", file=path)
        return fmt
    if path.startswith("orbax:") or path.rstrip("/").endswith(".orbax"):
        return "orbax"
    if path.endswith(".npz"):
        return "npz"
    if path.endswith(".safetensors"):
        return "safetensors"
    if os.path.isfile(path):
        raise CheckpointIOError(f"output path is an existing file of unknown format; the forms are {FORM_HELP}",
                                file=path)
    ext = os.path.splitext(path.rstrip("/"))[1]
    if ext and not os.path.isdir(path):
        raise CheckpointIOError(f"cannot tell the output format from {ext!r}; the forms are {FORM_HELP} "
                                "(or pass --format)", file=path)
    return "sharded"


def output_path(path: str) -> str:
    """OUT without its `orbax:` prefix: the path on disk."""
    return path[len("orbax:"):] if path.startswith("orbax:") else path


def open_writer(path: str, fmt: str | None = None, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                overwrite: bool = True) -> CheckpointWriter:
    """A writer for OUT (see `output_format`). `overwrite=False`: the commit fails (CheckpointIOError, nothing
    written) if OUT exists by then, e.g. because another conversion to OUT finished first."""
    kind = output_format(path, fmt)
    path = output_path(path)
    try:
        if kind == "npz":
            return NpzWriter(path, overwrite=overwrite)
        if kind == "safetensors":
            return SafetensorsFileWriter(path, overwrite=overwrite)
        if kind == "orbax":
            return OrbaxWriter(path, overwrite=overwrite)
        return ShardedSafetensorsWriter(path, max_shard_bytes=max_shard_bytes, overwrite=overwrite)
    except OSError as e:
        raise write_failure(e, file=path) from None


def write_all(path: str, arrays: dict[str, np.ndarray], fmt: str | None = None, **kw) -> None:
    """Write a whole dict (tests, fixtures): name -> array."""
    with open_writer(path, fmt, **kw) as w:
        for name, arr in arrays.items():
            w.write(name, arr)


def read_all(path: str) -> dict[str, np.ndarray]:
    """Read a whole checkpoint into memory (tests, small files): name -> array (copies, not maps)."""
    with open_reader(path) as r:
        return {n: np.array(r.read(n)) for n in r.names()}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '1.5GiB', '4096' -> bytes."""
    t = text.strip().upper().replace(" ", "")
    units = [("GIB", 1024**3), ("MIB", 1024**2), ("KIB", 1024), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3),
             ("B", 1)]
    for suffix, mult in units:
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)], mult
            break
    else:
        scale = 1
    try:
        return int(float(t) * scale)
    except ValueError:
        raise CheckpointIOError(f"not a size: {text!r} (expected e.g. 5GB, 500MB, 4096)") from None
