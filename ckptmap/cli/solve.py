"""`ckptmap solve`: find a mapping from two trees, optionally verify it, write JSON and a MaxText module."""

from __future__ import annotations

# lazy imports: a subcommand imports its own work when it runs, so that `ckptmap --help` and `ckptmap trees`
# start without the solver (OR-Tools), verify (torch on use) or the benchmarks.

import json
import os
import re
import sys

from ckptmap.errors import CkptmapError
from ckptmap.mapping import Mapping, Rule, write_text_atomic


def add_parser(sub) -> None:
    p = sub.add_parser("solve", help="find the mapping between two parameter trees",
                       description="Find, for every target parameter, its source tensor(s) and transforms.")
    p.add_argument("model", nargs="?",
                   help="a MaxText model name (llama3.1-8b): solve its real HF config against the real MaxText model; "
                        "with --tiny, the tiny pair (bundled trees, or tiny configs derived from the real ones)")
    p.add_argument("--source", help="source tree SPEC (x.json, hf:CONFIG.json, hf:MODEL_TYPE k=v, ckpt, ...)")
    p.add_argument("--target", help="target tree SPEC (x.json, maxtext:MODEL k=v, orbax:DIR, ...)")
    p.add_argument("--tiny", action="store_true", help="solve the bundled tiny pair of MODEL (HF -> MaxText)")
    p.add_argument("--scan", dest="scan", action="store_true", default=True,
                   help="with --tiny: scanned MaxText layers (default)")
    p.add_argument("--no-scan", dest="scan", action="store_false", help="with --tiny: unscanned MaxText layers")
    p.add_argument("--out", help="write the mapping JSON here")
    p.add_argument("--export", help="write a Python module in MaxText's PARAM_MAPPING/HOOK_FNS form here")
    p.add_argument("--explain", metavar="TARGET", help="print the top candidates for TARGET with score parts")
    p.add_argument("--alternatives", type=int, default=3, help="alternatives kept per rule (default 3)")
    p.add_argument("--allow-partial", action="store_true",
                   help="write the mapping even when some targets are unmapped (they are listed in it)")
    p.add_argument("--verify", action="store_true", help="verify numerically with random-weight forward passes")
    p.add_argument("--allow-unverified", action="store_true",
                   help="with --verify: write the mapping even when verification fails (recorded as failed in it)")
    p.add_argument("--device", choices=["cpu", "gpu", "auto"], default="auto")
    p.add_argument("--report", help="with --verify: write the verification report JSON here")
    p.add_argument("--quiet", action="store_true", help="print the summary only: no mapping, no progress lines")
    p.add_argument("--code", choices=["auto", "off"], default="auto",
                   help="read how each model's code cuts fused tensors (gate/up interleaved or not, per-head "
                        "groups) by tracing its forward pass: from hf: configs and maxtext: models, stored for the "
                        "bundled tiny trees (default auto; off: trees alone)")
    from ckptmap.llm_hints.cli_args import add_hint_arguments

    add_hint_arguments(p)
    p.set_defaults(func=run)


def _tree_specs(args) -> tuple[str, str, object]:
    """--tiny without --verify reads the bundled tiny trees (no MaxText needed); with --verify, or for a model
    that is not bundled, both tiny configs are derived from the real ones and read as hf: / maxtext: specs."""
    if args.tiny:
        if not args.model:
            raise CkptmapError("--tiny needs a MODEL (e.g. llama3.1-8b)")
        from ckptmap import bundled

        try:
            b = bundled.find(args.model)
        except CkptmapError:
            b = None
        if b is not None and not args.verify:
            return b.hf_tree_path(), b.maxtext_tree_path(args.scan), b
        from ckptmap.verify import tiny_specs

        name = b.maxtext_model_name if b is not None else args.model
        src_spec, tgt_spec = tiny_specs(name)
        return src_spec, f"{tgt_spec} scan_layers={'true' if args.scan else 'false'}", None
    if args.model and not (args.source or args.target):
        if args.verify:
            raise CkptmapError("--verify runs both models: with a MODEL name it needs --tiny (a full-size model does "
                               "not fit a verification run); give --source/--target specs to verify other sizes")
        return _real_specs(args.model, args.scan) + (None,)
    if not args.source or not args.target:
        raise CkptmapError("give --source and --target, or a MODEL (with --tiny for the tiny pair)")
    return args.source, args.target, None


