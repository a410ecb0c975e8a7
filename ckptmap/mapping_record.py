"""What a mapping knows about itself: the trees it was solved for, whether it was proven, and a seal on its rules.

All of it lives in `Mapping.meta` (plain JSON), so a mapping file passed between teams carries it:

- `meta["trees"]`: {"source": {name: [shape, dtype]}, "target": {...}}: the shapes and dtypes the rules were
  solved for. `convert` checks the input against the source side before reading a byte and every produced tensor
  against the target side before writing it.
- `meta["hf_config"]` and `meta["hf_side"]` ("source" | "target"): the HF config the HF side was solved against,
  so that writing that side back gives a model directory `from_pretrained` loads.
- `meta["verification"]`: {"passed", "kl_max", "kl_threshold", "dtype", "source", "target", "configs", "date",
  "ckptmap_version"}, or absent when the mapping was never verified.
- `meta["seal"]`: sha256 of the canonical JSON of the rules and the recorded trees. An edited file no longer
  matches it; `convert` refuses it unless told `--allow-edited`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from importlib import metadata as _metadata

from ckptmap.errors import MappingError
from ckptmap.transforms import op_from_json

SEAL_KEY = "seal"


def ckptmap_version() -> str:
    try:
        return _metadata.version("ckptmap")
    except _metadata.PackageNotFoundError:
        return "unknown"


def tree_record(tree) -> dict[str, list]:
    """ParamTree -> {name: [shape list, dtype]} (JSON)."""
    return {p.name: [list(p.shape), str(p.dtype)] for p in tree.params.values()}


def record_trees(mapping, source_tree, target_tree) -> None:
    """Remember the shapes and dtypes the mapping was solved for (both sides, every tensor the rules touch)."""
    src, tgt = tree_record(source_tree), tree_record(target_tree)
    used_src, used_tgt = set(mapping.source_names()), set(mapping.target_names())
    mapping.meta["trees"] = {"source": {n: v for n, v in src.items() if n in used_src},
                             "target": {n: v for n, v in tgt.items() if n in used_tgt}}


def record_hf_config(mapping, hf_config: dict | None, side: str) -> None:
    if hf_config:
        mapping.meta["hf_config"] = hf_config
        mapping.meta["hf_side"] = side


def record_verification(mapping, report, *, source: str, target: str, configs: dict | None = None) -> None:
    """Store the verdict of a verification run (a ckptmap.verify VerifyReport) in the mapping."""
    mapping.meta["verification"] = {
        "passed": bool(report.passed),
        "kl_max": _finite(report.kl_max),
        "kl_threshold": report.kl_threshold,
        "dtype": report.dtype,
        "source": source,
        "target": target,
        "configs": configs or {},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ckptmap_version": ckptmap_version(),
    }


def _finite(x: float) -> float | None:
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None


def verification(mapping) -> dict | None:
    return mapping.meta.get("verification")


def is_verified(mapping) -> bool:
    v = verification(mapping)
    return bool(v and v.get("passed"))


def _digest(mapping) -> str:
    body = {"rules": [r.to_json() for r in mapping.rules], "trees": mapping.meta.get("trees"),
            "unmapped_targets": list(mapping.unmapped_targets)}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(mapping) -> None:
    """Stamp the mapping's rules and trees (call last, after every other meta change that matters)."""
    mapping.meta[SEAL_KEY] = _digest(mapping)


def check_seal(mapping, *, file: str | None = None, allow_edited: bool = False) -> str:
    """'sealed' | 'unsealed' (an older mapping, no stamp) | 'edited' (allowed); raises MappingError for an edited
    mapping unless `allow_edited`."""
    stamp = mapping.meta.get(SEAL_KEY)
    if stamp is None:
        return "unsealed"
    if stamp == _digest(mapping):
        return "sealed"
    if allow_edited:
        return "edited"
    try:
        found = shape_disagreement(mapping)
    except Exception:  # a mapping damaged beyond a shape check: the seal alone says enough
        found = None
    detail = f" ({found[1]})" if found else ""
    raise MappingError(f"the mapping was edited after it was solved (its rules no longer match its seal){detail}; "
                       "re-solve it, or pass --allow-edited to apply it anyway", file=file,
                       key=found[0] if found else None)


