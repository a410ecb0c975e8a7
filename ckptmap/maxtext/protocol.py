"""The worker protocol: one JSON object per line each way, arrays as .npy files in a shared directory.

Request:  {"op": "build", "model_name", "overrides"}            -> {"model": id, "timings"}
          {"op": "describe" | "init" | "forward" | "fused_layouts" | "reference_convert" | "drop", "model": id, ...}
          (`fused_layouts` answers {"layouts": {name: {"axis", "rounds", "blocks"}}, "timings"};
          `forward` takes `tokens` and, optionally, `positions`: .npy files of [batch, seq] ints)
          {"op": "shutdown"}
Response: {"ok": true, "result": {...}} or {"ok": false, "error": "<MaxText's message>", "type": "<exception>"}

Arrays never travel inside JSON: the sender writes each one with `np.save(..., allow_pickle=False)` under a
directory both sides can read and sends `{name: file}`; the receiver loads with `allow_pickle=False`. Names
become file names `a<i>.npy`, so any parameter name is safe. Dtypes numpy cannot store without pickling
(bfloat16) are widened to float32 before saving.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

import numpy as np


def encode(message: dict) -> str:
    """One protocol line (no embedded newlines)."""
    return json.dumps(message, separators=(",", ":")) + "\n"


def decode(line: str) -> dict:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"protocol message is not a JSON object: {line[:200]!r}")
    return message


def send(stream: IO[str], message: dict) -> None:
    stream.write(encode(message))
    stream.flush()


def storable(array) -> np.ndarray:
    """A numpy array np.save can write without pickle: extension float types (bfloat16, fp8) become float32."""
    a = np.asarray(array)
    if a.dtype.kind == "V" or a.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2") or a.dtype == object:
        a = np.asarray(array, dtype=np.float32)
    return a


def save_arrays(arrays: dict[str, np.ndarray], directory: str | os.PathLike) -> dict[str, str]:
    """Write each array to `directory/a<i>.npy`; returns name -> file name (relative to `directory`)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for i, (name, array) in enumerate(arrays.items()):
        fname = f"a{i}.npy"
        np.save(d / fname, storable(array), allow_pickle=False)
        manifest[name] = fname
    return manifest


def load_arrays(manifest: dict[str, str], directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the arrays a manifest names (never unpickling)."""
    d = Path(directory)
    return {name: np.load(d / fname, allow_pickle=False) for name, fname in manifest.items()}


def load_array(path: str | os.PathLike) -> np.ndarray:
    """Read one array file (never unpickling)."""
    return np.load(Path(path), allow_pickle=False)
