"""`ckptmap verify --mapping M --source SPEC --target SPEC [--device cpu|gpu|auto]`: re-check a mapping numerically.

Seeded random source weights go through the mapping; both models run on the same tokens; the command prints the
max per-token KL, top-1 agreement and per-layer errors, names the first diverging layer and its parameters, and
exits 0 on a pass, 1 on a fail (2 on bad input). `--search` also searches the value ops and writes the result.
"""

from __future__ import annotations

# lazy imports: a subcommand imports its own work when it runs, so that `ckptmap --help` and `ckptmap trees`
# start without the solver (OR-Tools), verify (torch on use) or the benchmarks.

import argparse
import sys

from ckptmap.mapping import Mapping


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("verify", help="check a mapping by random-weight forward passes (KL, per-layer errors)",
                       description="Convert seeded random SOURCE weights through MAPPING, run both models, compare "
                                   "logits (per-token KL, top-1) and per-layer activations.")
    p.add_argument("--mapping", required=True, help="mapping JSON (from `ckptmap solve`)")
    p.add_argument("--source", required=True, help="source SPEC with a runner: hf:CONFIG.json, hf:MODEL_TYPE k=v, "
                                                    "maxtext:MODEL k=v")
    p.add_argument("--target", required=True, help="target SPEC with a runner")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu",
                   help="where the models run (auto: the GPU when torch sees one)")
    p.add_argument("--reverse", action="store_true", help="check the reversed mapping (its target -> its source)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and tokens")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (>= 64 recommended: RoPE bugs)")
    p.add_argument("--threshold", type=float, default=None, help="max per-token KL to pass (default 1e-4, float32)")
    p.add_argument("--search", action="store_true", help="search value ops first (RoPE, scales, offsets, ...)")
    p.add_argument("--out", default=None, help="with --search: where to write the final mapping")
    p.add_argument("--report", default=None, help="write the report as JSON here (and a .txt table beside it)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ckptmap.verify import runners_for, search_and_verify, verify_mapping

    mapping = Mapping.load(args.mapping)
    if args.reverse:
        mapping = mapping.reversed()
    from ckptmap.frameworks import complete_pair

    source, target = complete_pair(args.source, args.target)  # e.g. keras:FAMILY sized from the hf:CONFIG source
    src, tgt = runners_for(source, target, device=args.device)
    try:
        if args.search:
            mapping, report = search_and_verify(mapping, src, tgt, seed=args.seed, seq_len=args.seq_len,
                                                kl_threshold=args.threshold)
            if args.out:
                mapping.save(args.out)
        else:
            report = verify_mapping(mapping, src, tgt, seed=args.seed, seq_len=args.seq_len,
                                    kl_threshold=args.threshold)
    finally:
        src.close()
        tgt.close()
    print(report.table(), file=sys.stdout)
    if args.report:
        report.save(args.report)
    return 0 if report.passed else 1
