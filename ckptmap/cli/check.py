"""`ckptmap check --mapping M --source SRC --converted OUT [--reverse]`: the real converted weights against the real
source weights, each run by its own framework (transformers' from_pretrained, MaxText's load_params_from_path) on
the same prompts: per-token KL, top-1 agreement, max |logit diff|, the first diverging layer and the converted
tensors there that differ from the mapping applied to the source. Exit 0 on a pass, 1 on a fail, 2 on bad input.
"""

from __future__ import annotations

# lazy imports: a subcommand imports its own work when it runs, so that `ckptmap --help` and `ckptmap trees`
# start without verify (torch on use) or the MaxText worker.

import argparse
import sys

from ckptmap.mapping import Mapping


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("check", help="run the source and the converted checkpoint on real weights and compare",
                       description="Run the SOURCE checkpoint and the CONVERTED one (written by `ckptmap convert "
                                   "--mapping M`) in their own frameworks on the same prompts; compare logits (KL, "
                                   "top-1, max |diff|) and per-layer activations; name the first diverging layer and "
                                   "the converted tensors there that differ from the mapping applied to the source.")
    p.add_argument("--mapping", required=True, help="the mapping JSON the conversion used")
    p.add_argument("--source", required=True, help="the checkpoint converted from (HF model dir, Orbax dir, ...)")
    p.add_argument("--converted", required=True, help="the checkpoint `ckptmap convert` wrote")
    p.add_argument("--reverse", action="store_true", help="the conversion ran the mapping in reverse (convert "
                                                          "--reverse: MaxText -> HF for an HF -> MaxText mapping)")
    p.add_argument("--source-model", default="", help="SPEC of the model the source runs in (default: the "
                                                      "mapping's record, e.g. maxtext:MODEL k=v)")
    p.add_argument("--converted-model", default="", help="SPEC of the model the converted checkpoint runs in")
    p.add_argument("--prompts", default=None, help="token-id prompts: a JSON list of lists, or one prompt of ids "
                                                  "per line (run besides the seeded ones)")
    p.add_argument("--seeded", type=int, default=4, help="how many seeded random prompts (default 4)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per seeded prompt (default 64)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: every accelerator present (MaxText on its mesh, HF placed across GPUs), else CPU")
    p.add_argument("--threshold", type=float, default=None, help="max per-token KL to pass (default 1e-5 float32, "
                                                                 "1e-2 bfloat16)")
    p.add_argument("--hf-config", default=None, help="config.json of the HF side where its checkpoint has none "
                                                     "(default: the HF config the mapping records)")
    p.add_argument("--step", type=int, default=None, help="Orbax step to read (default: the latest)")
    p.add_argument("--report", default=None, help="write the report as JSON here")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ckptmap.verify.checkpoint_check import CheckError, check_checkpoints, paths_exist, side_spec

    if args.seeded < 0 or args.seq_len < 1 or (args.seeded == 0 and not args.prompts):
        raise CheckError("need prompts: --seeded N >= 1 with --seq-len >= 1, or --prompts FILE")
    paths_exist(args.mapping, args.source, args.converted)
    mapping = Mapping.load(args.mapping)
    source_spec, converted_spec = side_spec(mapping, "source"), side_spec(mapping, "target")
    if args.reverse:
        mapping = mapping.reversed()
        source_spec, converted_spec = converted_spec, source_spec
    hf_config = None
    if args.hf_config:
        from ckptmap.trees.jsonio import load_json_strict

        hf_config = load_json_strict(args.hf_config, CheckError)
    report = check_checkpoints(mapping, args.source, args.converted,
                               source_spec=args.source_model or source_spec,
                               converted_spec=args.converted_model or converted_spec, device=args.device,
                               prompts_file=args.prompts, n_prompts=args.seeded, seq_len=args.seq_len,
                               hf_config=hf_config, step=args.step, threshold=args.threshold)
    print(report.table(), file=sys.stdout)
    if args.report:
        report.save(args.report)
    return 0 if report.passed else 1
