"""Ground truth on the KerasHub side: KerasHub's own HF converters applied to seeded HF tensors (issue 13).

For each family a tiny HF config (`hf:MODEL_TYPE key=value ...`) is read into an HF tree (ckptmap's reader);
KerasHub's converter module for that family (`keras_hub.src.utils.transformers.convert_<family>`) turns the
config into a backbone config (`convert_backbone_config`), the backbone is built, and its `convert_weights` is
run with a loader that hands out `ckptmap.runner.seeded_tensor(name, shape, SEED, integer=True)`. Whatever
each Keras variable holds afterwards is that variable's truth; variables the converter never writes (they still
hold a NaN sentinel) are recorded as `not_in_mapping`. Which HF tensors each port reads is recorded too.

The families are the four the issue names (llama3, gemma3, qwen3, mixtral) and no others: KerasHub's other
converters are how generality is judged (see `HELD_OUT`, scored separately and never tuned on).

Scoring reuses benchmarks.scoring (`score_mapping`: exact / structural / wrong / unmapped per target).
`python -m ckptmap.benchmarks.keras_truth [--verify] [--families ...] [--held-out]` prints the table.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ckptmap.benchmarks.gt_store import SEED, GroundTruth
from ckptmap.errors import CkptmapError
from ckptmap.runner import seeded_tensor
from ckptmap.trees.model import ParamInfo, ParamTree
from ckptmap.trees import read_tree
from ckptmap.benchmarks.scoring import score_mapping
import json
import tempfile
from ckptmap import frameworks
from ckptmap.solver import solve
from ckptmap.verify import runners_for, search_and_verify

_SIZES = ("hidden_size=64 num_attention_heads=4 num_key_value_heads=2 head_dim=16 intermediate_size=128 "
          "num_hidden_layers=2 vocab_size=256 pad_token_id=0 bos_token_id=1 eos_token_id=2")


@dataclass(frozen=True)
class KerasCase:
    """One family: its HF SPEC (tiny sizes) and the KerasHub converter module that defines the truth."""

    family: str
    hf_spec: str
    converter: str  # module under keras_hub.src.utils.transformers


CASES = {
    "llama3": KerasCase("llama3", f"hf:llama {_SIZES} tie_word_embeddings=false", "convert_llama3"),
    "qwen3": KerasCase("qwen3", f"hf:qwen3 {_SIZES} tie_word_embeddings=false", "convert_qwen3"),
    "gemma3": KerasCase("gemma3", f"hf:gemma3_text {_SIZES} sliding_window=8 query_pre_attn_scalar=16",
                        "convert_gemma3"),
    "mixtral": KerasCase("mixtral", f"hf:mixtral {_SIZES} num_local_experts=4 num_experts_per_tok=2 "
                                    "tie_word_embeddings=false", "convert_mixtral"),
}
# Held out: never looked at while the solver was changed; scored at the end, reported apart.
HELD_OUT = {
    "mistral": KerasCase("mistral", f"hf:mistral {_SIZES} tie_word_embeddings=false sliding_window=null",
                         "convert_mistral"),
    "qwen3_moe": KerasCase("qwen3_moe", f"hf:qwen3_moe {_SIZES} num_experts=4 num_experts_per_tok=2 "
                                        "moe_intermediate_size=32 tie_word_embeddings=false", "convert_qwen3_moe"),
    "gpt2": KerasCase("gpt2", "hf:gpt2 n_embd=64 n_head=4 n_layer=2 vocab_size=256 n_positions=1024",
                      "convert_gpt2"),
    "bert": KerasCase("bert", "hf:bert hidden_size=64 num_attention_heads=4 num_hidden_layers=2 "
                              "intermediate_size=128 vocab_size=256 max_position_embeddings=1024 type_vocab_size=2",
                      "convert_bert"),
}


def _keras_env() -> None:
    """Keras on JAX, offline. OR-Tools is imported before KerasHub: CP-SAT crashes (SIGSEGV in solve) in a
    process that imported KerasHub's protobuf-using dependencies first."""
    from ortools.sat.python import cp_model  # noqa: F401  (import order only)

    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class SeededLoader:
    """What KerasHub's converters call on a safetensors loader (`port_weight`, `get_tensor`), answered with
    seeded integer tensors of the HF tree's shapes. Records which HF keys each ported variable read."""

    def __init__(self, hf_shapes: dict[str, tuple[int, ...]]):
        self.hf_shapes = hf_shapes
        self.sources: dict[int, list[str]] = {}  # id(keras variable) -> HF keys
        self.read: list[str] = []
        self.prefix: str | None = None
        self.missing: list[str] = []

    def full_key(self, key: str) -> str:
        """KerasHub's loaders accept a key without the checkpoint's common prefix (`embed_tokens.weight` for
        `model.embed_tokens.weight`): the first stored name ending in it, its prefix kept for later keys."""
        if key in self.hf_shapes:
            return key
        if self.prefix is not None and self.prefix + key in self.hf_shapes:
            return self.prefix + key
        for name in self.hf_shapes:
            if name.endswith(key):
                self.prefix = name[:-len(key)]
                return name
        raise KeyError(f"the HF tree has no tensor {key!r}")

    def get_tensor(self, key: str) -> np.ndarray:
        key = self.full_key(key)
        self.read.append(key)
        return seeded_tensor(key, tuple(self.hf_shapes[key]), SEED, integer=True)

    def port_weight(self, keras_variable, hf_weight_key: str, hook_fn=None) -> None:
        """A key the HF model does not hold (BERT's pooler beside a masked-LM head) is recorded in `missing` and
        its variable left unwritten, so it counts as having no truth rather than failing the family."""
        try:
            tensor = self.get_tensor(hf_weight_key)
        except KeyError:
            self.missing.append(hf_weight_key)
            return
        hf_weight_key = self.read[-1]
        if hook_fn is not None:
            tensor = hook_fn(tensor, list(keras_variable.shape))
        keras_variable.assign(np.asarray(tensor))
        self.sources.setdefault(id(keras_variable), []).append(hf_weight_key)


