"""Generate the ground truth: MaxText's own PARAM_MAPPING / HOOK_FNS applied to seeded HF tensors.

Runs in the MaxText venv (Python 3.12, maxtext 0.2.5):

    .venv-maxtext/bin/python -m ckptmap.benchmarks.ground_truth --out ckptmap/benchmarks/data

For each fixture family (tests/data/maxtext_tiny/<family>) and scan in {0, 1} it builds a real MaxText config
(pyconfig with the fixture's overrides), asks MaxText for the mapping and hooks at that config, and converts
`seeded_tensor(name, shape, integer=True)` HF tensors with MaxText's own loading functions from
`to_maxtext` (hooks per slice, list values stacked on MaxText's axes). The fixture's tiny `hf_config` is what
MaxText's mapping functions receive (to_maxtext passes its full-size HF_MODEL_CONFIGS entry instead, whose
layer counts would not match the tiny trees). Target shapes come from the fixture's
`maxtext_params.scan{s}.json`, the tree ckptmap solves against; where the fixture has no such file MaxText's
abstract model gives them. Everything MaxText cannot produce is recorded with its error, never dropped.
The files written are described in `ckptmap.benchmarks.gt_store`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

from ckptmap.benchmarks import gt_store
from ckptmap.benchmarks.derived import resolve
from ckptmap.benchmarks.gt_store import GroundTruth, MappingEntry
from ckptmap.mapping import write_json_atomic
from ckptmap.runner import seeded_tensor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "data", "maxtext_tiny")
SHARED_FIXTURES = "/work/shared/fixtures/maxtext_tiny"
# attention=dot_product: the CPU attention kernel; MaxText refuses its default for deepseek3.2's sparse indexer,
# and the kernel choice changes no parameter.
CONFIG_FLAGS = ("override_model_config=true", "hardware=cpu", "dtype=float32", "weight_dtype=float32",
                "skip_jax_distributed_system=true", "enable_checkpointing=false", "attention=dot_product")


def fixture_families(fixtures: str = FIXTURES) -> list[str]:
    return sorted(d for d in os.listdir(fixtures) if os.path.exists(os.path.join(fixtures, d, "config.json")))


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def checkpoint_aliases(fixture_dir: str) -> dict:
    """How checkpoint names become tree names, for a derived case whose MaxText mapping reads the published
    checkpoint's names (`ckptmap.benchmarks.derived.checkpoint_names`); {} for a fixture."""
    path = os.path.join(fixture_dir, "hf_checkpoint_names.json")
    return _read_json(path) if os.path.exists(path) else {}


def resolve_names(value: Any, table: dict, hf_shapes: dict) -> Any:
    """A PARAM_MAPPING value with every HF name the tree lacks resolved through `table` (same structure)."""
    if isinstance(value, str):
        return resolve(value, hf_shapes, table)
    if isinstance(value, tuple):
        return tuple(resolve_names(v, table, hf_shapes) for v in value)
    if isinstance(value, list):
        return [resolve_names(v, table, hf_shapes) for v in value]
    return value


def maxtext_config(fixture_config: dict, scan: int, workdir: str):
    """A real MaxText config for the fixture's model name and overrides (MaxText's pyconfig)."""
    from maxtext.configs import pyconfig

    argv = ["", f"model_name={fixture_config['maxtext_model_name']}", *fixture_config["maxtext_overrides"],
            *CONFIG_FLAGS, f"scan_layers={'true' if scan else 'false'}", "run_name=ckptmap_ground_truth",
            f"base_output_directory={workdir}"]
    return pyconfig.initialize(argv)


def fixture_targets(fixture_dir: str, scan: int) -> dict[str, tuple[int, tuple]] | None:
    """MaxText name -> (index, shape), the form to_maxtext's loaders take, from the fixture's target tree."""
    path = os.path.join(fixture_dir, f"maxtext_params.scan{scan}.json")
    if not os.path.exists(path):
        return None
    return {n: (i, tuple(s)) for i, (n, s) in enumerate(_read_json(path).items())}


def model_targets(config) -> dict[str, tuple[int, tuple]]:
    """The same, from MaxText's own abstract model at `config`."""
    from maxtext.checkpoint_conversion.to_maxtext import get_maxtext_model_info

    abstract, _ = get_maxtext_model_info(config)
    return {n: (i, tuple(shape)) for n, (i, shape) in abstract.items()}


def tree_difference(fixture: dict, model: dict) -> str:
    """'' when both trees have the same names and shapes, else a one-line summary."""
    only_fixture = [n for n in fixture if n not in model]
    only_model = [n for n in model if n not in fixture]
    reshaped = [n for n in fixture if n in model and fixture[n][1] != model[n][1]]
    if not (only_fixture or only_model or reshaped):
        return ""
    parts = []
    if only_fixture:
        parts.append(f"{len(only_fixture)} names only in the fixture (e.g. {only_fixture[0]})")
    if only_model:
        parts.append(f"{len(only_model)} only in MaxText's model (e.g. {only_model[0]})")
    if reshaped:
        parts.append(f"{len(reshaped)} shapes differ (e.g. {reshaped[0]})")
    return "; ".join(parts)