def _real_specs(model: str, scan: bool) -> tuple[str, str]:
    """The full-size pair of a MaxText model: the HF config MaxText's conversion pairs with it, or for a model that
    ships only a yml (llama4) one derived from it (read on the meta device, no weights), and the real MaxText model
    (`jax.eval_shape` in the worker)."""
    from ckptmap.atomic import write_json_atomic
    from ckptmap.verify.tiny import real_or_derived_configs

    real = real_or_derived_configs(model)
    model = real.get("model_name", model)  # a family name (qwen3.5) resolves to MaxText's model name
    from ckptmap.atomic import cache_dir

    path = cache_dir("real", f"{model}.config.json")
    write_json_atomic(path, real["hf"])
    return f"hf:{path}", f"maxtext:{model} scan_layers={'true' if scan else 'false'}"


def _hf_config(spec: str, tree, bundled_model) -> dict | None:
    """The HF config dict behind the source, when there is one: the exported module spells loop lengths with it."""
    if bundled_model is not None:
        return bundled_model.config.get("hf_config")
    path = spec[3:].split()[0] if spec.startswith("hf:") else tree.meta.get("dims_from")
    if not path or not str(path).endswith(".json"):
        return (tree.meta.get("hf") or {}).get("config")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    return cfg.get("hf_config", cfg) if isinstance(cfg, dict) else None


def attach_code_layouts(args, *sides, bundled_model=None) -> list[str]:
    """Put the fused-axis layouts read off each model's code into its tree (ckptmap.code_reading); one note per
    side saying how many were found, or why none could be read. The solve goes on without them."""
    if getattr(args, "code", "auto") == "off":
        return ["off: fused tensors are laid out from the trees alone"]
    from ckptmap import code_reading
    from ckptmap.trees.code_layouts import META_KEY, attach

    stored = code_reading.load(bundled_model.family) if bundled_model is not None else None
    notes: list[str] = []
    for (spec, tree), side in zip(sides, ("hf", f"scan{int(getattr(args, 'scan', True))}")):
        if META_KEY in tree.meta:
            notes.append(f"{spec}: {len(tree.meta[META_KEY])} layouts from {tree.meta.get('code_layouts_from')}")
            continue
        try:
            if stored is not None:
                found = stored.get(side, {})
                code_reading.attach_stored(tree, bundled_model.family, stored, side)
            else:
                found = code_reading.layouts_for_spec(spec, tree, notes)
                attach(tree, found, source="traced")
        except CkptmapError as e:
            notes.append(f"{spec}: no code layouts ({e.one_line()})")
            continue
        notes.append(f"{spec}: {len(found)} fused-axis layouts read off the code")
    return notes


def _span(slot, rule: Rule) -> str:
    """A slot's names over the whole grid in one line: `model.layers.{0..31}.mlp.up_proj.weight`."""
    first = slot.name_at(tuple(0 for _ in rule.grid))
    last = slot.name_at(tuple(n - 1 for n in rule.grid))
    if first == last:
        return first
    a, b = re.split(r"(\d+)", first), re.split(r"(\d+)", last)
    if len(a) != len(b):
        return f"{first} .. {last}"
    return "".join(x if x == y else f"{{{x}..{y}}}" for x, y in zip(a, b))


def _short(rule: Rule) -> str:
    tg = ", ".join(_span(s, rule) + (f" (stacked at {list(s.axes)})" if s.axes else "") for s in rule.targets)
    sr = ", ".join(_span(s, rule) for s in rule.sources[:3]) + (
        f" ... ({len(rule.sources)} tensors per cell)" if len(rule.sources) > 3 else "")
    grid = f" grid={list(rule.grid)}" if rule.grid else ""
    return f"{tg}  <-  {sr}{grid}\n      chain: {rule.chain.describe()}"


def print_mapping(mapping: Mapping, out=sys.stdout) -> None:
    for r in mapping.rules:
        print("  " + _short(r), file=out)


