"""Safetensors trees from headers only: an 8-byte little-endian header length, then that many bytes of JSON
(`name -> {dtype, shape, data_offsets}` plus an optional `__metadata__`). No tensor byte is ever read.

A directory is read through its `model.safetensors.index.json` (`weight_map`: name -> shard file) when there is
one, else every `*.safetensors` file in it.
"""

from __future__ import annotations

import os
import struct

from ckptmap.errors import TreeError
from ckptmap.trees.jsonio import load_json_strict, loads_strict
from ckptmap.trees.model import ParamInfo, ParamTree, normalise_dtype

# A header larger than this is not a real safetensors header (the format itself caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000

_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32", "I32": "int32",
    "U64": "uint64", "I64": "int64", "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu", "C64": "complex64",
}


def read_header(path: str) -> dict:
    """The JSON header of one safetensors file; a short, oversized or non-JSON header raises TreeError."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TreeError(f"truncated safetensors header: file has {size} bytes, the header length alone "
                                "needs 8", file=path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise TreeError(f"safetensors header length {n} is implausible (over {MAX_HEADER_BYTES} bytes): "
                                "not a safetensors file?", file=path)
            if 8 + n > size:
                raise TreeError(f"truncated safetensors header: it declares {n} bytes but the file has only "
                                f"{size - 8} after the length", file=path)
            raw = f.read(n)
    except FileNotFoundError:
        raise TreeError("no such file", file=path) from None
    except IsADirectoryError:
        raise TreeError("expected a .safetensors file, found a directory", file=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TreeError("safetensors header is not UTF-8 text: not a safetensors file?", file=path) from None
    header = loads_strict(text.rstrip(" \x00"), path, "safetensors header JSON")
    if not isinstance(header, dict):
        raise TreeError("safetensors header is not a JSON object", file=path)
    return header


def params_from_header(header: dict, path: str) -> list[ParamInfo]:
    out = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or "shape" not in entry or "dtype" not in entry:
            raise TreeError("safetensors header entry has no shape/dtype", file=path, key=name)
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise TreeError(f"shape must be a list of non-negative integers, got {shape!r}", file=path, key=name)
        dtype = _DTYPES.get(str(entry["dtype"]).upper(), normalise_dtype(str(entry["dtype"])))
        out.append(ParamInfo(name, tuple(shape), dtype))
    return out


def _index_in(directory: str) -> str | None:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors.index.json"))
    return os.path.join(directory, names[0]) if names else None


def read_index(index_path: str) -> ParamTree:
    """Sharded checkpoint: every shard named in the index's weight_map, checked against the map."""
    index = load_json_strict(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise TreeError("index has no 'weight_map' object", file=index_path, key="weight_map")
    directory = os.path.dirname(os.path.abspath(index_path))
    by_file: dict[str, list[ParamInfo]] = {}
    for shard in dict.fromkeys(weight_map.values()):
        shard_path = os.path.join(directory, str(shard))
        if not os.path.isfile(shard_path):
            raise TreeError(f"shard {shard!r} named in the index is missing", file=index_path)
        by_file[str(shard)] = params_from_header(read_header(shard_path), shard_path)
    params = []
    for shard, infos in by_file.items():
        for p in infos:
            mapped = weight_map.get(p.name)
            if mapped is None:
                raise TreeError(f"tensor in shard {shard!r} is not in the index's weight_map", file=index_path,
                                key=p.name)
            if mapped == shard:
                params.append(p)
    found = {p.name for p in params}
    for name, shard in weight_map.items():
        if name not in found:
            raise TreeError(f"index maps it to shard {shard!r}, whose header does not hold it", file=index_path,
                            key=name)
    order = {n: i for i, n in enumerate(weight_map)}
    params.sort(key=lambda p: order[p.name])
    meta = {"naming": "hf", "shards": len(by_file), "index": os.path.basename(index_path)}
    return ParamTree.from_items(params, origin=index_path, framework="safetensors", meta=meta)


def read_safetensors_tree(target: str) -> ParamTree:
    """`x.safetensors`, an index json, or a directory -> ParamTree of every tensor's name, shape and dtype."""
    if target.endswith(".json"):
        return read_index(target)
    if os.path.isdir(target):
        index = _index_in(target)
        if index:
            return read_index(index)
        files = sorted(os.path.join(target, n) for n in os.listdir(target) if n.endswith(".safetensors"))
        if not files:
            raise TreeError("directory holds no .safetensors file", file=target)
        params = [p for f in files for p in params_from_header(read_header(f), f)]
        return ParamTree.from_items(params, origin=target, framework="safetensors",
                                    meta={"naming": "hf", "shards": len(files)})
    header = read_header(target)
    meta = {"naming": "hf", "shards": 1}
    if isinstance(header.get("__metadata__"), dict):
        meta["file_metadata"] = {str(k): str(v) for k, v in header["__metadata__"].items()}
    return ParamTree.from_items(params_from_header(header, target), origin=target, framework="safetensors",
                                meta=meta)