@dataclass
class KerasTruth:
    """A family's HF tree, Keras tree (ParamTree of the backbone's variables) and ground truth."""

    case: KerasCase
    hf_tree: object
    keras_tree: object
    truth: GroundTruth
    backbone_config: dict = field(default_factory=dict)
    hf_config: dict = field(default_factory=dict)  # what the converter was given


def keras_param_tree(backbone, origin: str):
    """ParamTree of a Keras model's variables, named by `variable.path` (`transformer_layer_0/self_attention/
    query/kernel`), shapes as built."""

    items = [ParamInfo(v.path, tuple(int(d) for d in v.shape), str(v.dtype)) for v in backbone.weights]
    return ParamTree.from_items(items, origin=origin, framework="keras")


def hf_config_dict(hf_tree) -> dict:
    """The HF config the tree was read from, as JSON data (ckptmap.trees.hf stores it in meta)."""
    for value in hf_tree.meta.values():
        if isinstance(value, dict) and isinstance(value.get("config"), dict):
            return dict(value["config"])
    raise CkptmapError("the HF tree carries no config", file=hf_tree.origin)


def build_truth(case: KerasCase) -> KerasTruth:
    """Run KerasHub's converter for `case` on seeded HF tensors; see the module docstring."""
    _keras_env()

    hf_tree = read_tree(case.hf_spec)
    config = hf_config_dict(hf_tree)
    # transformers 5 spells Qwen-MoE's expert count num_local_experts; KerasHub's converters read num_experts
    if "num_local_experts" in config:
        config.setdefault("num_experts", config["num_local_experts"])
    module = importlib.import_module(f"keras_hub.src.utils.transformers.{case.converter}")
    backbone_config = module.convert_backbone_config(config)
    backbone = module.backbone_cls(**backbone_config)
    for v in backbone.weights:
        v.assign(np.full(tuple(v.shape), np.nan, dtype=np.float32).astype(str(v.dtype)))
    hf_shapes = {p.name: tuple(p.shape) for p in hf_tree}
    loader = SeededLoader(hf_shapes)
    module.convert_weights(backbone, loader, config)
    keras_tree = keras_param_tree(backbone, origin=f"keras:{case.converter}")
    gt = GroundTruth(family=case.family, scan=0, model_name=module.backbone_cls.__name__, status="ok",
                     target_shapes={p.name: list(p.shape) for p in keras_tree})
    for v in backbone.weights:
        value = np.asarray(v.numpy(), dtype=np.float32)
        if np.isnan(value).any():
            gt.not_in_mapping.append(v.path)
            continue
        gt.tensors[v.path] = value
    gt_sources = {v.path: loader.sources[id(v)] for v in backbone.weights if id(v) in loader.sources}
    gt.entries = []
    gt.sources_by_target = lambda: gt_sources  # the ports' HF keys; stacked expert banks are not ports
    return KerasTruth(case, hf_tree, keras_tree, gt, backbone_config, config)


def score(kt: KerasTruth, mapping, method: str = "ckptmap"):

    hf_shapes = {p.name: tuple(p.shape) for p in kt.hf_tree}
    return score_mapping(mapping, kt.truth, hf_shapes, method=method)


