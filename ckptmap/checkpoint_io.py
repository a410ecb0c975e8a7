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

import ctypes
import errno
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from typing import Iterable

import ml_dtypes
import numpy as np

from ckptmap import orbax_io
from ckptmap.mapping import default_mode
from ckptmap.errors import CkptmapError
from ckptmap.trees.safetensors_tree import (INDEX_NAME, SafetensorsHeader, TensorEntry, dump_header, index_in,
                                            read_header_checked, read_index_checked)

NPZ_DTYPES_MEMBER = "__ckptmap_dtypes__"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
FORMATS = ("npz", "safetensors", "sharded", "orbax")

_ST_TO_NP = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu), "C64": np.dtype(np.complex64),
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


def _unreadable(e: BaseException) -> str:
    """One line for an exception a third-party parser raised on damaged bytes."""
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class SafetensorsFileReader(CheckpointReader):
    """One `.safetensors` file, memory-mapped; `read` returns a read-only view of the tensor's bytes. The header is
    checked against the file at open (ckptmap.trees.safetensors_tree.read_header_checked: offsets inside the file,
    no overlap, byte sizes that fit shapes and dtypes), so a truncated or damaged file fails before any read."""

    def __init__(self, path: str, header: SafetensorsHeader | None = None):
        self.path = path
        self._st = header if header is not None else read_header_checked(path, CheckpointIOError)
        self._header = self._st.entries
        self._data_start = self._st.data_start
        for name, entry in self._header.items():
            if entry.dtype not in _ST_TO_NP:
                raise CheckpointIOError(f"unsupported safetensors dtype {entry.dtype!r} (convert handles "
                                        f"{', '.join(_ST_TO_NP)})", file=path, key=name)

    def names(self) -> list[str]:
        return [e.name for e in self._st.in_file_order()]

    def __contains__(self, name: str) -> bool:
        return name in self._header

    def _info(self, name: str) -> TensorEntry:
        try:
            return self._header[name]
        except KeyError:
            raise self._missing(name) from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name).shape

    def dtype(self, name: str) -> np.dtype:
        return _ST_TO_NP[self._info(name).dtype]

    def read(self, name: str) -> np.ndarray:
        e = self._info(name)
        dtype = _ST_TO_NP[e.dtype]
        if e.end == e.begin:
            return np.zeros(e.shape, dtype)
        # one map per tensor: its pages leave the process when the array does, so a long conversion does not
        # accumulate the whole file in its resident set
        try:
            mapped = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start + e.begin,
                               shape=(e.end - e.begin,))
        except (OSError, ValueError) as err:  # the file shrank or vanished since it was opened
            raise CheckpointIOError(f"cannot read the tensor's bytes ({_unreadable(err)})", file=self.path,
                                    key=name) from None
        return mapped.view(dtype).reshape(e.shape)


class SafetensorsDirReader(CheckpointReader):
    """A directory of safetensors shards: through its index (`model.safetensors.index.json`), or every
    `*.safetensors`. Every shard's header is checked at open, and the index against the shards (files that exist,
    tensors that are in them, nothing unmapped)."""

    def __init__(self, path: str):
        self.path = path
        self._where: dict[str, str] = {}
        self._shards: dict[str, SafetensorsFileReader] = {}
        try:
            index = index_in(path)
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        except OSError as e:
            raise CheckpointIOError(f"cannot list the directory: {e.strerror or e}", file=path) from None
        if index:
            where, headers = read_index_checked(index, CheckpointIOError)
            for shard, header in headers.items():
                self._shards[shard] = SafetensorsFileReader(shard, header)
            self._where = where
            return
        for fname in files:
            shard = os.path.join(path, fname)
            reader = self._shards[shard] = SafetensorsFileReader(shard)
            for name in reader.names():
                if name in self._where:
                    raise CheckpointIOError(f"two shards hold this tensor: {os.path.basename(self._where[name])!r} "
                                            f"and {fname!r}", file=path, key=name)
                self._where[name] = shard

    def _shard(self, name: str) -> SafetensorsFileReader:
        try:
            return self._shards[self._where[name]]
        except KeyError:
            raise self._missing(name) from None

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shard(name).shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self._shard(name).dtype(name)

    def read(self, name: str) -> np.ndarray:
        return self._shard(name).read(name)

    def close(self) -> None:
        for s in self._shards.values():
            s.close()
        self._shards.clear()


_ZIP_LOCAL = struct.Struct("<4s2B4HL2L2H")  # a zip local file header (30 bytes)


