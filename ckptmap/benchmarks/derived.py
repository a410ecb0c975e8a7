"""Derived benchmark cases: a model that is in no fixture, as a fixture-like folder built from its real configs.

    python -m ckptmap.benchmarks.derived deepseek4-284b --name deepseek4

derives the tiny pair from the real configs (`ckptmap.verify.tiny.derive_tiny`), reads both tiny models with
ckptmap's own tree readers (`hf:` on the meta device, `maxtext:` through the MaxText worker, scan 0 and 1) and
writes `ckptmap/benchmarks/data/derived/<name>/` with the files a fixture family has:

- `config.json`: `hf_config`, `maxtext_model_name`, `maxtext_overrides`, `maxtext_config_values` (scan0/scan1);
- `real_configs.json`: the real configs the tiny pair was derived from (`ckptmap.verify.real_configs`);
- `hf_params.json`, `maxtext_params.scan0.json`, `maxtext_params.scan1.json`: name -> shape;
- `hf_checkpoint_names.json`: how a name of the model's published checkpoint (what MaxText's conversion reads)
  becomes the tree's name where they differ (`checkpoint_names`): a checkpoint of the base model lacks the
  base-model prefix (`layers.0.attn.wq_a.weight` for `model.layers.0.attn.wq_a.weight`), a rename anchored at the
  start of the name (`^embed.weight`) only applies to the unprefixed name, and saving does not always invert
  loading's renames.

MaxText's ground truth for the folder is then made like a fixture's (`ckptmap.benchmarks.ground_truth --derived`,
in the MaxText venv); its files sit in the same folder, as family `derived/<name>`. The benchmark suite includes
derived cases when their ground truth is there (`ckptmap.benchmarks.cases.derived_families`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

from ckptmap.mapping import write_json_atomic
from ckptmap.trees import read_tree
from ckptmap.trees.hf import _saved_name, build_meta_model
from ckptmap.trees.hf_config import build_config, load_config_dict, reconcile
from ckptmap.verify.real_configs import real_configs
from ckptmap.verify.specs import tiny_specs
from ckptmap.verify.tiny import derive_tiny

DERIVED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "derived")
ALIASES = "hf_checkpoint_names.json"
REAL_CONFIGS = "real_configs.json"  # the real configs the tiny pair was derived from (provenance; tests re-derive)
# The config values a fixture records per scan (tests/data/maxtext_tiny/*/config.json).
FIXTURE_CONFIG_KEYS = ("emb_dim", "num_query_heads", "num_kv_heads", "head_dim", "mlp_dim", "moe_mlp_dim",
                       "num_decoder_layers", "vocab_size", "num_experts", "param_scan_axis", "scan_layers",
                       "inhomogeneous_layer_cycle_interval", "share_kv_projections", "v_norm_with_scale",
                       "use_multimodal", "logits_via_embedding", "decoder_block")


def checkpoint_names(config_path: str, tree_names: list[str]) -> dict:
    """How the published checkpoint's names (what MaxText's conversion reads) become this tree's names, as data a
    process without transformers can apply (`resolve`): transformers' renames of the model type (regex pairs,
    applied in turn as its loader does), the base-model prefix its loader adds, then the memory name -> saved name
    table of the tree (transformers' reverse renaming when it saves). Saving does not always give the checkpoint's
    name back (`attn.kv_norm` loads as `self_attn.kv_norm` and saves as `attn.norm`), hence the forward route."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    names = set(tree_names)
    cfg, _ = reconcile(load_config_dict(config_path))
    model = build_meta_model(build_config(cfg, config_path), config_path)
    renames = []
    for transform in get_checkpoint_conversion_mapping(cfg.get("model_type")) or []:
        if isinstance(transform, WeightRenaming) and type(transform) is WeightRenaming:
            if len(transform.target_patterns) == 1:
                renames.append([transform.source_patterns, transform.target_patterns[0]])
    memory_to_saved = {}
    for mem_name, tensor in model.state_dict().items():
        saved = _saved_name(model, mem_name, tensor)
        if saved in names and saved != mem_name:
            memory_to_saved[mem_name] = saved
    return {"format": "ckptmap.checkpoint_names", "base_model_prefix": getattr(model, "base_model_prefix", "") or "",
            "renames": renames, "memory_to_saved": dict(sorted(memory_to_saved.items()))}


def resolve(name: str, names: dict | set, table: dict) -> str:
    """A checkpoint name -> the tree's name (`checkpoint_names`'s table); `name` itself when nothing fits."""
    if name in names or not table:
        return name
    renamed = name
    for sources, target in table.get("renames", []):
        for pattern in sources:
            match = re.search(pattern, renamed)
            if match:
                renamed = renamed.replace(match.group(0), target.replace("\\", ""), 1)
                break
    prefix = table.get("base_model_prefix", "")
    for candidate in (renamed, f"{prefix}.{renamed}" if prefix else renamed, f"{prefix}.{name}" if prefix else name):
        candidate = table.get("memory_to_saved", {}).get(candidate, candidate)
        if candidate in names:
            return candidate
    return name


def build(maxtext_model: str, name: str, out_dir: str = DERIVED_DIR) -> str:
    """Write the derived case folder; returns its path."""
    real = real_configs(maxtext_model)
    pair = derive_tiny(maxtext_model, real)
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    write_json_atomic(os.path.join(folder, REAL_CONFIGS), real)
    with tempfile.TemporaryDirectory(prefix="ckptmap-derived-") as tmp:
        src_spec, tgt_spec = tiny_specs(pair.maxtext_model, directory=tmp)
        hf_tree = read_tree(src_spec)
        hf_shapes = {n: list(s) for n, s in hf_tree.shapes().items()}
        table = checkpoint_names(src_spec[len("hf:"):], list(hf_shapes))
    values = {}
    for scan in (0, 1):
        tree = read_tree(f"{tgt_spec} scan_layers={'true' if scan else 'false'}")
        write_json_atomic(os.path.join(folder, f"maxtext_params.scan{scan}.json"),
                          {n: list(s) for n, s in tree.shapes().items()})
        config = tree.meta.get("config", {})
        values[f"scan{scan}"] = {k: config[k] for k in FIXTURE_CONFIG_KEYS if k in config}
        print(f"maxtext scan{scan}: {len(tree)} tensors", flush=True)
    write_json_atomic(os.path.join(folder, "hf_params.json"), hf_shapes)
    write_json_atomic(os.path.join(folder, ALIASES), table)
    write_json_atomic(os.path.join(folder, "config.json"), {
        "maxtext_model_name": pair.maxtext_model, "maxtext_overrides": list(pair.maxtext_overrides),
        "maxtext_config_values": values, "hf_config": pair.hf_config,
        "derived_from": f"ckptmap.verify.tiny.derive_tiny({maxtext_model!r}): " + "; ".join(pair.notes),
    })
    print(f"hf: {len(hf_shapes)} tensors, {len(table['renames'])} checkpoint renames; wrote {folder}")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckptmap.benchmarks.derived", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="MaxText model name (deepseek4-284b)")
    parser.add_argument("--name", help="case name (default: the model name)")
    parser.add_argument("--out", default=DERIVED_DIR)
    args = parser.parse_args(argv)
    build(args.model, args.name or args.model, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
