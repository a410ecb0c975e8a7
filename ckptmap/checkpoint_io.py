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

import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
from abc import ABC, abstractmethod
from typing import Iterable

import ml_dtypes
import numpy as np

from ckptmap import orbax_io
from ckptmap.mapping import default_mode
from ckptmap.errors import CkptmapError

INDEX_NAME = "model.safetensors.index.json"
NPZ_DTYPES_MEMBER = "__ckptmap_dtypes__"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
FORMATS = ("npz", "safetensors", "sharded", "orbax")

_ST_TO_NP = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NP_TO_ST = {v: k for k, v in _ST_TO_NP.items()}
_EXTENSION_DTYPES = {str(np.dtype(t)): np.dtype(t) for t in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
                                                              ml_dtypes.float8_e5m2)}


class CheckpointIOError(CkptmapError):
    """A checkpoint could not be read or written (names the file and, where there is one, the tensor)."""


# ----------------------------------------------------------------------------------------------------- readers

class CheckpointReader(ABC):
    """name -> array, lazily. `names()` in file order; `read` raises CheckpointIOError for an unknown name."""

    path: str

    @abstractmethod
    def names(self) -> list[str]: ...

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]: ...

    @abstractmethod
    def dtype(self, name: str) -> np.dtype: ...

    @abstractmethod
    def read(self, name: str) -> np.ndarray: ...

    def __contains__(self, name: str) -> bool:
        return name in set(self.names())

    def nbytes(self, name: str) -> int:
        return int(np.prod(self.shape(name), dtype=np.int64)) * self.dtype(name).itemsize

    def close(self) -> None:
        pass

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _missing(self, name: str) -> CheckpointIOError:
        return CheckpointIOError(f"no such tensor in the checkpoint ({len(self.names())} tensors)",
                                 file=self.path, key=name)


def _read_safetensors_header(path: str) -> tuple[dict, int]:
    """(header without __metadata__, byte offset where the data starts)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointIOError("not a safetensors file (shorter than its 8-byte header length)", file=path)
            (n,) = struct.unpack("<Q", head)
            size = os.fstat(f.fileno()).st_size
            if n > size - 8 or n > 100 * 1024**2:
                raise CheckpointIOError(f"not a safetensors file (header length {n} for a {size}-byte file)",
                                        file=path)
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointIOError("no such file", file=path) from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointIOError("not a safetensors file (its header is not JSON)", file=path) from None
    if not isinstance(header, dict):
        raise CheckpointIOError("not a safetensors file (its header is not a JSON object)", file=path)
    header.pop("__metadata__", None)
    return header, 8 + n


class SafetensorsFileReader(CheckpointReader):
    """One `.safetensors` file, memory-mapped; `read` returns a read-only view of the tensor's bytes."""

    def __init__(self, path: str):
        self.path = path
        self._header, self._data_start = _read_safetensors_header(path)
        for name, info in self._header.items():
            if info.get("dtype") not in _ST_TO_NP:
                raise CheckpointIOError(f"unsupported safetensors dtype {info.get('dtype')!r}", file=path, key=name)

    def names(self) -> list[str]:
        return sorted(self._header, key=lambda n: self._header[n]["data_offsets"][0])

    def __contains__(self, name: str) -> bool:
        return name in self._header

    def _info(self, name: str) -> dict:
        try:
            return self._header[name]
        except KeyError:
            raise self._missing(name) from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)["shape"])

    def dtype(self, name: str) -> np.dtype:
        return _ST_TO_NP[self._info(name)["dtype"]]

    def read(self, name: str) -> np.ndarray:
        info = self._info(name)
        begin, end = info["data_offsets"]
        dtype, shape = _ST_TO_NP[info["dtype"]], tuple(info["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointIOError(f"byte range {begin}..{end} does not hold {dtype} {list(shape)}",
                                    file=self.path, key=name)
        if end == begin:
            return np.zeros(shape, dtype)
        # one map per tensor: its pages leave the process when the array does, so a long conversion does not
        # accumulate the whole file in its resident set
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start + begin, shape=(end - begin,))
        return mapped.view(dtype).reshape(shape)