class NpzReader(CheckpointReader):
    """An `.npz` archive; stored (uncompressed) members are memory-mapped, compressed ones read on demand.

    Checked at open: the archive's directory, each member's `.npy` header (a plain dtype, never a pickled
    object), and that each member holds exactly the bytes its header promises, inside the file. A stored member's
    CRC is checked when it is read (compressed ones are checked by zipfile as they are inflated)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
            self._size = os.path.getsize(path)
        except FileNotFoundError:
            raise CheckpointIOError("no such file", file=path) from None
        except zipfile.BadZipFile:
            raise CheckpointIOError("not an .npz archive (not a zip file)", file=path) from None
        except Exception as e:  # zipfile raises assorted errors on a damaged directory
            raise CheckpointIOError(f"not a readable .npz archive ({_unreadable(e)})", file=path) from None
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            if name in self._members:
                self._zip.close()
                raise CheckpointIOError("the archive holds two members of this name", file=path, key=name)
            self._members[name] = info
        self._extension_dtypes: dict[str, str] = {}
        self._headers: dict[str, tuple[tuple[int, ...], np.dtype, bool, int]] = {}
        self._data_at: dict[str, int] = {}  # stored members: file offset of the array's first byte
        try:
            if NPZ_DTYPES_MEMBER in self._members:
                self._extension_dtypes = self._read_dtype_names(self._members.pop(NPZ_DTYPES_MEMBER))
            for name in self._members:
                self._check_member(name)
        except BaseException:
            self._zip.close()
            raise

    def _read_dtype_names(self, info: zipfile.ZipInfo) -> dict[str, str]:
        try:
            with self._zip.open(info) as f:
                names = json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))
        except Exception as e:
            raise CheckpointIOError(f"unreadable dtype record ({_unreadable(e)})", file=self.path,
                                    key=NPZ_DTYPES_MEMBER) from None
        if not isinstance(names, dict):
            raise CheckpointIOError("the dtype record is not a JSON object", file=self.path, key=NPZ_DTYPES_MEMBER)
        for name, dtype in names.items():
            if dtype not in _EXTENSION_DTYPES:
                raise CheckpointIOError(f"the dtype record names an unknown dtype {dtype!r}", file=self.path,
                                        key=name)
        return names

    def _check_member(self, name: str) -> None:
        info = self._members[name]
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, stored = read_header(f)
                data_offset = f.tell()
        except Exception as e:  # zipfile and numpy raise assorted errors on damaged bytes
            raise CheckpointIOError(f"unreadable .npy header ({_unreadable(e)})", file=self.path, key=name) from None
        if stored.hasobject:
            raise CheckpointIOError("the member holds Python objects (a pickle); only plain arrays are read",
                                    file=self.path, key=name)
        dtype = self._restore_dtype(name, stored)
        if dtype.itemsize != stored.itemsize:
            raise CheckpointIOError(f"recorded dtype {dtype} does not fit the stored {stored}", file=self.path,
                                    key=name)
        nbytes = int(np.prod(shape, dtype=np.int64)) * stored.itemsize
        if info.file_size != data_offset + nbytes:
            raise CheckpointIOError(f"the member holds {info.file_size - data_offset} data bytes, its header "
                                    f"promises {nbytes} ({stored} {list(shape)})", file=self.path, key=name)
        if info.compress_type == zipfile.ZIP_STORED:
            try:
                with open(self.path, "rb") as f:
                    f.seek(info.header_offset)
                    local = f.read(30)
            except OSError as e:
                raise CheckpointIOError(f"cannot read: {e.strerror or e}", file=self.path, key=name) from None
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise CheckpointIOError("the archive's directory points at no member here", file=self.path,
                                        key=name)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            if info.compress_size != info.file_size or start + info.file_size > self._size:
                raise CheckpointIOError(f"the file is truncated: the member's bytes end at "
                                        f"{start + info.file_size} but the file has {self._size} bytes",
                                        file=self.path, key=name)
            if not fortran:
                self._data_at[name] = start + data_offset
        elif info.compress_size > self._size:
            raise CheckpointIOError("the file is truncated: the member is larger than the file", file=self.path,
                                    key=name)
        self._headers[name] = (tuple(shape), stored, fortran, data_offset)

    def names(self) -> list[str]:
        return list(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def _header(self, name: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
        """(shape, stored dtype, fortran order, offset of the data inside the member)."""
        try:
            return self._headers[name]
        except KeyError:
            raise self._missing(name) from None

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
        if int(np.prod(shape, dtype=np.int64)) == 0:
            return np.zeros(shape, dtype)
        try:
            if name in self._data_at:
                mapped = np.memmap(self.path, dtype=stored, mode="r", offset=self._data_at[name], shape=shape or (1,))
                crc = zlib.crc32(memoryview(mapped.reshape(-1).view(np.uint8)),
                                 zlib.crc32(self._npy_header_bytes(name, data_offset)))
                if crc != info.CRC:
                    raise CheckpointIOError("the member's bytes do not match its CRC (a damaged file)",
                                            file=self.path, key=name)
                return mapped.view(dtype).reshape(shape)
            with self._zip.open(info) as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
        except CheckpointIOError:
            raise
        except Exception as e:  # a damaged compressed member, a CRC mismatch, a file that shrank
            raise CheckpointIOError(f"cannot read the member ({_unreadable(e)})", file=self.path,
                                    key=name) from None
        if arr.shape != shape or arr.dtype != stored:
            raise CheckpointIOError(f"the member holds {arr.dtype} {list(arr.shape)}, its header said {stored} "
                                    f"{list(shape)}", file=self.path, key=name)
        return arr.view(dtype) if arr.dtype != dtype else arr

    def _npy_header_bytes(self, name: str, data_offset: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self._data_at[name] - data_offset)
            return f.read(data_offset)

    def close(self) -> None:
        self._zip.close()


class OrbaxReader(CheckpointReader):
    """An Orbax checkpoint as MaxText writes it (see ckptmap.orbax_io: a root of steps, a step, `items`, or a
    bare PyTree), its parameter collections flattened to '-'-joined names. The arrays are restored together at
    the first `read` (Orbax has no per-leaf lazy API that works across its versions); the optimizer state never.
    The metadata is checked at open (shapes, dtypes numpy knows, array data present beside it) and every
    restored array against it."""

    def __init__(self, path: str, step: int | None = None):
        self.path = path
        self._arrays: dict[str, np.ndarray] | None = None
        try:
            self._meta = orbax_io.read_metadata(path, step)
        except orbax_io.OrbaxError as e:
            raise CheckpointIOError(e.message, file=e.file or path, key=e.key) from None
        except Exception as e:  # damaged metadata can trip Orbax (or our walk of its tree) anywhere
            raise CheckpointIOError(f"cannot read the Orbax metadata ({_unreadable(e)})", file=path) from None
        self.item_dir = self._meta.location.item_dir
        self._dtypes: dict[str, np.dtype] = {}
        for name, (shape, dtype) in self._meta.entries.items():
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise CheckpointIOError(f"the metadata gives the shape {list(shape)}", file=self.item_dir, key=name)
            try:
                self._dtypes[name] = np.dtype(dtype)
            except Exception:
                raise CheckpointIOError(f"the metadata gives an unknown dtype {dtype!r}", file=self.item_dir,
                                        key=name) from None
        try:
            present = [f for f in os.listdir(self.item_dir) if f != "_METADATA" and not f.startswith(".")]
        except OSError as e:
            raise CheckpointIOError(f"cannot list: {e.strerror or e}", file=self.item_dir) from None
        if not present:
            raise CheckpointIOError(f"the metadata lists {len(self._meta.entries)} arrays but the directory holds "
                                    "no array data", file=self.item_dir, key=next(iter(self._meta.entries)))

    def names(self) -> list[str]:
        return list(self._meta.entries)

    def __contains__(self, name: str) -> bool:
        return orbax_io.lookup(name, self._meta.entries) is not None

    def _stored(self, name: str) -> str:
        """A variable of another collection (MoEBiasVar-...) may be stored inside `params` (orbax_io.stored_name)."""
        stored = orbax_io.lookup(name, self._meta.entries)
        if stored is None:
            raise self._missing(name)
        return stored

    def _entry(self, name: str) -> tuple[tuple[int, ...], str]:
        return self._meta.entries[self._stored(name)]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[0]

    def dtype(self, name: str) -> np.dtype:
        return self._dtypes[self._stored(name)]

    def read(self, name: str) -> np.ndarray:
        name = self._stored(name)
        if self._arrays is None:
            try:
                arrays = orbax_io.restore_parameters(self._meta)
            except orbax_io.OrbaxError as e:
                raise CheckpointIOError(e.message, file=e.file, key=e.key or name) from None
            except Exception as e:
                raise CheckpointIOError(f"cannot restore the Orbax arrays ({_unreadable(e)})", file=self.item_dir,
                                        key=name) from None
            for n, (shape, _) in self._meta.entries.items():
                arr = arrays.get(n)
                if arr is not None and (tuple(arr.shape) != tuple(shape) or arr.dtype != self._dtypes[n]):
                    raise CheckpointIOError(f"the data holds {arr.dtype} {list(arr.shape)}, the metadata says "
                                            f"{self._dtypes[n]} {list(shape)}", file=self.item_dir, key=n)
            self._arrays = arrays
        try:
            return self._arrays[name]
        except KeyError:
            raise CheckpointIOError("the metadata lists this tensor but its data was not restored",
                                    file=self.item_dir, key=name) from None


def open_reader(path: str, *, step: int | None = None) -> CheckpointReader:
    """Open IN by what it is: `.npz`, `.safetensors`, a directory of safetensors (with or without an index),
    or an Orbax checkpoint (a root of steps: the latest, or `step`). Raises CheckpointIOError naming the path
    otherwise."""
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

_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def write_failure(e: OSError, *, file: str, key: str | None = None) -> "CheckpointIOError":
    """An OSError while writing the output -> one line; a full disk (or a file-size limit) is said so."""
    what = e.strerror or str(e)
    short_write = e.errno is None and "requested and" in what  # numpy's tofile: "N requested and M written"
    if e.errno in _FULL_ERRNOS or short_write:
        return CheckpointIOError(f"cannot write the output, the disk is full or a file-size limit was reached "
                                 f"({what}); nothing was written", file=file, key=key)
    return CheckpointIOError(f"cannot write the output ({what}); nothing was written", file=file, key=key)


class CheckpointWriter(ABC):
    """Tensors in, one at a time; nothing appears at `path` until `commit()`. As a context manager it commits on
    success and removes its temp files on an exception. A failed write or commit removes them too and raises
    CheckpointIOError. `overwrite=False` commits only onto a path that does not exist (atomically: of two
    writers racing to one path, one wins and the other fails, never an interleaved output)."""

    path: str

    def __init__(self, path: str, *, overwrite: bool = True):
        self.path = path
        self.overwrite = overwrite
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
        try:
            self._write(name, array)
        except OSError as e:
            self.abort()
            raise write_failure(e, file=self.path, key=name) from None
        self.bytes_written += array.nbytes

    def commit(self) -> None:
        try:
            self._commit()
        except FileExistsError:
            self.abort()
            raise CheckpointIOError("the output appeared while this conversion ran (another conversion to the "
                                    "same path?); it was left as it is and nothing was written",
                                    file=self.path) from None
        except OSError as e:
            self.abort()
            raise write_failure(e, file=self.path) from None
        except BaseException:
            self.abort()
            raise

    def _install(self, tmp: str) -> None:
        """Move the finished temp file or directory onto `path` (see `overwrite`)."""
        _fsync_tree(tmp)
        if self.overwrite:
            _replace_path(tmp, self.path)
        else:
            _rename_noreplace(tmp, self.path)
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    @abstractmethod
    def _write(self, name: str, array: np.ndarray) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None:
        """Remove every temp file; never raises."""

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


TEMP_PREFIX = ".tmp-"


def _temp_owner() -> str:
    """`host.pid` of this process, in every temp name, so that a later run can tell a dead run's leftovers."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
    return f"{host}.{os.getpid()}"


