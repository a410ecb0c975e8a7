"""End to end on a tiny model: derive the tiny pair, read both trees, solve, search value ops, verify.

    python -m ckptmap.verify.e2e llama3.1-8b gemma2-2b [--scan 0|1] [--device cpu|gpu] [--out DIR]

Prints one line per model (pass/fail, max KL, forwards, seconds) and, with --out, writes each final mapping and
report. The timing includes everything: config derivation, MaxText worker start, solve, search.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def run_tiny(model: str, *, scan: bool | None = None, device: str = "cpu", out_dir: str | None = None,
             seed: int = 0):
    """(final Mapping, VerifyReport, seconds) for MaxText model `model` at its tiny config."""
    from ckptmap.solver import solve
    from ckptmap.trees import read_tree
    from ckptmap.verify import runners_for, search_and_verify, tiny_specs

    t0 = time.perf_counter()
    src_spec, tgt_spec = tiny_specs(model)
    if scan is not None:
        tgt_spec += f" scan_layers={'true' if scan else 'false'}"
    src_tree, tgt_tree = read_tree(src_spec), read_tree(tgt_spec)
    solved = solve(src_tree, tgt_tree)
    src, tgt = runners_for(src_spec, tgt_spec, device=device)
    mapping, report = search_and_verify(solved, src, tgt, seed=seed)
    seconds = time.perf_counter() - t0
    report.timings["end_to_end_s"] = seconds
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        tag = f"{model}.scan{int(bool(scan))}" if scan is not None else model
        mapping.save(os.path.join(out_dir, f"{tag}.mapping.json"))
        report.save(os.path.join(out_dir, f"{tag}.verify.json"))
    tgt.close()
    return mapping, report, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ckptmap.verify.e2e")
    p.add_argument("models", nargs="+")
    p.add_argument("--scan", type=int, choices=(0, 1), default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--table", action="store_true", help="print each report's table")
    args = p.parse_args(argv)
    from ckptmap.errors import CkptmapError

    failed = 0
    for model in args.models:
        try:
            _, report, seconds = run_tiny(model, scan=None if args.scan is None else bool(args.scan),
                                          device=args.device, out_dir=args.out)
        except CkptmapError as e:
            print(f"{model:22s} ERROR {e.one_line()}", flush=True)
            failed += 1
            continue
        failed += not report.passed
        print(f"{model:22s} {'PASS' if report.passed else 'FAIL'}  max KL {report.kl_max:.2e}  "
              f"top-1 {100 * report.logits.top1_agreement if report.logits else 0:.0f}%  "
              f"{report.forwards} forwards  {seconds:.1f} s  "
              f"(MaxText start {report.timings.get('target_start_s', 0):.1f} s, search "
              f"{report.timings.get('search_s', 0):.1f} s)", flush=True)
        if args.table or not report.passed:
            print(report.table(3), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