def run(args) -> int:
    from ckptmap.solver import solve
    from ckptmap.trees import read_tree

    say = _progress(args)
    src_spec, tgt_spec, bundled_model = _tree_specs(args)
    if bundled_model is None:
        from ckptmap.frameworks import complete_pair

        src_spec, tgt_spec = complete_pair(src_spec, tgt_spec)  # e.g. keras:FAMILY sized from the hf:CONFIG source
    say(f"reading the source tree {src_spec}")
    src = read_tree(src_spec)
    say(f"reading the target tree {tgt_spec}")
    tgt = read_tree(tgt_spec)
    say("reading the fused-axis layouts off the models' code")
    code_notes = attach_code_layouts(args, (src_spec, src), (tgt_spec, tgt), bundled_model=bundled_model)
    from ckptmap.llm_hints.cli_args import describe, priors_from_args

    priors = priors_from_args(args, src, tgt)
    say(f"solving {len(tgt)} targets from {len(src)} sources")
    result = solve(src, tgt, priors=priors, k_alternatives=args.alternatives)

    if args.explain:
        rows = result.explain(args.explain)
        if not rows:
            raise CkptmapError("no candidate covers this target", key=args.explain)
        for r in rows:
            mark = "*" if r["chosen"] else " "
            print(f"{mark} {r['score']:7.3f}  {' + '.join(r['sources'])} -> {' + '.join(r['targets'])}"
                  f"  [{r['chain']}]  {json.dumps(r['parts'])}")
        return 0

    mapping = result.mapping
    if not args.quiet:
        print(f"mapping {src_spec} -> {tgt_spec}")
        print_mapping(mapping)
    print(result.report())
    for note in code_notes:
        print(f"  code: {note}")
    if not priors.is_empty:
        print(describe(priors))

    report = None
    if args.verify:
        say("verifying with random-weight forward passes of both models")
        mapping, report = _verify(args, result, (src_spec, src), (tgt_spec, tgt), priors)

    if mapping.unmapped_targets and not args.allow_partial:
        print(f"ckptmap solve: {len(mapping.unmapped_targets)} target parameters could not be mapped; "
              "no mapping written (use --allow-partial to write it anyway)", file=sys.stderr)
        return 1
    if report is not None and not report.passed and not args.allow_unverified:
        print(f"ckptmap solve: verification failed (max KL {report.kl_max:.3g} > {report.kl_threshold:g}); no "
              "mapping written (use --allow-unverified to write it, recorded as failed)", file=sys.stderr)
        return 1
    _record(mapping, src_spec, tgt_spec, src, tgt, bundled_model, report)
    if args.out:
        mapping.save(args.out)
        print(f"wrote {args.out}")
    if args.export:
        from ckptmap.export import export_maxtext_module

        name = bundled_model.maxtext_model_name if bundled_model else (tgt_spec.split(":", 1)[-1].split()[0])
        mappings, shapes = [mapping], tgt.shapes()
        if bundled_model is not None and os.path.exists(bundled_model.maxtext_tree_path(not args.scan)):
            # Export both scan settings, as MaxText's own modules do.
            other = read_tree(bundled_model.maxtext_tree_path(not args.scan))
            mappings.append(solve(src, other, priors=priors, k_alternatives=0).mapping)
            shapes = {**shapes, **other.shapes()}
        export_maxtext_module(mappings, args.export, name, hf_config=_hf_config(src_spec, src, bundled_model),
                              target_shapes=shapes)
        print(f"wrote {args.export}")
    if report is not None and not report.passed:
        return 1
    return 0


def _progress(args):
    """A function printing one progress line to stderr per long phase (nothing with --quiet)."""
    import time

    start = time.perf_counter()

    def say(text: str) -> None:
        if not getattr(args, "quiet", False):
            print(f"[{time.perf_counter() - start:6.1f}s] {text}", file=sys.stderr, flush=True)

    return say


def _record(mapping, src_spec: str, tgt_spec: str, src, tgt, bundled_model, report) -> None:
    """What the mapping keeps about itself (ckptmap.mapping_record): trees, HF config, verification, seal."""
    from ckptmap import mapping_record

    mapping_record.record_trees(mapping, src, tgt)
    models = {side: t.meta["model"] for side, t in (("source", src), ("target", tgt)) if t.meta.get("model")}
    if models:  # what each side's framework needs to build its model again (a keras: convert output)
        mapping.meta["models"] = models
    hf_src = _hf_config(src_spec, src, bundled_model)
    if hf_src is not None:
        mapping_record.record_hf_config(mapping, hf_src, "source")
    elif tgt_spec.startswith("hf:"):
        mapping_record.record_hf_config(mapping, _hf_config(tgt_spec, tgt, None), "target")
    if report is not None:
        mapping_record.record_verification(mapping, report, source=src_spec, target=tgt_spec,
                                           configs={"source": src_spec, "target": tgt_spec})
    mapping_record.seal(mapping)


def _verify(args, result, src_side: tuple, tgt_side: tuple, priors):
    """Verify `result` with one runner per (SPEC, tree) side, each in the layout of the tree the solve read
    (`verify.runner_covering`: the tensors the mapping reads or writes, with that tree's shapes)."""
    from ckptmap import verify

    runners = []
    try:
        for (spec, tree), names in ((src_side, result.mapping.source_names()),
                                    (tgt_side, result.mapping.target_names())):
            shapes = tree.shapes()
            needed = {n: tuple(shapes[n]) for n in names if n in shapes}
            runners.append(verify.runner_covering(spec, args.device, needed))
    except Exception:
        for r in runners:
            r.close()
        raise
    src_runner, tgt_runner = runners
    try:
        mapping, report = verify.search_and_verify(result, src_runner, tgt_runner, priors=priors)
    finally:
        for r in (src_runner, tgt_runner):
            r.close()
    print(report.table())
    if args.report:
        write_text_atomic(args.report, json.dumps(report.to_json(), indent=1) + "\n")
    return mapping, report
