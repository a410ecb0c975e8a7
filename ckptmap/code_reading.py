"""Read fused-axis layouts off model code for trees (see ckptmap.trees.code_layouts for the format).

- `hf_layouts(config, tree)`: transformers' forward traced at the config when the model is small, else on a tiny
  twin (ckptmap.verify.tiny) whose layouts are carried to `tree` by template;
- `maxtext_layouts(model, overrides, scan)`: MaxText's jaxpr on abstract parameters (any size: nothing is
  allocated), in the MaxText worker;
- `load(family)`: the stored layouts of a bundled tiny family.

Storing them for the bundled families:

    .venv/bin/python -m ckptmap.code_reading [FAMILY ...] [--out DIR]

For each family (ckptmap/data/maxtext_tiny/<family>/config.json): the HF side by tracing transformers' forward pass
at the family's `hf_config` (ckptmap.tracing.hf_layouts), the MaxText side by tracing MaxText's jaxpr at the
family's overrides, unscanned and scanned (ckptmap.maxtext.code_layout, in the MaxText worker). Writes
`<DIR>/<family>.json` = {"hf": {...}, "scan0": {...}, "scan1": {...}} (see ckptmap.trees.code_layouts), each
through a temp file and a rename. A side that cannot be traced is left out and reported (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ckptmap import bundled, frameworks
from ckptmap.atomic import write_text_atomic
from ckptmap.errors import CkptmapError
from ckptmap.maxtext import session
from ckptmap.maxtext.overrides import with_scan_layers
from ckptmap.tracing.hf_layouts import ModelTooLarge, fused_layouts_hf
from ckptmap.trees import hf, hf_config, read_tree
from ckptmap.trees.code_layouts import attach, check_layout, transfer
from ckptmap.trees.dims import dims_from_hf_config
from ckptmap.trees.jsonio import load_json_strict
from ckptmap.trees.spec import parse_spec

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "code_layouts")


def layouts_path(family: str, out_dir: str = DEFAULT_OUT) -> str:
    return os.path.join(out_dir, f"{family}.json")


def load(family: str, out_dir: str = DEFAULT_OUT) -> dict | None:
    """The stored {"hf", "scan0", "scan1"} layouts of a bundled family, or None when none were stored."""
    path = layouts_path(family, out_dir)
    if not os.path.isfile(path):
        return None
    return load_json_strict(path)


def hf_layouts(config: dict, tree=None, notes: list[str] | None = None, *, max_params: int | None = None) -> dict:
    """Layouts of the HF model `config` builds, keyed by checkpoint name; only those that fit `tree` (when
    given). A model too large to run on the CPU is traced as its tiny twin and the layouts are transferred."""
    notes = notes if notes is not None else []
    config = config.get("hf_config", config) if isinstance(config, dict) else config
    limit = {} if max_params is None else {"max_params": max_params}
    try:
        found = fused_layouts_hf(config, **limit)
    except ModelTooLarge:
        if tree is None:
            raise
        # lazy: the tiny twin is verify's; the readers' adapters load this module, and readers never import verify
        from ckptmap.verify.tiny import tiny_hf_config

        config_dict = config if isinstance(config, dict) else config.to_dict()
        tiny_cfg, _ = tiny_hf_config(config_dict)
        tiny_tree = hf.read_hf_tree(hf_config.build_config(tiny_cfg, "tiny twin"), origin="tiny twin")
        tiny_tree.meta["dims"] = dims_from_hf_config(tiny_cfg)
        tiny_tree.meta["code_layouts"] = {n: v for n, v in fused_layouts_hf(tiny_cfg).items() if n in tiny_tree}
        full = tree if tree.meta.get("dims") else _with_dims(tree, dims_from_hf_config(config_dict))
        found = transfer(tiny_tree, full)
        notes.append(f"HF code layouts read on a tiny twin and carried over ({len(found)} tensors)")
    if tree is None:
        return found
    kept, misfits = {}, []
    for name, layout in found.items():
        try:
            kept[name] = check_layout(layout, tree[name].shape, None, name)
        except (KeyError, CkptmapError):
            misfits.append(name)
    if misfits:
        notes.append(f"{len(misfits)} traced layouts name tensors this tree does not hold as such (module names of "
                     f"fused weights the checkpoint stores split, e.g. {misfits[0]}): left out")
    return kept


def layouts_for_spec(spec: str, tree, notes: list[str]) -> dict:
    """Code layouts for a tree read from a SPEC, by the framework adapter that owns it: an HF config (hf: or a
    config .json) or a MaxText model; {} for checkpoints and tree files, whose code is not known (a tree file may
    carry them beside it)."""
    parsed = parse_spec(spec)
    return frameworks.for_kind(parsed.kind).code_layouts(parsed, tree, notes)


def _with_dims(tree, dims: dict):
    tree.meta["dims"] = dims
    return tree


def maxtext_layouts(model_name: str, overrides: list[str], scan: bool | None) -> dict:
    """Layouts of MaxText's model `model_name` (the session the `maxtext:` tree reader uses for the same spec)."""
    return session(model_name, with_scan_layers(tuple(overrides), scan)).fused_layouts()