def keras_spec(kt: KerasTruth) -> str:
    """The `keras:` SPEC of the same model (ckptmap.frameworks.kerashub): the HF config written to a temporary
    folder, which the adapter turns into sizes through the same KerasHub converter."""

    folder = tempfile.mkdtemp(prefix=f"ckptmap-keras-{kt.case.family}-")
    path = os.path.join(folder, "config.json")
    with open(path, "w") as f:
        json.dump(kt.hf_config or hf_config_dict(kt.hf_tree), f)
    return f"keras:{path}"


def target_tree(kt: KerasTruth):
    """The Keras tree the solver sees: the `keras:` adapter's reader when it is registered (the production path),
    else the tree of the backbone the truth was built on. Every truth variable must be in it."""

    if frameworks.for_prefix("keras") is None:
        return kt.keras_tree
    tree = read_tree(keras_spec(kt))
    missing = [n for n in kt.truth.target_shapes if n not in tree]
    if missing:
        raise CkptmapError(f"the keras: reader's tree lacks {len(missing)} variables the converter writes "
                           f"(e.g. {missing[0]})", file=tree.origin)
    return tree


def solve_trees(kt: KerasTruth):

    return solve(kt.hf_tree, target_tree(kt))


def run_case(case: KerasCase, *, verify: bool = False) -> dict:
    """Trees-only (and with `verify`, verify-searched) scores of one family, with the wrong targets named."""
    t0 = time.perf_counter()
    kt = build_truth(case)
    result = solve_trees(kt)
    trees = score(kt, result.mapping)
    row = {"family": case.family, "targets": trees.scored, "trees_structural": round(trees.pct_structural, 1),
           "trees_exact": round(trees.pct_exact, 1), "solve_s": round(result.seconds, 2),
           "not_in_keras_conversion": len(kt.truth.not_in_mapping),
           "misses": [f"{t.name}: {t.verdict} {t.detail}".strip() for t in trees.targets
                      if t.verdict in ("wrong", "unmapped")]}
    if verify:
        row.update(_verify_row(case, kt, result))
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _verify_row(case: KerasCase, kt: KerasTruth, result) -> dict:
    """solve --verify's search between the HF runner and the KerasHub runner (ckptmap.frameworks.kerashub)."""

    if frameworks.for_prefix("keras") is None:
        return {"verify": "no keras adapter registered"}
    src, tgt = runners_for(case.hf_spec, keras_spec(kt), "cpu")
    try:
        mapping, report = search_and_verify(result, src, tgt)
    finally:
        for runner in (src, tgt):
            close = getattr(runner, "close", None)
            if close:
                close()
    verified = score(kt, mapping, method="ckptmap+verify")
    return {"verify_passed": bool(report.passed), "verify_kl": float(report.kl_max),
            "verify_structural": round(verified.pct_structural, 1), "verify_exact": round(verified.pct_exact, 1)}


def table(rows: list[dict]) -> str:
    head = "| family | targets | trees-only structural | trees-only exact | verify structural | verify KL | misses |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = (f"{r['verify_structural']}% ({'pass' if r['verify_passed'] else 'FAIL'})" if "verify_structural" in r
              else r.get("verify", "-"))
        kl = f"{r['verify_kl']:.2g}" if "verify_kl" in r else "-"
        lines.append(f"| {r['family']} | {r['targets']} | {r['trees_structural']}% | {r['trees_exact']}% | {vs} | "
                     f"{kl} | {len(r['misses'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", choices=sorted(CASES) + sorted(HELD_OUT), help="default: all four")
    p.add_argument("--held-out", action="store_true", help="score the held-out families instead (report apart)")
    p.add_argument("--verify", action="store_true", help="also run solve --verify's search (needs keras adapter)")
    args = p.parse_args(argv)
    every = {**CASES, **HELD_OUT}
    cases = list(HELD_OUT.values()) if args.held_out else [every[f] for f in (args.families or CASES)]
    rows = []
    for case in cases:
        try:
            row = run_case(case, verify=args.verify)
        except Exception as e:  # one family's failure is reported, not fatal to the table
            row = {"family": case.family, "targets": 0, "trees_structural": 0.0, "trees_exact": 0.0,
                   "misses": [f"failed: {type(e).__name__}: {str(e)[:300]}"]}
        rows.append(row)
        print(f"{row['family']:10s} trees-only {row['trees_structural']:5.1f}% structural "
              f"({row['trees_exact']:5.1f}% exact) of {row['targets']}", flush=True)
        for miss in row["misses"]:
            print(f"    {miss}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
