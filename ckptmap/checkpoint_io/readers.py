"""Lazy, checked readers: one safetensors file, a sharded safetensors directory, an npz archive, an Orbax checkpoint."""

from __future__ import annotations

import json
import os
import struct
import threading
import zipfile
import zlib

import ml_dtypes
import numpy as np

from ckptmap import orbax_io
from ckptmap.checkpoint_io.base import (NPZ_DTYPES_MEMBER, _EXTENSION_DTYPES, _ST_TO_NP, CheckpointIOError,
                                      CheckpointReader, _unreadable)
from ckptmap.trees.safetensors_tree import (SafetensorsHeader, TensorEntry, index_in, read_header_checked, read_index_checked)


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
    bare PyTree), its parameter collections flattened to '-'-joined names. Each `read` restores that one array
    (an Orbax partial restore), so memory stays at one tensor; the optimizer state is never restored.
    The metadata is checked at open (shapes, dtypes numpy knows, array data present beside it) and every
    restored array against it."""

    thread_safe = True  # reads go through TensorStore; Orbax's restore, the fallback, runs one at a time

    def __init__(self, path: str, step: int | None = None):
        self.path = path
        try:
            self._meta = orbax_io.read_metadata(path, step)
        except orbax_io.OrbaxError as e:
            raise CheckpointIOError(e.message, file=e.file or path, key=e.key) from None
        except Exception as e:  # damaged metadata can trip Orbax (or our walk of its tree) anywhere
            raise CheckpointIOError(f"cannot read the Orbax metadata ({_unreadable(e)})", file=path) from None
        self.item_dir = self._meta.location.item_dir
        self._lock = threading.Lock()
        self._context: tuple | None = None  # (TensorStore context, OCDBT?), made at the first read
        self._stores: dict[str, object] = {}
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

    def _store(self, name: str):
        """The TensorStore handle on a stored name: the one the metadata read opened, else opened once here
        (None: restore through Orbax instead)."""
        if name in self._meta.stores:
            return self._meta.stores[name]
        with self._lock:
            if name not in self._stores:
                if self._context is None:
                    self._context = orbax_io.read_context(self.item_dir)
                self._stores[name] = orbax_io.open_array(self._meta, name, *self._context)
            return self._stores[name]

    def read(self, name: str) -> np.ndarray:
        """One parameter, read alone (memory: that array, never the whole checkpoint); from any thread."""
        name = self._stored(name)
        store = self._store(name)
        if store is None:
            with self._lock:
                arr = self._restore(name)
        else:
            arr = self._read_store(store, name, ())
        shape = self._meta.entries[name][0]
        if tuple(arr.shape) != tuple(shape) or arr.dtype != self._dtypes[name]:
            raise CheckpointIOError(f"the data holds {arr.dtype} {list(arr.shape)}, the metadata says "
                                    f"{self._dtypes[name]} {list(shape)}", file=self.item_dir, key=name)
        return arr

    def reads_slices(self, name: str, axes: tuple[int, ...]) -> bool:
        """Whether `read_part` reads one index along `axes` without reading the rest: the array is stored in
        chunks one index thick along each of them."""
        store = self._store(self._stored(name))
        if store is None or not axes:
            return False
        chunk = store.chunk_layout.read_chunk.shape
        return chunk is not None and all(a < len(chunk) and chunk[a] == 1 for a in axes)

    def read_part(self, name: str, index: tuple) -> np.ndarray:
        """`read(name)[index]`, reading only the chunks it covers (see `reads_slices`)."""
        return self.start_read_part(name, index)()

    def start_read_part(self, name: str, index: tuple):
        """Start reading `read(name)[index]` in TensorStore's threads; returns the function that waits for the
        array (and raises its error)."""
        name = self._stored(name)
        store = self._store(name)
        if store is None:
            arr = self.read(name)[index]
            return lambda: arr
        started = self._start_read(store, name, index)

        def wait() -> np.ndarray:
            arr = self._finish_read(started, name)
            if arr.dtype != self._dtypes[name]:
                raise CheckpointIOError(f"the data holds {arr.dtype}, the metadata says {self._dtypes[name]}",
                                        file=self.item_dir, key=name)
            return arr
        return wait

    def _start_read(self, store, name: str, index: tuple):
        try:
            return (store[index] if index else store).read()
        except Exception as e:  # an index the array does not have
            raise CheckpointIOError(f"cannot read the stored array ({_unreadable(e)})", file=self.item_dir,
                                    key=name) from None

    def _finish_read(self, started, name: str) -> np.ndarray:
        try:
            return np.asarray(started.result())
        except Exception as e:  # missing or damaged chunks
            raise CheckpointIOError(f"cannot read the stored array ({_unreadable(e)})", file=self.item_dir,
                                    key=name) from None

    def _read_store(self, store, name: str, index: tuple) -> np.ndarray:
        return self._finish_read(self._start_read(store, name, index), name)

    def _restore(self, name: str) -> np.ndarray:
        try:
            arr = orbax_io.restore_parameters(self._meta, [name]).get(name)
        except orbax_io.OrbaxError as e:
            raise CheckpointIOError(e.message, file=e.file, key=e.key or name) from None
        except Exception as e:
            raise CheckpointIOError(f"cannot restore the Orbax arrays ({_unreadable(e)})", file=self.item_dir,
                                    key=name) from None
        if arr is None:
            raise CheckpointIOError("the metadata lists this tensor but its data was not restored",
                                    file=self.item_dir, key=name)
        return arr
