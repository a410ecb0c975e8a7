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


def compare_with_reference(mapping, src_runner, tgt_runner, seed: int = 0) -> dict:
    """Tensor-by-tensor comparison of `mapping`'s conversion with MaxText's own (PARAM_MAPPING / HOOK_FNS) on the
    same seeded HF tensors: counts of equal (<= 1e-6 relative) tensors and the ones that differ, with their max
    relative difference. Acceptance data only: nothing in the search reads MaxText's tables."""
    import numpy as np

    from ckptmap.verify.evaluate import Evaluator

    ev = Evaluator(src_runner, tgt_runner, seed=seed)
    ours = ev.convert(mapping)
    hf_dict = src_runner.config.to_dict()
    try:
        theirs = tgt_runner.session.reference_convert(ev.src_params, hf_dict)
    except Exception as first:
        # MaxText's tables for a multimodal family read the text model under `model.language_model.` and its
        # config under `text_config`: offer the text-only tensors that way.
        wrapped = {("model.language_model." + n[len("model."):] if n.startswith("model.") else n): a
                   for n, a in ev.src_params.items()}
        try:
            no_vision = {"num_hidden_layers": 0, "hidden_size": 8, "intermediate_size": 8, "num_attention_heads": 1}
            theirs = tgt_runner.session.reference_convert(
                wrapped, {"text_config": hf_dict, "vision_config": no_vision, **hf_dict})
        except Exception:
            return {"error": f"{type(first).__name__}: {str(first)[:200]}"}
    import itertools

    equal, differ, relaid = 0, {}, []
    for name, ref in theirs.items():
        mine = np.asarray(ours[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if mine.shape != ref.shape:
            # The reference may return a stacked tensor with its axes in another order than the model's own
            # parameter: compare under the axis order that makes the shapes agree, and say so.
            perms = [p for p in itertools.permutations(range(ref.ndim)) if ref.transpose(p).shape == mine.shape]
            best = min(perms, key=lambda p: float(np.abs(ref.transpose(p) - mine).max()), default=None)
            if best is None:
                differ[name] = f"shape {mine.shape} vs {ref.shape}"
                continue
            ref = ref.transpose(best)
            relaid.append(name)
        rel = float(np.abs(mine - ref).max() / (np.abs(ref).max() or 1.0))
        if rel <= 1e-6:
            equal += 1
        else:
            differ[name] = rel
    return {"equal": equal, "total": len(theirs), "differ": differ, "relaid": relaid}


def run_tiny(model: str, *, scan: bool | None = None, device: str = "cpu", out_dir: str | None = None,
             seed: int = 0, reference: bool = False):
    """(final Mapping, VerifyReport, seconds) for MaxText model `model` at its tiny config. With `reference`, the
    report's notes also say how the mapping compares with MaxText's own conversion, tensor by tensor."""
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
    if reference:
        cmp = compare_with_reference(mapping, src, tgt, seed)
        if "error" in cmp:
            report.notes.append(f"MaxText's own conversion could not run here: {cmp['error']}")
        else:
            report.notes.append(f"equal to MaxText's own conversion: {cmp['equal']}/{cmp['total']} tensors"
                                + (f" ({len(cmp['relaid'])} compared after reordering the reference's axes: "
                                   f"{', '.join(cmp['relaid'])})" if cmp["relaid"] else "")
                                + "".join(f"; {n} differs ({v if isinstance(v, str) else f'{v:.1e} relative'})"
                                          for n, v in cmp["differ"].items()))
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
    p.add_argument("--reference", action="store_true", help="compare with MaxText's own conversion, tensor by tensor")
    args = p.parse_args(argv)
    from ckptmap.errors import CkptmapError

    failed = 0
    for model in args.models:
        try:
            _, report, seconds = run_tiny(model, scan=None if args.scan is None else bool(args.scan),
                                          device=args.device, out_dir=args.out, reference=args.reference)
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
        for note in report.notes:
            if note.startswith("equal to") or note.startswith("MaxText's own"):
                print(f"{'':22s} {note}", flush=True)
        if args.table or not report.passed:
            print(report.table(3), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
