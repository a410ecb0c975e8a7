"""The ground truth on disk: MaxText's own HF -> MaxText mapping, as data, and the tensors it produces.

Written by `ckptmap.benchmarks.ground_truth` (in the MaxText venv), read here without MaxText. Per family
under `ckptmap/benchmarks/data/<family>/`, per scan in {0, 1}:

- `param_mapping.scan{s}.json`: MaxText's PARAM_MAPPING entries in order, each
  `{"maxtext": KEY, "hf": VALUE, "hooks": [hook names]}`. KEY is a name or `{"tuple": [names]}` (one HF
  tensor split into several MaxText tensors); VALUE is a name, `null`, a list per stacked axis (nested for
  several axes), or `{"tuple": [...]}` (several HF tensors fused by a hook into one cell).
- `ground_truth.scan{s}.json`: status ("ok" or "unavailable" with the reason), MaxText targets the mapping
  does not cover, targets whose conversion failed (with the error), and `derived`: scan1 targets stored as a
  stacking of scan0 tensors (`{"stack": nested scan0 names, "axes": [target axis per nesting level]}`).
- `ground_truth.scan{s}.npz`: the remaining target tensors, each in the narrowest dtype (int8, float16,
  float32) that holds its float32 values exactly; `load` turns them back into float32.

The HF inputs are `ckptmap.runner.seeded_tensor(name, shape, seed=SEED, integer=True)`, shapes from the fixture's
`hf_params.json`, so anyone can recreate them without storing them.
"""

from __future__ import annotations

import itertools
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckptmap.atomic import atomic_path
from ckptmap.errors import CkptmapError
from ckptmap.mapping import write_json_atomic

SEED = 0
SCANS = (0, 1)
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class GroundTruthError(CkptmapError):
    """Ground-truth files are missing or malformed."""


def encode_value(value: Any) -> Any:
    """A PARAM_MAPPING key or value as JSON: str and None as is, list as list, tuple as {"tuple": [...]}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return {"tuple": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    raise TypeError(f"cannot encode a mapping value of type {type(value).__name__}: {value!r}")


def decode_value(data: Any) -> Any:
    """Inverse of encode_value."""
    if data is None or isinstance(data, str):
        return data
    if isinstance(data, dict):
        return tuple(decode_value(v) for v in data["tuple"])
    return [decode_value(v) for v in data]


def hf_names(value: Any) -> list[str]:
    """Every HF tensor name a mapping value reads, in order, without None."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [n for v in value for n in hf_names(v)]


def maxtext_names(key: Any) -> tuple[str, ...]:
    """The MaxText tensor(s) one PARAM_MAPPING key writes."""
    return tuple(key) if isinstance(key, tuple) else (key,)


def narrowest_exact(array: np.ndarray) -> np.ndarray:
    """`array` (float32) as int8 or float16 when that holds every value exactly, else unchanged."""
    a = np.asarray(array, dtype=np.float32)
    if a.size and np.all(np.isfinite(a)):
        if np.all(a == np.round(a)) and a.min() >= -128 and a.max() <= 127:
            return a.astype(np.int8)
        if np.array_equal(a.astype(np.float16).astype(np.float32), a):
            return a.astype(np.float16)
    return a


@dataclass(frozen=True)
class MappingEntry:
    """One PARAM_MAPPING entry: MaxText key(s) <- HF value, through the named hooks."""

    maxtext: Any  # str or tuple[str, ...]
    hf: Any
    hooks: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"maxtext": encode_value(self.maxtext), "hf": encode_value(self.hf), "hooks": list(self.hooks)}

    @classmethod
    def from_json(cls, d: dict) -> "MappingEntry":
        return cls(maxtext=decode_value(d["maxtext"]), hf=decode_value(d["hf"]), hooks=tuple(d.get("hooks", ())))


@dataclass
class GroundTruth:
    """MaxText's conversion of seeded HF tensors for one family and scan setting.

    `tensors`: MaxText name -> float32 array (the targets MaxText could produce). `entries`: the mapping as
    data. `not_in_mapping`: fixture targets no PARAM_MAPPING key covers. `failed`: target -> error message.
    """

    family: str
    scan: int
    model_name: str
    status: str
    reason: str = ""
    entries: list[MappingEntry] = field(default_factory=list)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    not_in_mapping: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    target_shapes: dict[str, list[int]] = field(default_factory=dict)  # the MaxText tree converted into, in order
    target_note: str = ""  # where target_shapes came from

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def sources_by_target(self) -> dict[str, list[str]]:
        """MaxText name -> the HF names MaxText reads for it (every MaxText key of a tuple shares them)."""
        out: dict[str, list[str]] = {}
        for e in self.entries:
            for name in maxtext_names(e.maxtext):
                out[name] = hf_names(e.hf)
        return out


def family_dir(family: str, data_dir: str = DATA_DIR) -> str:
    return os.path.join(data_dir, family)


def _paths(family: str, scan: int, data_dir: str) -> tuple[str, str, str]:
    d = family_dir(family, data_dir)
    return (os.path.join(d, f"param_mapping.scan{scan}.json"), os.path.join(d, f"ground_truth.scan{scan}.json"),
            os.path.join(d, f"ground_truth.scan{scan}.npz"))