def hook_names(hooks: Any) -> tuple[str, ...]:
    if hooks is None:
        return ()
    if not isinstance(hooks, (list, tuple)):
        hooks = [hooks]
    return tuple(getattr(h, "__name__", repr(h)) for h in hooks)


def _one_line(e: BaseException) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):  # pydantic's ValidationError: the first message says what MaxText refused
        try:
            return f"{type(e).__name__}: {errors()[0]['msg']}"[:400]
        except Exception:
            pass
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def run_conversion(gt: GroundTruth, param_map: dict, hooks: dict, abstract: dict, hf_shapes: dict, config) -> None:
    """Fill gt.tensors / gt.failed / gt.not_in_mapping with to_maxtext's eager loaders over seeded HF tensors."""
    from maxtext.checkpoint_conversion import to_maxtext
    from maxtext.checkpoint_conversion.utils.utils import validate_and_filter_param_map_keys

    gt.tensors, gt.failed = {}, {}
    gt.target_shapes = {n: list(shape) for n, (_, shape) in abstract.items()}
    covered = {n for k in param_map for n in gt_store.maxtext_names(k)}
    gt.not_in_mapping = [n for n in abstract if n not in covered]
    present_keys = [k for k in param_map if all(n in abstract for n in gt_store.maxtext_names(k))]
    keys = validate_and_filter_param_map_keys(present_keys, set(abstract) - set(gt.not_in_mapping))
    cache: dict[str, np.ndarray] = {}

    def getter(name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        resolved = to_maxtext.resolve_scale_key(name, hf_shapes)
        if resolved not in hf_shapes:
            raise KeyError(f"HF tensor {name!r} is not in the fixture's hf_params.json")
        if resolved not in cache:
            cache[resolved] = seeded_tensor(resolved, hf_shapes[resolved], gt_store.SEED, integer=True)
        return cache[resolved]

    for key in keys:
        weights: list = [None] * len(abstract)
        try:
            index, shape = to_maxtext._get_maxtext_indices_and_shapes(key, abstract)
            load_fn = to_maxtext._get_hf_loading_function(param_map[key], getter, hooks.get(key), shape, config, key)
            to_maxtext._get_maxtext_weight(load_fn, index, shape, key, weights, "float32", False)
        except Exception as e:
            for n in gt_store.maxtext_names(key):
                gt.failed[n] = _one_line(e)
            continue
        for n in gt_store.maxtext_names(key):
            gt.tensors[n] = np.asarray(weights[abstract[n][0]], dtype=np.float32)


def convert(fixture_dir: str, family: str, scan: int, workdir: str) -> GroundTruth:
    """MaxText's conversion of the seeded HF tensors for one family and scan setting.

    The targets are the fixture's tree. When MaxText's mapping leaves some of them uncovered or failing, MaxText's
    abstract model is built too: if it disagrees with the fixture and MaxText's mapping fits it better, the model's
    tree is used; either way the disagreement is recorded in `gt.target_note`.
    """
    from maxtext.checkpoint_conversion.utils.param_mapping import HOOK_FNS, PARAM_MAPPING

    fixture_config = _read_json(os.path.join(fixture_dir, "config.json"))
    hf_shapes = {n: tuple(s) for n, s in _read_json(os.path.join(fixture_dir, "hf_params.json")).items()}
    gt = GroundTruth(family=family, scan=scan, model_name=fixture_config["maxtext_model_name"], status="ok")
    try:
        config = maxtext_config(fixture_config, scan, workdir)
        model_key = config.model_name.replace("-Instruct", "")  # to_maxtext's rule for the mapping key
        hf_config = fixture_config["hf_config"]
        param_map = PARAM_MAPPING[model_key](hf_config, config, config.scan_layers)
        aliases = checkpoint_aliases(fixture_dir)
        if aliases:
            param_map = {k: resolve_names(v, aliases, hf_shapes) for k, v in param_map.items()}
        hooks = HOOK_FNS[model_key](hf_config, config, config.scan_layers, saving_to_hf=False)
        gt.entries = [MappingEntry(k, v, hook_names(hooks.get(k))) for k, v in param_map.items()]
        abstract = fixture_targets(fixture_dir, scan)
        gt.target_note = "the fixture's maxtext_params.scan%d.json" % scan
        if abstract is None:
            abstract = model_targets(config)
            gt.target_note = "MaxText's abstract model (the fixture has no tree for this scan)"
        run_conversion(gt, param_map, hooks, abstract, hf_shapes, config)
        problems = len(gt.not_in_mapping) + len(gt.failed)
        if problems and gt.target_note.startswith("the fixture"):
            model = model_targets(config)
            difference = tree_difference(abstract, model)
            if difference:
                fixture_run = (gt.tensors, gt.failed, gt.not_in_mapping, gt.target_shapes, gt.target_note)
                run_conversion(gt, param_map, hooks, model, hf_shapes, config)
                if len(gt.not_in_mapping) + len(gt.failed) < problems:
                    gt.target_note = f"MaxText's abstract model; the fixture's tree differs from it: {difference}"
                else:
                    gt.tensors, gt.failed, gt.not_in_mapping, gt.target_shapes, gt.target_note = fixture_run
                    gt.target_note += f" (MaxText's abstract model differs: {difference}; it fits the mapping no better)"
    except Exception as e:  # MaxText itself cannot map this family at this config
        gt.status, gt.reason, gt.tensors = "unavailable", _one_line(e), {}
        return gt
    if not gt.tensors:
        gt.status = "unavailable"
        gt.reason = "MaxText's mapping produced no tensor: " + (next(iter(gt.failed.values()), "") or
                                                                  "no mapping key matches the target tree")
    return gt


def scan1_recipes(scan1: GroundTruth, scan0: GroundTruth) -> dict[str, dict]:
    """scan1 tensors that are an exact stacking of scan0 tensors (found through the shared HF sources)."""
    by_source: dict[str, str] = {}
    for e in scan0.entries:
        if isinstance(e.maxtext, str) and e.maxtext in scan0.tensors:
            by_source[json.dumps(gt_store.encode_value(e.hf))] = e.maxtext

    def resolve(value: Any) -> Any:
        hit = by_source.get(json.dumps(gt_store.encode_value(value)))
        if hit is not None:
            return hit
        if isinstance(value, list) and value:
            parts = [resolve(v) for v in value]
            return None if any(p is None for p in parts) else parts
        return None

    recipes: dict[str, dict] = {}
    for e in scan1.entries:
        if not (isinstance(e.maxtext, str) and e.maxtext in scan1.tensors and isinstance(e.hf, list)):
            continue
        candidates = [e.hf]
        if e.hf and isinstance(e.hf[0], list):  # experts outer, layers inner: scan0 stores layers of experts
            candidates.append([list(col) for col in zip(*e.hf)])
        for value in candidates:
            names = resolve(value)
            if names is None or isinstance(names, str):
                continue
            recipe = gt_store.find_stacking(scan1.tensors[e.maxtext], names, scan0.tensors)
            if recipe is not None:
                recipes[e.maxtext] = recipe
                break
    return recipes


def ensure_fixtures(fixtures: str) -> None:
    if not os.path.isdir(fixtures) and os.path.isdir(SHARED_FIXTURES):
        shutil.copytree(SHARED_FIXTURES, fixtures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckptmap.benchmarks.ground_truth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=gt_store.DATA_DIR, help="output folder (ckptmap/benchmarks/data)")
    parser.add_argument("--fixtures", default=FIXTURES, help="folder of fixture families (tests/data/maxtext_tiny)")
    parser.add_argument("--families", nargs="*", help="only these families (default: all in --fixtures, and the "
                        "derived cases, `derived/<name>`, under --out)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_fixtures(args.fixtures)
    derived_root = os.path.join(args.out, "derived")
    derived_cases = [f"derived/{d}" for d in (fixture_families(derived_root) if os.path.isdir(derived_root) else [])]
    families = args.families or fixture_families(args.fixtures) + derived_cases
    index_path = os.path.join(args.out, "index.json")
    index = _read_json(index_path) if os.path.exists(index_path) else {}
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="ckptmap-gt-") as workdir:
        for family in families:
            fixture_dir = (os.path.join(args.out, family) if family.startswith("derived/")
                           else os.path.join(args.fixtures, family))
            scan0: GroundTruth | None = None
            for scan in gt_store.SCANS:
                t0 = time.time()
                gt = convert(fixture_dir, family, scan, workdir)
                derived = scan1_recipes(gt, scan0) if scan == 1 and scan0 is not None and scan0.ok and gt.ok else {}
                info = gt_store.save(gt, data_dir=args.out, derived=derived,
                                     hf_config_note=("the derived case's tiny hf_config (config.json)"
                                                     if family.startswith("derived/")
                                                     else "the fixture's tiny hf_config (config.json)"))
                index[f"{family}/scan{scan}"] = {
                    "model_name": gt.model_name, "status": gt.status, "reason": gt.reason,
                    "targets": len(gt.tensors), "failed": len(gt.failed), "not_in_mapping": len(gt.not_in_mapping),
                    "targets_from": gt.target_note, **info,
                }
                if scan == 0:
                    scan0 = gt
                line = f"{family:14s} scan{scan}: {gt.status:11s} {len(gt.tensors):4d} tensors"
                line += f" ({info['derived']} as scan0 stacks), {info['npz_bytes'] / 1024:7.1f} KiB"
                if gt.failed or gt.not_in_mapping:
                    line += f", {len(gt.failed)} failed, {len(gt.not_in_mapping)} not in mapping"
                if gt.reason:
                    line += f" -- {gt.reason}"
                print(f"{line}  [{time.time() - t0:.1f}s]", flush=True)
    write_json_atomic(index_path, dict(sorted(index.items())))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
    print(f"ground truth: {len(families)} families in {time.time() - start:.0f}s; {args.out} holds "
          f"{total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
