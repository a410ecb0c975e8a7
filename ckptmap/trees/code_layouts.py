"""Fused-axis layouts read off a model's code, kept beside its tree.

Shapes cannot tell how a fused tensor's axis is cut: gpt-oss' gate_up_proj is interleaved, Mixtral's is
contiguous, Qwen3-Next's in_proj_qkvz is grouped per key head. The tracers (`ckptmap.tracing.hf_layouts` for
transformers, `ckptmap.maxtext.code_layout` for MaxText) run the model's forward pass and record how the code cuts
each parameter's output axis. One layout:

    {"axis": a, "rounds": R, "blocks": [b0, b1, ...]}

`axis` is an axis of the tensor as stored in its tree; that axis (size R * sum(blocks)) is R rounds of
[b0 | b1 | ...]: contiguous parts are R = 1, gpt-oss' interleave is blocks [1, 1], a per-head grouping is R = the
head groups. Trees carry them in `tree.meta["code_layouts"]` (tensor name -> layout), which the solver reads.

A bare tree file (the fixtures' `name -> shape` JSON) finds them in a sibling `code_layouts.json`:
`{"hf": {...}, "scan0": {...}, "scan1": {...}}`, keyed like the sibling config's `maxtext_config_values`.
"""

from __future__ import annotations

import os

from ckptmap.errors import TreeError
from ckptmap.trees.jsonio import load_json_strict
from ckptmap.trees.model import ParamTree

META_KEY = "code_layouts"
SIBLING = "code_layouts.json"


def check_layout(layout, shape: tuple[int, ...], file: str | None, name: str) -> dict:
    """One layout, validated against the tensor's shape; TreeError naming the file and tensor otherwise."""
    if not isinstance(layout, dict) or set(layout) != {"axis", "rounds", "blocks"}:
        raise TreeError(f"a code layout is {{axis, rounds, blocks}}, got {layout!r}", file=file, key=name)
    axis, rounds, blocks = layout["axis"], layout["rounds"], layout["blocks"]
    ints = [axis, rounds] + (list(blocks) if isinstance(blocks, list) else [None])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or len(blocks) < 2:
        raise TreeError(f"code layout needs integer axis/rounds and >= 2 integer blocks, got {layout!r}", file=file,
                        key=name)
    if not 0 <= axis < len(shape) or rounds < 1 or min(blocks) < 1 or rounds * sum(blocks) != shape[axis]:
        raise TreeError(f"code layout {layout!r} does not fit shape {list(shape)}", file=file, key=name)
    return {"axis": axis, "rounds": rounds, "blocks": list(blocks)}


def attach(tree: ParamTree, layouts: dict, *, source: str = "") -> ParamTree:
    """Put `layouts` (tensor name -> layout) into tree.meta, each checked against the tree; unknown names and
    misfits are errors naming the file and the tensor. Returns the tree."""
    if not isinstance(layouts, dict):
        raise TreeError("code layouts must be an object tensor name -> layout", file=source or None)
    checked = {}
    for name, layout in layouts.items():
        if name not in tree:
            raise TreeError("code layout for a tensor the tree does not have", file=source or None, key=name)
        checked[name] = check_layout(layout, tree[name].shape, source or None, name)
    tree.meta[META_KEY] = checked
    if source:
        tree.meta["code_layouts_from"] = source
    return tree


def sibling_side(tree_path: str, naming: str, sides: list[str]) -> str | None:
    """Which entry of a sibling code_layouts.json belongs to this tree file: "hf" for HF naming, else the scan
    key named in the file name (`maxtext_params.scan1.json` -> "scan1")."""
    if naming != "maxtext":
        return "hf" if "hf" in sides else None
    base = os.path.basename(tree_path)
    return next((k for k in sides if k != "hf" and f".{k}." in base), None)


def attach_beside(tree: ParamTree, tree_path: str) -> ParamTree:
    """Attach the layouts of a sibling code_layouts.json (if any) to a tree read from `tree_path`."""
    path = os.path.join(os.path.dirname(os.path.abspath(tree_path)), SIBLING)
    if not os.path.isfile(path):
        return tree
    doc = load_json_strict(path)
    if not isinstance(doc, dict):
        raise TreeError("code_layouts.json must be an object side -> {tensor: layout}", file=path)
    side = sibling_side(tree_path, tree.meta.get("naming", ""), list(doc))
    if side is None:
        return tree
    return attach(tree, doc[side], source=f"{path}#{side}")


def _scaled(blocks: list[int], num: int, den: int) -> list[int] | None:
    if any(b * num % den for b in blocks):
        return None
    return [b * num // den for b in blocks]


def transfer_layout(layout: dict, tiny_shape: tuple[int, ...], full_shape: tuple[int, ...], tiny_dims: dict,
                    full_dims: dict) -> dict | None:
    """A layout read on a tiny model, carried to its full-size twin's tensor of the same template, or None when
    sizes do not determine it. Interleaves (all blocks 1) keep their part count; contiguous cuts keep their
    proportions; head groups take the full size of the one head count the tiny group count names."""
    axis, rounds, blocks = layout["axis"], layout["rounds"], list(layout["blocks"])
    if len(tiny_shape) != len(full_shape) or axis >= len(full_shape):
        return None
    n_tiny, n_full = tiny_shape[axis], full_shape[axis]
    if all(b == 1 for b in blocks):
        if n_full % len(blocks):
            return None
        return {"axis": axis, "rounds": n_full // len(blocks), "blocks": blocks}
    if rounds == 1:
        scaled = _scaled(blocks, n_full, n_tiny)
        return {"axis": axis, "rounds": 1, "blocks": scaled} if scaled else None
    options = []
    for key in {k for k, v in tiny_dims.items() if v == rounds and k.endswith("heads") and k in full_dims}:
        groups = full_dims[key]
        if groups > 0 and n_full % groups == 0:
            scaled = _scaled(blocks, n_full // groups, n_tiny // rounds)
            if scaled:
                options.append({"axis": axis, "rounds": groups, "blocks": scaled})
    unique = {json_key(o): o for o in options}
    return next(iter(unique.values())) if len(unique) == 1 else None


def json_key(layout: dict) -> tuple:
    return layout["axis"], layout["rounds"], tuple(layout["blocks"])


def transfer(tiny: ParamTree, full: ParamTree) -> dict:
    """Layouts of `tiny` (a tiny twin of `full`, same names up to layer/expert indices) carried to `full`'s
    tensors by name template (see transfer_layout); templates whose tiny tensors disagree are left out."""
    by_template: dict[str, set] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, layout in (tiny.meta.get(META_KEY) or {}).items():
        template = tiny[name].parsed.template
        by_template.setdefault(template, set()).add(json_key(layout))
        shapes[template] = tiny[name].shape
    tiny_dims, full_dims = tiny.meta.get("dims") or {}, full.meta.get("dims") or {}
    out = {}
    for p in full:
        seen = by_template.get(p.parsed.template)
        if not seen or len(seen) != 1:
            continue
        axis, rounds, blocks = next(iter(seen))
        moved = transfer_layout({"axis": axis, "rounds": rounds, "blocks": list(blocks)}, shapes[p.parsed.template],
                                p.shape, tiny_dims, full_dims)
        if moved:
            out[p.name] = moved
    return out