def _stack_nested(names: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(names, str):
        return arrays[names]
    return np.stack([_stack_nested(n, arrays) for n in names], axis=0)


def rebuild_stacked(recipe: dict, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """A tensor stored as {"stack": nested names, "axes": [...]}: stack leading, then move to `axes`."""
    stacked = _stack_nested(recipe["stack"], arrays)
    depth = len(recipe["axes"])
    return np.moveaxis(stacked, tuple(range(depth)), tuple(recipe["axes"]))


def write_npz_reproducibly(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's format (np.load reads it), with fixed timestamps so that regenerating the same
    tensors gives the same bytes (no spurious git changes); written to a temp file, then renamed."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)


def save(gt: GroundTruth, *, data_dir: str = DATA_DIR, derived: dict[str, dict] | None = None,
         hf_config_note: str = "") -> dict:
    """Write the three files of one family+scan; tensors named in `derived` are stored as recipes.

    Returns {"npz_bytes": ..., "stored": n, "derived": n}.
    """
    derived = derived or {}
    pm_path, meta_path, npz_path = _paths(gt.family, gt.scan, data_dir)
    os.makedirs(os.path.dirname(pm_path), exist_ok=True)
    write_json_atomic(pm_path, {
        "format": "ckptmap.gt_param_mapping", "family": gt.family, "model_name": gt.model_name,
        "scan_layers": bool(gt.scan), "entries": [e.to_json() for e in gt.entries],
    })
    stored = {n: narrowest_exact(a) for n, a in gt.tensors.items() if n not in derived}
    npz_bytes = 0
    if gt.ok:
        write_npz_reproducibly(npz_path, stored)
        npz_bytes = os.path.getsize(npz_path)
    elif os.path.exists(npz_path):
        os.unlink(npz_path)
    write_json_atomic(meta_path, {
        "format": "ckptmap.ground_truth", "family": gt.family, "model_name": gt.model_name, "scan": gt.scan,
        "status": gt.status, "reason": gt.reason, "seed": SEED,
        "hf_inputs": "ckptmap.runner.seeded_tensor(name, shape, seed, integer=True); shapes from hf_params.json",
        "hf_config": hf_config_note,
        "target_tree": gt.target_note, "target_shapes": gt.target_shapes,
        "targets": sorted(gt.tensors), "not_in_mapping": list(gt.not_in_mapping), "failed": dict(gt.failed),
        "derived": derived, "stored_dtypes": {n: str(a.dtype) for n, a in stored.items()},
    })
    return {"npz_bytes": npz_bytes, "stored": len(stored), "derived": len(derived)}


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise GroundTruthError("no ground-truth file (run `.venv-maxtext/bin/python -m "
                               "ckptmap.benchmarks.ground_truth`)", file=path) from None
    except json.JSONDecodeError as e:
        raise GroundTruthError(f"invalid JSON at line {e.lineno}", file=path) from None


def load(family: str, scan: int, *, data_dir: str = DATA_DIR, with_tensors: bool = True) -> GroundTruth:
    """Read one family+scan; derived (scan1) tensors are rebuilt from the scan0 file they point into."""
    pm_path, meta_path, npz_path = _paths(family, scan, data_dir)
    meta = _read_json(meta_path)
    pm = _read_json(pm_path)
    entries = [MappingEntry.from_json(e) for e in pm.get("entries", [])]
    gt = GroundTruth(family=family, scan=scan, model_name=meta.get("model_name", ""), status=meta["status"],
                     reason=meta.get("reason", ""), entries=entries,
                     not_in_mapping=list(meta.get("not_in_mapping", [])), failed=dict(meta.get("failed", {})),
                     target_shapes=dict(meta.get("target_shapes", {})), target_note=meta.get("target_tree", ""))
    if not (with_tensors and gt.ok):
        return gt
    try:
        with np.load(npz_path) as npz:
            tensors = {n: npz[n].astype(np.float32) for n in npz.files}
    except FileNotFoundError:
        raise GroundTruthError("ground-truth tensors missing", file=npz_path) from None
    derived = meta.get("derived", {})
    if derived:
        base = load(family, 0, data_dir=data_dir).tensors
        for name, recipe in derived.items():
            try:
                tensors[name] = rebuild_stacked(recipe, base)
            except KeyError as e:
                raise GroundTruthError(f"derived from scan0 tensor {e.args[0]!r}, which is missing",
                                       file=meta_path, key=name) from None
    missing = [n for n in meta.get("targets", []) if n not in tensors]
    if missing:
        raise GroundTruthError(f"{len(missing)} target tensors missing", file=npz_path, key=missing[0])
    gt.tensors = tensors
    return gt


def available(data_dir: str = DATA_DIR) -> list[tuple[str, int]]:
    """(family, scan) pairs that have ground-truth files, sorted."""
    out = []
    if not os.path.isdir(data_dir):
        return out
    for family in sorted(os.listdir(data_dir)):
        for scan in SCANS:
            if os.path.exists(_paths(family, scan, data_dir)[1]):
                out.append((family, scan))
    return out


def find_stacking(target: np.ndarray, nested_names: Any, arrays: dict[str, np.ndarray]) -> dict | None:
    """A recipe rebuilding `target` exactly by stacking `arrays[nested_names]`, or None.

    Tries every placement of the stacked axes (outermost nesting first) whose sizes fit the target shape.
    """
    try:
        stacked = _stack_nested(nested_names, arrays)
    except (KeyError, ValueError):
        return None
    depth = 0
    probe = nested_names
    while isinstance(probe, list):
        depth += 1
        probe = probe[0]
    if stacked.size != target.size or stacked.ndim != target.ndim:
        return None
    for axes in itertools.permutations(range(target.ndim), depth):
        if any(target.shape[a] != stacked.shape[i] for i, a in enumerate(axes)):
            continue
        moved = np.moveaxis(stacked, tuple(range(depth)), axes)
        if moved.shape == target.shape and np.array_equal(moved, target):
            return {"stack": nested_names, "axes": list(axes)}
    return None