def _temp_prefix(path: str) -> str:
    return f"{TEMP_PREFIX}{os.path.basename(os.path.abspath(path))}-"


def _temp_beside(path: str, *, directory: bool = False) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    prefix = f"{_temp_prefix(path)}{_temp_owner()}-"
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
        default_mode(tmp, directory=True)
        return tmp
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=parent)
    os.close(fd)
    default_mode(tmp)
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(path: str) -> list[str]:
    """Temp files and directories that a killed writer of `path` left beside it: named for `path`, made on this
    host by a process that no longer runs. A live writer's temps (another conversion running now) are never
    listed."""
    parent = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    host = _temp_owner().split(".")[0]
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    out = []
    for name in entries:
        if not name.startswith(prefix):
            continue
        m = re.match(r"([A-Za-z0-9_]+)\.(\d+)-", name[len(prefix):])
        if m and m.group(1) == host and not _pid_alive(int(m.group(2))):
            out.append(os.path.join(parent, name))
    return sorted(out)


def remove_stale_temps(path: str) -> list[str]:
    """Remove `stale_temps(path)`; returns what was removed."""
    removed = []
    for tmp in stale_temps(path):
        _remove(tmp)
        if not os.path.lexists(tmp):
            removed.append(tmp)
    return removed


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


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def _rename_noreplace(tmp: str, path: str) -> None:
    """Move tmp onto path only if path does not exist (FileExistsError otherwise), atomically: Linux's
    renameat2(RENAME_NOREPLACE); where the call or the filesystem lacks it, link() for a file (fails on an
    existing path) and rename() for a directory (fails onto a non-empty one)."""
    fn = _renameat2()
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), path)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
            raise OSError(err, os.strerror(err), path)
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        try:
            os.rename(tmp, path)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path) from None
            raise
    else:
        os.link(tmp, path)
        os.unlink(tmp)


def _fsync_path(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    _fsync_path(path)


def _fsync_tree(path: str) -> None:
    """Flush a finished temp file (or every file of a temp directory) to disk before it is renamed into place,
    so that the rename never publishes a file whose bytes are still only in the page cache."""
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for f in files:
                _fsync_path(os.path.join(root, f))
            _fsync_dir(root)
    else:
        _fsync_path(path)


def _remove(path: str | None) -> None:
    """Remove a temp file or directory; never raises."""
    try:
        if path and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif path and os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass


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