def recorded_shapes(mapping, side: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} recorded for `side` ("source" | "target"); {} for a mapping without a record."""
    trees = mapping.meta.get("trees") or {}
    return {n: (tuple(v[0]), str(v[1])) for n, v in (trees.get(side) or {}).items()}


def swap_sides(meta: dict) -> dict:
    """The meta of the reversed mapping: source and target records exchanged; the seal does not carry over."""
    out = {k: v for k, v in meta.items() if k != SEAL_KEY}
    if "trees" in meta:
        out["trees"] = {"source": meta["trees"].get("target", {}), "target": meta["trees"].get("source", {})}
    if "hf_side" in meta:
        out["hf_side"] = {"source": "target", "target": "source"}.get(meta["hf_side"], meta["hf_side"])
    return out


def check_record(mapping, file: str | None = None) -> None:
    """Raise MappingError unless `meta["trees"]` (when present) is {"source"|"target": {name: [shape, dtype]}}
    with shapes of non-negative integers: an edited or damaged record is named, not tripped over later."""
    trees = mapping.meta.get("trees")
    if trees is None:
        return
    if not isinstance(trees, dict):
        raise MappingError("meta.trees must be an object {\"source\": ..., \"target\": ...}", file=file,
                           key="meta.trees")
    for side in ("source", "target"):
        record = trees.get(side)
        if record is None:
            continue
        if not isinstance(record, dict):
            raise MappingError(f"meta.trees.{side} must be an object name -> [shape, dtype]", file=file,
                               key=f"meta.trees.{side}")
        for name, value in record.items():
            ok = (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)
                  and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value[0])
                  and isinstance(value[1], str))
            if not ok:
                raise MappingError(f"the recorded {side} entry must be [shape, dtype], got {value!r}"[:300],
                                   file=file, key=name)


def shape_disagreement(mapping) -> tuple[str, str] | None:
    """(target name, what disagrees) for the first rule whose chain, run on the recorded source shapes (shapes
    only, no data), does not give the recorded target shape; None when every rule agrees or nothing is recorded.
    An edited chain (a reshape's out_shape changed by hand) or a mapping for another model is named here, before
    a byte of the checkpoint is read."""
    src, tgt = recorded_shapes(mapping, "source"), recorded_shapes(mapping, "target")
    if not src or not tgt:
        return None
    for name in mapping.target_names():
        if name not in tgt:
            return name, "the mapping writes a tensor the mapping was not solved for (no recorded shape)"
    for name in mapping.source_names():
        if name not in src:
            return name, "the mapping reads a tensor the mapping was not solved for (no recorded shape)"
    for rule in mapping.rules:
        if any(n not in src for n in rule.source_names()) or not rule.targets:
            continue
        cell = tuple(0 for _ in rule.grid)
        if any(n == 0 for n in rule.grid):
            continue
        first_target = rule.targets[0].name_at(cell)
        try:
            in_shapes = []
            for slot in rule.sources:
                shape = list(src[slot.name_at(cell)][0])
                for axis in sorted(slot.axes, reverse=True):
                    del shape[axis]
                in_shapes.append(tuple(shape))
            out_shapes = rule.chain.shape(tuple(in_shapes))
        except Exception as e:  # an op that cannot take these shapes
            return first_target, f"the mapping's chain does not fit the recorded source shapes ({e})"
        for slot, out in zip(rule.targets, out_shapes):
            name = slot.name_at(cell)
            if name not in tgt:
                continue
            shape = list(out)
            for axis, n in sorted(zip(slot.axes, rule.grid[slot.depth:])):
                shape.insert(axis, n)
            if tuple(shape) != tgt[name][0]:
                return name, (f"the mapping's chain gives {shape} where the mapping was solved for "
                              f"{list(tgt[name][0])}")
    return None


def check_shapes(mapping, *, file: str | None = None) -> None:
    """Raise MappingError naming the first target tensor `shape_disagreement` finds."""
    found = shape_disagreement(mapping)
    if found:
        raise MappingError(f"{found[1]} (an edited mapping?); nothing was read or written", file=file, key=found[0])


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_keys(keys, where: str, file: str | None) -> None:
    if isinstance(keys, str):
        return
    if not isinstance(keys, list) or not keys:
        raise MappingError(f"{where}: \"keys\" must be a tensor name or a non-empty nested list of names, got "
                           f"{keys!r:.80}", file=file)
    for k in keys:
        _check_keys(k, where, file)


def _check_slot(slot, where: str, file: str | None) -> None:
    if not isinstance(slot, dict):
        raise MappingError(f"{where}: a slot must be an object with \"key\" or \"keys\", got {slot!r:.80}", file=file)
    if "keys" in slot:
        _check_keys(slot["keys"], where, file)
    elif not isinstance(slot.get("key"), str):
        raise MappingError(f"{where}: a slot needs a tensor name in \"key\" (or \"keys\"), got "
                           f"{slot.get('key')!r:.80}", file=file)
    axes = slot.get("axes", [])
    if not isinstance(axes, list) or not all(_is_int(a) and a >= 0 for a in axes):
        raise MappingError(f"{where}: \"axes\" must be a list of non-negative integers, got {axes!r:.80}",
                           file=file, key=slot.get("key") if isinstance(slot.get("key"), str) else None)


def check_document(doc, file: str | None = None) -> None:
    """Raise MappingError (naming the file and the rule) unless `doc` has the mapping JSON's structure: an object
    whose `rules` is a list of objects with slot lists, a chain object (rebuilt here, so that a damaged op is named
    too), an integer grid; `meta` an object, `unmapped_targets` a list of names, `unused_sources` name -> reason.
    Meant for Mapping.from_json, so that a damaged or hand-edited file is one line, never a traceback."""
    if not isinstance(doc, dict):
        raise MappingError(f"not a ckptmap mapping (a JSON {type(doc).__name__}, not an object)", file=file)
    rules = doc.get("rules", [])
    if not isinstance(rules, list):
        raise MappingError("\"rules\" must be a list", file=file)
    for i, rule in enumerate(rules):
        where = f"rule {i}"
        if not isinstance(rule, dict):
            raise MappingError(f"{where} must be an object, got {rule!r:.80}", file=file)
        for field in ("sources", "targets", "chain"):
            if field not in rule:
                raise MappingError(f"a rule lacks the field {field!r} ({where})", file=file)
        for field in ("sources", "targets"):
            if not isinstance(rule[field], list):
                raise MappingError(f"{where}: {field!r} must be a list of slots", file=file)
            for slot in rule[field]:
                _check_slot(slot, where, file)
        grid = rule.get("grid", [])
        if not isinstance(grid, list) or not all(_is_int(n) and n >= 0 for n in grid):
            raise MappingError(f"{where}: \"grid\" must be a list of non-negative integers, got {grid!r:.80}",
                               file=file)
        score = rule.get("score", 0.0)
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise MappingError(f"{where}: \"score\" must be a number, got {score!r:.80}", file=file)
        if not isinstance(rule.get("explain", {}), dict):
            raise MappingError(f"{where}: \"explain\" must be an object", file=file)
        try:
            op_from_json(rule["chain"])
        except MappingError as e:
            raise MappingError(f"{where}: {e.message}", file=file) from None
        except Exception as e:  # an op's constructor tripping over a field of the wrong type
            raise MappingError(f"{where}: the chain cannot be built ({type(e).__name__}: {e})"[:300],
                               file=file) from None
    if not isinstance(doc.get("meta", {}), dict):
        raise MappingError("\"meta\" must be an object", file=file)
    unmapped = doc.get("unmapped_targets", [])
    if not isinstance(unmapped, list) or not all(isinstance(n, str) for n in unmapped):
        raise MappingError("\"unmapped_targets\" must be a list of tensor names", file=file)
    unused = doc.get("unused_sources", {})
    if not isinstance(unused, dict) or not all(isinstance(v, str) for v in unused.values()):
        raise MappingError("\"unused_sources\" must be an object name -> reason", file=file)
