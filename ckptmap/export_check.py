"""Check an exported module with MaxText's own conversion code (run in the MaxText venv, Python 3.12).

    .venv-maxtext/bin/python -m ckptmap.export_check CASE_DIR [CASE_DIR ...]

A CASE_DIR holds `module.py` (from ckptmap.export), `case.json` ({"model_name", "hf_config", "maxtext_config"
(the values MaxText's loaders read: scan_layers, param_scan_axis, ...), "target_shapes"}), `hf.npz` (HF tensors) and
`expected.npz` (the MaxText tensors `ckptmap convert` wrote). Loading runs to_maxtext's own steps over the
module's PARAM_MAPPING and HOOK_FNS: `validate_and_filter_param_map_keys`, `_get_maxtext_indices_and_shapes`,
`_get_hf_loading_function` and `_get_maxtext_weight` (eager). Saving runs to_huggingface's
`_get_model_mappings` (which promotes composite hook keys) and `process_maxtext_param` on the expected MaxText
tensors. Prints one JSON line per case: tensors compared, mismatches (name -> reason) both ways.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from types import SimpleNamespace

import numpy as np

from ckptmap.checkpoint_io import read_all


def _leaves(value):
    """Every leaf of a PARAM_MAPPING value: str or tuple of str, under any nesting of lists."""
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _compare(got: dict, want: dict) -> dict[str, str]:
    bad = {}
    for name, arr in want.items():
        if name not in got:
            bad[name] = "not produced"
            continue
        g = np.asarray(got[name])
        if g.shape != arr.shape:
            bad[name] = f"shape {g.shape}, expected {arr.shape}"
        elif g.tobytes() != np.ascontiguousarray(arr.astype(g.dtype)).tobytes():
            bad[name] = f"values differ (max |diff| {float(np.max(np.abs(g.astype(np.float64) - arr))):.3g})"
    for name in got:
        if name not in want:
            bad[name] = "produced but not expected"
    return bad


def load_with_to_maxtext(module: dict, model_name: str, hf_config: dict, config, hf: dict,
                         target_shapes: dict) -> tuple[dict, dict]:
    """(MaxText tensors, errors) from MaxText's to_maxtext loading steps over the module's mapping and hooks."""
    from maxtext.checkpoint_conversion import to_maxtext
    from maxtext.checkpoint_conversion.utils.utils import validate_and_filter_param_map_keys

    param_map = module["PARAM_MAPPING"][model_name](hf_config, config, config.scan_layers)
    hooks = module["HOOK_FNS"][model_name](hf_config, config, config.scan_layers, saving_to_hf=False)
    abstract = {n: (i, tuple(s)) for i, (n, s) in enumerate(target_shapes.items())}
    keys = validate_and_filter_param_map_keys(param_map.keys(), set(abstract))
    weights: list = [None] * len(abstract)
    errors = {}

    def getter(name):
        return hf[name]

    for key in keys:
        try:
            index, shape = to_maxtext._get_maxtext_indices_and_shapes(key, abstract)
            load_fn = to_maxtext._get_hf_loading_function(param_map[key], getter, hooks.get(key), shape, config, key)
            to_maxtext._get_maxtext_weight(load_fn, index, shape, key, weights, "float32", False)
        except Exception as e:  # report MaxText's own complaint, per key
            errors[str(key)] = f"{type(e).__name__}: {e}"[:300]
    out = {n: weights[i] for n, (i, _) in abstract.items() if weights[i] is not None}
    return out, errors


def save_with_to_huggingface(module: dict, model_name: str, hf_config: dict, config, mt: dict,
                             hf_shapes: dict) -> tuple[dict, dict]:
    """(HF tensors, errors) from to_huggingface's mapping setup and process_maxtext_param on MaxText tensors."""
    from maxtext.checkpoint_conversion import to_huggingface
    from maxtext.checkpoint_conversion.utils.utils import process_maxtext_param, validate_and_filter_param_map_keys

    param_map = module["PARAM_MAPPING"][model_name](hf_config, config, config.scan_layers)
    shape_map = {}
    for value in param_map.values():
        for leaf in _leaves(value):
            shape_map[leaf] = [hf_shapes[n] for n in leaf] if isinstance(leaf, tuple) else hf_shapes[leaf]
    registries = (to_huggingface.PARAM_MAPPING, to_huggingface.HOOK_FNS, to_huggingface.HF_SHAPE)
    saved = [r.get(model_name) for r in registries]
    to_huggingface.PARAM_MAPPING[model_name] = module["PARAM_MAPPING"][model_name]
    to_huggingface.HOOK_FNS[model_name] = module["HOOK_FNS"][model_name]
    to_huggingface.HF_SHAPE[model_name] = lambda _config: shape_map
    try:
        maps = to_huggingface._get_model_mappings(model_name, config.scan_layers, hf_config, config)
    finally:
        for registry, old in zip(registries, saved):
            if old is None:
                registry.pop(model_name, None)
            else:
                registry[model_name] = old
    keys = validate_and_filter_param_map_keys(maps["param_mapping"].keys(), set(mt))
    out, errors = {}, {}
    for key in keys:
        weight = [mt[k] for k in key] if isinstance(key, tuple) else mt[key]
        try:
            for name, arr in process_maxtext_param(key, weight, maps["param_mapping"], maps["hook_fn_mapping"],
                                                   maps["shape_mapping"], config):
                out[name] = np.asarray(arr)
        except Exception as e:
            errors[str(key)] = f"{type(e).__name__}: {e}"[:300]
    return out, errors


def check_case(case_dir: str) -> dict:
    case = json.load(open(os.path.join(case_dir, "case.json")))
    module = runpy.run_path(os.path.join(case_dir, "module.py"))
    config = SimpleNamespace(**{"weight_dtype": "float32", **case["maxtext_config"]})
    hf = read_all(os.path.join(case_dir, "hf.npz"))
    expected = read_all(os.path.join(case_dir, "expected.npz"))
    targets = {n: tuple(s) for n, s in case["target_shapes"].items()}
    loaded, load_errors = load_with_to_maxtext(module, case["model_name"], case["hf_config"], config, hf, targets)
    saved, save_errors = save_with_to_huggingface(module, case["model_name"], case["hf_config"], config, expected,
                                                   {n: a.shape for n, a in hf.items()})
    return {"case": os.path.basename(case_dir), "loaded": len(loaded), "expected": len(expected),
            "load_mismatches": _compare(loaded, expected), "load_errors": load_errors,
            "saved": len(saved), "save_mismatches": _compare(saved, hf), "save_errors": save_errors}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    dirs = sys.argv[1:] if argv is None else argv
    ok = True
    for d in dirs:
        result = check_case(d)
        ok &= not (result["load_mismatches"] or result["load_errors"] or result["save_mismatches"]
                   or result["save_errors"])
        print("CKPTMAP_EXPORT_CHECK " + json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