def attach_stored(tree, family: str, stored: dict, side: str):
    """Attach side `side` ("hf", "scan0", "scan1") of a family's stored layouts (from load) to `tree`."""
    return attach(tree, stored.get(side, {}), source=f"{layouts_path(family)}#{side}")


def case_model(family: str, folder: str) -> "bundled.BundledModel":
    """A folder laid out like a bundled family (config.json + trees), e.g. a derived benchmark case
    (ckptmap/benchmarks/data/derived/<name>, stored as `derived/<name>`), as a BundledModel."""
    with open(os.path.join(folder, "config.json")) as f:
        return bundled.BundledModel(family, folder, json.load(f))


def build(family: str, folder: str | None = None) -> tuple[dict, list[str], list[str]]:
    """(layouts by side, problems, notes) for one bundled family, or a case in `folder` laid out like one."""
    b = case_model(family, folder) if folder else bundled.find(family)
    out: dict[str, dict] = {}
    problems: list[str] = []
    hf_tree = read_tree(b.hf_tree_path())
    notes: list[str] = []
    steps = [("hf", lambda: hf_layouts(b.config["hf_config"], hf_tree, notes))]
    for scan in (0, 1):
        steps.append((f"scan{scan}", lambda scan=scan: maxtext_layouts(b.maxtext_model_name,
                                                                         list(b.config["maxtext_overrides"]),
                                                                         bool(scan))))
    for side, run in steps:
        try:
            out[side] = dict(sorted(run().items()))
        except CkptmapError as e:
            problems.append(f"{family} {side}: {e.one_line()}")
        except Exception as e:  # a model MaxText or transformers cannot build is reported, the rest still run
            problems.append(f"{family} {side}: {type(e).__name__}: {str(e)[:300]}")
    return out, problems, [f"{family} hf: {n}" for n in notes]


def write(path: str, doc: dict) -> None:
    lines = ["{"]
    for i, (side, layouts) in enumerate(sorted(doc.items())):
        lines.append(f" {json.dumps(side)}: {{")
        rows = [f"  {json.dumps(n)}: {json.dumps(v, sort_keys=True)}" for n, v in sorted(layouts.items())]
        lines.append(",\n".join(rows))
        lines.append(" }" + ("," if i < len(doc) - 1 else ""))
    lines.append("}")
    write_text_atomic(path, "\n".join(line for line in lines if line) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ckptmap.code_reading", description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="*", help="bundled families (default: all)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--case-dir", default=None,
                    help="with one FAMILY: the folder holding its config.json and trees (a derived benchmark case: "
                         "--case-dir ckptmap/benchmarks/data/derived/NAME derived/NAME)")
    args = ap.parse_args(argv)
    if args.case_dir and len(args.families) != 1:
        ap.error("--case-dir takes exactly one FAMILY (the name its layouts are stored under)")
    problems: list[str] = []
    for family in args.families or bundled.families():
        t0 = time.perf_counter()
        doc, bad, notes = build(family, args.case_dir)
        problems += bad
        for note in notes:
            print(f"  note: {note}", flush=True)
        write(layouts_path(family, args.out), doc)
        counts = ", ".join(f"{k} {len(v)}" for k, v in doc.items())
        print(f"{family}: {counts} ({time.perf_counter() - t0:.1f} s)", flush=True)
    for p in problems:
        print(f"not traced: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