class SafetensorsDirReader(CheckpointReader):
    """A directory of safetensors shards: through `model.safetensors.index.json`, or every `*.safetensors`."""

    def __init__(self, path: str):
        self.path = path
        index_path = os.path.join(path, INDEX_NAME)
        self._where: dict[str, str] = {}
        if os.path.exists(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointIOError("not a safetensors index (expected JSON with a \"weight_map\")",
                                        file=index_path) from None
            for name, shard in weight_map.items():
                self._where[name] = os.path.join(path, shard)
        else:
            for fname in sorted(os.listdir(path)):
                if fname.endswith(".safetensors"):
                    shard = os.path.join(path, fname)
                    for name in SafetensorsFileReader(shard).names():
                        self._where[name] = shard
        self._shards: dict[str, SafetensorsFileReader] = {}

    def _shard(self, name: str) -> SafetensorsFileReader:
        try:
            shard = self._where[name]
        except KeyError:
            raise self._missing(name) from None
        if shard not in self._shards:
            if not os.path.exists(shard):
                raise CheckpointIOError("shard named by the index is missing", file=shard, key=name)
            self._shards[shard] = SafetensorsFileReader(shard)
        return self._shards[shard]

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shard(name).shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self._shard(name).dtype(name)

    def read(self, name: str) -> np.ndarray:
        shard = self._shard(name)
        if name not in shard:
            raise CheckpointIOError("the index names this shard but the shard lacks the tensor",
                                    file=shard.path, key=name)
        return shard.read(name)

    def close(self) -> None:
        for s in self._shards.values():
            s.close()
        self._shards.clear()


class NpzReader(CheckpointReader):
    """An `.npz` archive; stored (uncompressed) members are memory-mapped, compressed ones read on demand."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise CheckpointIOError("no such file", file=path) from None
        except zipfile.BadZipFile:
            raise CheckpointIOError("not an .npz archive (not a zip file)", file=path) from None
        self._members = {i.filename[:-4]: i for i in self._zip.infolist() if i.filename.endswith(".npy")}
        self._extension_dtypes: dict[str, str] = {}
        if NPZ_DTYPES_MEMBER in self._members:
            with self._zip.open(self._members.pop(NPZ_DTYPES_MEMBER)) as f:
                self._extension_dtypes = json.loads(str(np.lib.format.read_array(f)))
        self._headers: dict[str, tuple[tuple[int, ...], np.dtype, bool, int]] = {}

    def names(self) -> list[str]:
        return list(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def _header(self, name: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
        """(shape, stored dtype, fortran order, offset of the data inside the member)."""
        if name not in self._headers:
            try:
                info = self._members[name]
            except KeyError:
                raise self._missing(name) from None
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                self._headers[name] = (tuple(shape), dtype, fortran, f.tell())
        return self._headers[name]

    def _restore_dtype(self, name: str, stored: np.dtype) -> np.dtype:
        if name in self._extension_dtypes:
            return _EXTENSION_DTYPES[self._extension_dtypes[name]]
        if stored.kind == "V" and stored.itemsize == 2 and stored.names is None:
            return np.dtype(ml_dtypes.bfloat16)  # numpy's own np.save of a bfloat16 array leaves a bare V2
        return stored

    def shape(self, name: str) -> tuple[int, ...]:
        return self._header(name)[0]

    def dtype(self, name: str) -> np.dtype:
        return self._restore_dtype(name, self._header(name)[1])

    def read(self, name: str) -> np.ndarray:
        shape, stored, fortran, data_offset = self._header(name)
        dtype = self._restore_dtype(name, stored)
        info = self._members[name]
        if info.compress_type == zipfile.ZIP_STORED and not stored.hasobject and not fortran:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
            if local[:4] == b"PK\x03\x04":
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                offset = info.header_offset + 30 + name_len + extra_len + data_offset
                if int(np.prod(shape, dtype=np.int64)) == 0:
                    return np.zeros(shape, dtype)
                mapped = np.memmap(self.path, dtype=stored, mode="r", offset=offset, shape=shape or (1,))
                return mapped.view(dtype).reshape(shape)
        with self._zip.open(info) as f:
            arr = np.lib.format.read_array(f, allow_pickle=False)
        return arr.view(dtype) if arr.dtype != dtype else arr

    def close(self) -> None:
        self._zip.close()


class OrbaxReader(CheckpointReader):
    """An Orbax checkpoint as MaxText writes it (see ckptmap.orbax_io: a root of steps, a step, `items`, or a
    bare PyTree), its parameter collections flattened to '-'-joined names. The arrays are restored together at
    the first `read` (Orbax has no per-leaf lazy API that works across its versions); the optimizer state never."""

    def __init__(self, path: str, step: int | None = None):
        self.path = path
        self._arrays: dict[str, np.ndarray] | None = None
        try:
            self._meta = orbax_io.read_metadata(path, step)
        except orbax_io.OrbaxError as e:
            raise CheckpointIOError(e.message, file=e.file or path) from None
        self.item_dir = self._meta.location.item_dir

    def names(self) -> list[str]:
        return list(self._meta.entries)

    def __contains__(self, name: str) -> bool:
        return name in self._meta.entries

    def _entry(self, name: str) -> tuple[tuple[int, ...], str]:
        try:
            return self._meta.entries[name]
        except KeyError:
            raise self._missing(name) from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[0]

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._entry(name)[1])

    def read(self, name: str) -> np.ndarray:
        self._entry(name)
        if self._arrays is None:
            try:
                self._arrays = orbax_io.restore_parameters(self._meta)
            except orbax_io.OrbaxError as e:
                raise CheckpointIOError(e.message, file=e.file, key=e.key or name) from None
        return self._arrays[name]


def open_reader(path: str, *, step: int | None = None) -> CheckpointReader:
    """Open IN by what it is: `.npz`, `.safetensors`, a directory of safetensors (with or without an index),
    or an Orbax checkpoint (a root of steps: the latest, or `step`). Raises CheckpointIOError naming the path
    otherwise."""
    if path.startswith("orbax:"):
        return OrbaxReader(path[len("orbax:"):], step)
    if not os.path.exists(path):
        raise CheckpointIOError("no such file or directory", file=path)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, INDEX_NAME)) or any(f.endswith(".safetensors") for f in os.listdir(path)):
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

class CheckpointWriter(ABC):
    """Tensors in, one at a time; nothing appears at `path` until `commit()`. As a context manager it commits on
    success and removes its temp files on an exception."""

    path: str

    def __init__(self, path: str):
        self.path = path
        self._names: set[str] = set()
        self.bytes_written = 0

    @property
    def tensors_written(self) -> int:
        return len(self._names)

    def write(self, name: str, array: np.ndarray) -> None:
        if name in self._names:
            raise CheckpointIOError("tensor written twice", file=self.path, key=name)
        self._names.add(name)
        array = np.asarray(array)
        self._write(name, array)
        self.bytes_written += array.nbytes

    @abstractmethod
    def _write(self, name: str, array: np.ndarray) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _c_order(array: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def _temp_beside(path: str, *, directory: bool = False) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    prefix = f".tmp-{os.path.basename(os.path.abspath(path))}-"
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
        default_mode(tmp, directory=True)
        return tmp
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=parent)
    os.close(fd)
    default_mode(tmp)
    return tmp


def _replace_path(tmp: str, path: str) -> None:
    """Move tmp onto path; an existing directory at path is swapped out first and then removed."""
    if os.path.isdir(path) and not os.path.islink(path):
        old = _temp_beside(path, directory=True)
        os.rmdir(old)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _remove(path: str | None) -> None:
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif path and os.path.exists(path):
        os.unlink(path)


class NpzWriter(CheckpointWriter):
    """An uncompressed `.npz` (so that it can be memory-mapped back), member by member."""

    def __init__(self, path: str):
        super().__init__(path)
        self._tmp = _temp_beside(path)
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._extension_dtypes: dict[str, str] = {}

    def _write(self, name: str, array: np.ndarray) -> None:
        if str(array.dtype) in _EXTENSION_DTYPES:
            self._extension_dtypes[name] = str(array.dtype)
        with self._zip.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, _c_order(array), allow_pickle=False)

    def commit(self) -> None:
        if self._extension_dtypes:
            with self._zip.open(NPZ_DTYPES_MEMBER + ".npy", "w") as f:
                np.lib.format.write_array(f, np.array(json.dumps(self._extension_dtypes)), allow_pickle=False)
        self._zip.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._zip.close()
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
        header = dict(self.header)
        header["__metadata__"] = {"format": "pt", **(metadata or {})}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-(len(raw) + 8) % 8)  # the data starts 8-byte aligned
        with open(out_path, "wb") as out, open(self.body_path, "rb") as body:
            out.write(struct.pack("<Q", len(raw)))
            out.write(raw)
            out.flush()
            _copy_rest(body, out, self.size)
        os.unlink(self.body_path)

    def discard(self) -> None:
        self._body.close()
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
        except OSError:
            pass
        # start over with plain reads and writes from where the body began
        os.lseek(src.fileno(), 0, os.SEEK_SET)
        os.lseek(dst.fileno(), start, os.SEEK_SET)
        os.ftruncate(dst.fileno(), start)
        src.seek(0)
        dst.seek(start)
    shutil.copyfileobj(src, dst, 16 * 1024**2)


class SafetensorsFileWriter(CheckpointWriter):
    """One `.safetensors` file."""

    def __init__(self, path: str):
        super().__init__(path)
        self._tmp = _temp_beside(path)
        self._spool = _SafetensorsSpool(self._tmp + ".body")

    def _write(self, name: str, array: np.ndarray) -> None:
        self._spool.add(name, array, self.path)

    def commit(self) -> None:
        self._spool.finish(self._tmp)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._spool.discard()
        _remove(self._tmp)


class ShardedSafetensorsWriter(CheckpointWriter):
    """A directory of `model-0000k-of-0000n.safetensors` shards of at most `max_shard_bytes` each (a larger
    tensor gets a shard of its own) plus `model.safetensors.index.json`, the layout transformers loads."""

    def __init__(self, path: str, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        super().__init__(path)
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

    def commit(self) -> None:
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
        _replace_path(self._tmp_dir, self.path)

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
    spooled to `.npy` files and handed to Orbax as memory maps at `commit`, so memory stays at one tensor."""

    def __init__(self, path: str, step: int = 0):
        super().__init__(path)
        orbax_io.import_orbax(path)
        self.step = step
        self._spool_dir = _temp_beside(path, directory=True)
        self._files: dict[str, tuple[str, np.dtype]] = {}

    @property
    def load_path(self) -> str:
        """What MaxText's `load_parameters_path` names."""
        return os.path.join(self.path, str(self.step), orbax_io.ITEM_NAME)

    def _write(self, name: str, array: np.ndarray) -> None:
        spool = os.path.join(self._spool_dir, f"{len(self._files):06d}.npy")
        out = np.lib.format.open_memmap(spool, mode="w+", dtype=array.dtype, shape=array.shape)
        out[...] = array
        out.flush()
        del out
        self._files[name] = (spool, array.dtype)

    def commit(self) -> None:
        def load(node):
            if isinstance(node, dict):
                return {k: load(v) for k, v in node.items()}
            spool, dtype = self._files[node]
            return np.load(spool, mmap_mode="r").view(dtype)  # .npy keeps bfloat16 as raw V2

        collections = load(nest_names(self._files, self.path))
        scan = scan_layers_of(self._files)
        tmp = _temp_beside(self.path, directory=True)
        try:
            orbax_io.save_train_state(os.path.join(tmp, str(self.step)), collections, step=self.step,
                                      custom_metadata={} if scan is None else {"scan_layers": scan})
            _replace_path(tmp, self.path)
        except BaseException:
            _remove(tmp)
            raise
        finally:
            _remove(self._spool_dir)

    def abort(self) -> None:
        _remove(self._spool_dir)


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


def open_writer(path: str, fmt: str | None = None, *,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> CheckpointWriter:
    """A writer for OUT (see `output_format`)."""
    kind = output_format(path, fmt)
    path = output_path(path)
    if kind == "npz":
        return NpzWriter(path)
    if kind == "safetensors":
        return SafetensorsFileWriter(path)
    if kind == "orbax":
        return OrbaxWriter(path)
    return ShardedSafetensorsWriter(path, max_shard_bytes=max_shard_bytes)


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
