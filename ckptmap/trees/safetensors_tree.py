"""Safetensors headers, checked against their files, and safetensors trees from headers only.

A safetensors file is an 8-byte little-endian header length, that many bytes of JSON (`name -> {dtype, shape,
data_offsets}` plus an optional `__metadata__`), then the tensor bytes. `read_header_checked` is the one parser
of that header: `ckptmap trees` (this module) and the checkpoint readers (ckptmap.checkpoint_io) both use it, and
it trusts nothing the header says until the file agrees:

- the header length fits the file; the header is UTF-8 JSON, an object, without duplicated names;
- every entry has a known dtype, a shape of non-negative integers and two data offsets `0 <= begin <= end`;
- `end - begin` is exactly prod(shape) x the dtype's size;
- the tensors do not overlap, and every one ends inside the file (a truncated download is named, with the first
  tensor whose bytes are missing).

No tensor byte is read. A directory is read through its `model.safetensors.index.json` (`weight_map`: name ->
shard file) when there is one, else every `*.safetensors` file in it; `read_index_checked` checks that the index
names files that exist (beside it) and tensors that are in them, and that the shards hold nothing it does not name.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

from ckptmap import storage
from ckptmap.errors import CkptmapError, TreeError, reading
from ckptmap.trees.jsonio import load_json_strict, loads_strict
from ckptmap.trees.model import ParamInfo, ParamTree

# A header larger than this is not a real safetensors header (the format itself caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
INDEX_NAME = "model.safetensors.index.json"

# safetensors dtype code -> (ckptmap dtype name, bits per element)
ST_DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 8), "U8": ("uint8", 8), "I8": ("int8", 8), "U16": ("uint16", 16), "I16": ("int16", 16),
    "U32": ("uint32", 32), "I32": ("int32", 32), "U64": ("uint64", 64), "I64": ("int64", 64),
    "F16": ("float16", 16), "BF16": ("bfloat16", 16), "F32": ("float32", 32), "F64": ("float64", 64),
    "F8_E4M3": ("float8_e4m3fn", 8), "F8_E5M2": ("float8_e5m2", 8), "F8_E8M0": ("float8_e8m0fnu", 8),
    "F4": ("float4_e2m1fn", 4), "F6_E2M3": ("float6_e2m3fn", 6), "F6_E3M2": ("float6_e3m2fn", 6),
    "C64": ("complex64", 64),
}


@dataclass(frozen=True)
class TensorEntry:
    """One checked header entry: `begin`/`end` are offsets into the data section (after the header)."""

    name: str
    dtype: str  # the safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def dtype_name(self) -> str:
        return ST_DTYPES[self.dtype][0]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A header that agrees with its file. `entries` in header order; `data_start`: file offset of the data."""

    path: str
    entries: dict[str, TensorEntry]
    metadata: dict | None
    data_start: int
    file_size: int

    def in_file_order(self) -> list[TensorEntry]:
        return sorted(self.entries.values(), key=lambda e: (e.begin, e.end))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _entry(name: str, info, path: str, error: type[CkptmapError]) -> TensorEntry:
    if not isinstance(info, dict):
        raise error("safetensors header entry is not an object", file=path, key=name)
    for field in ("dtype", "shape", "data_offsets"):
        if field not in info:
            raise error(f"safetensors header entry has no {field!r}", file=path, key=name)
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ST_DTYPES:
        raise error(f"unknown safetensors dtype {dtype!r} (known: {', '.join(ST_DTYPES)})", file=path, key=name)
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise error(f"shape must be a list of non-negative integers, got {shape!r}", file=path, key=name)
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise error(f"data_offsets must be two integers 0 <= begin <= end, got {offsets!r}", file=path, key=name)
    bits = math.prod(shape) * ST_DTYPES[dtype][1]
    begin, end = offsets
    if bits % 8 or end - begin != bits // 8:
        raise error(f"byte range {begin}..{end} ({end - begin} bytes) does not hold {dtype} {shape} "
                    f"({bits / 8:g} bytes)", file=path, key=name)
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def read_header_checked(path: str, error: type[CkptmapError] = TreeError) -> SafetensorsHeader:
    """Parse one safetensors file's header and check it against the file (see the module doc); any problem
    raises `error` (TreeError by default; the checkpoint readers pass CheckpointIOError) naming the file and,
    where there is one, the tensor."""
    with reading(path, error, "a .safetensors file"):
        with storage.open_read(path) as f:  # a local file, or any fsspec URL (ranged reads: the header only)
            size = storage.size(path)
            head = f.read(8)
            if len(head) < 8:
                raise error(f"truncated safetensors header: file has {size} bytes, the header length alone "
                            "needs 8", file=path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise error(f"safetensors header length {n} is implausible (over {MAX_HEADER_BYTES} bytes): "
                            "not a safetensors file?", file=path)
            if 8 + n > size:
                raise error(f"truncated safetensors header: it declares {n} bytes but the file has only "
                            f"{size - 8} after the length", file=path)
            raw = f.read(n)
    if len(raw) != n:
        raise error(f"truncated safetensors header: read {len(raw)} of {n} bytes", file=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error("safetensors header is not UTF-8 text: not a safetensors file?", file=path) from None
    try:
        header = loads_strict(text.rstrip(" \x00"), path, "safetensors header JSON", error=error)
    except CkptmapError as e:
        if e.key:  # a duplicated tensor name
            raise
        raise error(f"{e.message} (the header is not JSON: not a safetensors file?)", file=path) from None
    if not isinstance(header, dict):
        raise error("safetensors header is not a JSON object", file=path)
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise error("safetensors __metadata__ is not a JSON object", file=path, key="__metadata__")
    entries = {name: _entry(name, info, path, error) for name, info in header.items()}
    data_start = 8 + n
    previous: TensorEntry | None = None
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if e.begin == e.end:
            continue  # an empty tensor occupies no byte
        if previous is not None and e.begin < previous.end:
            raise error(f"its bytes {e.begin}..{e.end} overlap those of {previous.name!r} "
                        f"({previous.begin}..{previous.end})", file=path, key=e.name)
        if data_start + e.end > size:
            raise error(f"the file is truncated: this tensor's bytes end at {data_start + e.end} but the file has "
                        f"{size} bytes (an interrupted download?)", file=path, key=e.name)
        previous = e
    return SafetensorsHeader(path, entries, metadata, data_start, size)


def params_from_header(header: SafetensorsHeader) -> list[ParamInfo]:
    return [ParamInfo(e.name, e.shape, e.dtype_name) for e in header.entries.values()]


def index_in(directory: str) -> str | None:
    """The directory's safetensors index: `model.safetensors.index.json`, else the first `*.safetensors.index.json`
    (a local directory or any fsspec URL)."""
    names = storage.listdir(directory)
    if INDEX_NAME in names:
        return storage.join(directory, INDEX_NAME)
    names = sorted(n for n in names if n.endswith(".safetensors.index.json"))
    return storage.join(directory, names[0]) if names else None


def read_index_checked(index_path: str, error: type[CkptmapError] = TreeError
                       ) -> tuple[dict[str, str], dict[str, SafetensorsHeader]]:
    """(weight_map: name -> shard path, shard path -> its checked header), in the index's order. The index must
    name shard files beside it that exist, every name it maps must be in that shard's header, and no shard may
    hold a tensor the index does not map to it."""
    if storage.is_remote(index_path):
        index = loads_strict(storage.read_bytes(index_path).decode("utf-8"), index_path, "safetensors index",
                             error=error)
        directory = storage.dirname(index_path)
    else:
        index = load_json_strict(index_path, error)
        directory = os.path.dirname(os.path.abspath(index_path))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise error("not a safetensors index: no \"weight_map\" object", file=index_path, key="weight_map")
    where: dict[str, str] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or shard != os.path.basename(shard) or shard in (".", ".."):
            raise error(f"the index maps it to {shard!r}, not a file name beside the index", file=index_path,
                        key=name)
        where[name] = storage.join(directory, shard)
    headers: dict[str, SafetensorsHeader] = {}
    for shard_path in dict.fromkeys(where.values()):
        if not storage.exists(shard_path) or storage.isdir(shard_path):
            first = next(n for n, s in where.items() if s == shard_path)
            raise error(f"the shard named by the index is missing ({os.path.basename(shard_path)!r})",
                        file=index_path, key=first)
        headers[shard_path] = read_header_checked(shard_path, error)
    for name, shard_path in where.items():
        if name not in headers[shard_path].entries:
            raise error(f"the index maps it to shard {os.path.basename(shard_path)!r}, whose header does not hold "
                        "it", file=index_path, key=name)
    for shard_path, header in headers.items():
        for name in header.entries:
            if where.get(name) != shard_path:
                raise error(f"tensor in shard {os.path.basename(shard_path)!r} is not mapped to it by the index's "
                            "weight_map", file=index_path, key=name)
    return where, headers


def read_index(index_path: str) -> ParamTree:
    """Sharded checkpoint: every shard named in the index's weight_map, checked against the map."""
    where, headers = read_index_checked(index_path)
    params = [ParamInfo(name, (e := headers[shard].entries[name]).shape, e.dtype_name) for name, shard in where.items()]
    meta = {"naming": "hf", "shards": len(headers), "index": os.path.basename(index_path)}
    return ParamTree.from_items(params, origin=index_path, framework="safetensors", meta=meta)


def read_safetensors_tree(target: str) -> ParamTree:
    """`x.safetensors`, an index json, or a directory -> ParamTree of every tensor's name, shape and dtype."""
    if target.endswith(".json"):
        return read_index(target)
    if storage.isdir(target):
        index = index_in(target)
        if index:
            return read_index(index)
        files = [storage.join(target, n) for n in storage.listdir(target) if n.endswith(".safetensors")]
        if not files:
            raise TreeError("directory holds no .safetensors file", file=target)
        params = [p for f in files for p in params_from_header(read_header_checked(f))]
        return ParamTree.from_items(params, origin=target, framework="safetensors",
                                    meta={"naming": "hf", "shards": len(files)})
    header = read_header_checked(target)
    meta = {"naming": "hf", "shards": 1}
    if header.metadata:
        meta["file_metadata"] = {str(k): str(v) for k, v in header.metadata.items()}
    return ParamTree.from_items(params_from_header(header), origin=target, framework="safetensors", meta=meta)


def dump_header(entries: dict[str, dict], metadata: dict | None = None) -> bytes:
    """The 8-byte length plus the JSON header for `entries` (name -> {dtype, shape, data_offsets}), padded so
    that the data starts 8-byte aligned."""
    header = dict(entries)
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)
    return struct.pack("<Q", len(raw)) + raw
