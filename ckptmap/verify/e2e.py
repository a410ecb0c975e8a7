"""End to end on a tiny model: derive the tiny pair, read both trees, solve, search value ops, verify.

    python -m ckptmap.verify.e2e llama3.1-8b gemma2-2b [--scan 0|1] [--device cpu|gpu] [--out DIR]

Prints one line per model (pass/fail, max KL, forwards, seconds) and, with --out, writes each final mapping and
report. The timing includes everything: config derivation, MaxText worker start, solve, search.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np

from ckptmap.errors import CkptmapError
from ckptmap.solver import solve
from ckptmap.trees import read_tree
from ckptmap.verify import runners_for, search_and_verify, tiny_specs
from ckptmap.verify.evaluate import Evaluator, uncast_logits
from ckptmap.verify.metrics import compare_logits
from ckptmap.verify.weights import random_params


def _tail(message: str, n: int = 240) -> str:
    """The end of an error message (MaxText's errors start with the whole model spec)."""
    message = " ".join(message.split())
    return message if len(message) <= n else "..." + message[-n:]


def _reference_tensors(src_runner, tgt_runner, src_params: dict) -> dict:
    """MaxText's own conversion (its PARAM_MAPPING / HOOK_FNS, in the worker) of the HF tensors `src_params`.
    MaxText's tables may read either the checkpoint names or the torch modules' own (fused experts): both are
    offered, the same weights."""
    hf_dict = src_runner.config.to_dict()
    if hasattr(src_runner, "module_params"):
        src_params = {**src_runner.module_params(src_params), **src_params}
    try:
        return tgt_runner.session.reference_convert(src_params, hf_dict)
    except Exception as first:
        # MaxText's tables for a multimodal family read the text model under `model.language_model.` and its
        # config under `text_config`: offer the text-only tensors that way.
        if "text_config" in hf_dict:
            raise
        wrapped = {("model.language_model." + n[len("model."):] if n.startswith("model.") else n): a
                   for n, a in src_params.items()}
        no_vision = {"num_hidden_layers": 0, "hidden_size": 8, "intermediate_size": 8, "num_attention_heads": 1}
        try:
            return tgt_runner.session.reference_convert(
                wrapped, {"text_config": hf_dict, "vision_config": no_vision, **hf_dict})
        except Exception:
            raise first from None


def compare_with_reference(mapping, src_runner, tgt_runner, seed: int = 0,
                           extra_sources: dict[str, tuple[int, ...]] | None = None) -> dict:
    """MaxText's own conversion (PARAM_MAPPING / HOOK_FNS) of the same seeded HF tensors verify uses, against
    `mapping`'s (None: no mapping to compare) and through the target model.

    Returns counts of equal (<= 1e-6 relative) tensors and the ones that differ, with their max relative
    difference (`equal`, `total`, `differ`, `relaid`; only with a mapping), and the forward pass of the target
    model on MaxText's own tensors against the source model's (`kl_max`, `kl_mean`, `top1`, `max_abs_diff`), or
    `forward_error` saying why it could not run; `error` when MaxText's conversion itself fails. Acceptance data
    only: nothing in the search reads MaxText's tables.
    `extra_sources`: name -> shape of HF tensors the source model verify runs does not hold but MaxText's tables
    read (a vision tower beside a text-only runner): they get seeded random values, which only feed targets the
    text forward does not read."""
    ev = Evaluator(src_runner, tgt_runner, seed=seed)
    src_params = ev.src_params
    if extra_sources:
        extra = {n: s for n, s in extra_sources.items() if n not in src_params}
        src_params = {**random_params(extra, seed), **src_params}
    try:
        theirs = _reference_tensors(src_runner, tgt_runner, src_params)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {_tail(str(e))}"}
    ours = ev.convert(mapping) if mapping is not None else None
    target_shapes = ev.target_shapes
    out: dict = {}
    equal, differ, relaid = 0, {}, []
    aligned: dict[str, np.ndarray] = {}  # the reference's tensors in the target model's own axis order
    for name, ref in theirs.items():
        ref = np.asarray(ref, dtype=np.float64)
        want = tuple(ours[name].shape) if ours is not None and name in ours else tuple(target_shapes.get(name, ()))
        if want and ref.shape != want:
            # The reference may return a stacked tensor with its axes in another order than the model's own
            # parameter: compare under the axis order that makes the shapes agree, and say so.
            perms = [p for p in itertools.permutations(range(ref.ndim)) if ref.transpose(p).shape == want]
            if ours is not None and name in ours:
                mine = np.asarray(ours[name], dtype=np.float64)
                best = min(perms, key=lambda p: float(np.abs(ref.transpose(p) - mine).max()), default=None)
            else:
                best = perms[0] if len(perms) == 1 else None
            if best is None:
                differ[name] = f"shape {want} vs {ref.shape}"
                continue
            ref = ref.transpose(best)
            relaid.append(name)
        aligned[name] = ref
        if ours is None:
            continue
        mine = np.asarray(ours[name], dtype=np.float64)
        rel = float(np.abs(mine - ref).max() / (np.abs(ref).max() or 1.0))
        if rel <= 1e-6:
            equal += 1
        else:
            differ[name] = rel
    if ours is not None:
        out.update(equal=equal, total=len(theirs), differ=differ, relaid=relaid)
    missing = [n for n in target_shapes if n not in aligned]
    if missing:
        out["forward_error"] = f"MaxText's conversion leaves {len(missing)} target tensors unset (first: {missing[0]})"
        return out
    params = {n: aligned[n].astype(np.float32) for n in target_shapes}
    try:
        fwd = tgt_runner.forward(params, ev.tokens)
    except Exception as e:
        out["forward_error"] = f"{type(e).__name__}: {_tail(str(e))}"
        return out
    # measured as verify measures: MaxText's bf16 cast of a tied table taken out where it can be (tied_cast)
    logits, _, kept = uncast_logits(ev.tgt_head, params, fwd)
    stats = compare_logits(ev.reference_logits, logits)
    if kept or ev.source_cast_kept:
        out["tied_cast_kept"] = True
    out.update(kl_max=stats.kl_max, kl_mean=stats.kl_mean, top1=stats.top1_agreement,
               max_abs_diff=stats.max_abs_diff)
    return out


def reference_note(cmp: dict) -> list[str]:
    """compare_with_reference's answer as report notes."""
    if "error" in cmp:
        return [f"MaxText's own conversion could not run here: {cmp['error']}"]
    notes = []
    if "equal" in cmp:
        notes.append(f"equal to MaxText's own conversion: {cmp['equal']}/{cmp['total']} tensors"
                     + (f" ({len(cmp['relaid'])} compared after reordering the reference's axes: "
                        f"{', '.join(cmp['relaid'])})" if cmp["relaid"] else "")
                     + "".join(f"; {n} differs ({v if isinstance(v, str) else f'{v:.1e} relative'})"
                               for n, v in cmp["differ"].items()))
    if "kl_max" in cmp:
        notes.append(f"MaxText's own conversion through both models: max KL {cmp['kl_max']:.2e}, mean KL "
                     f"{cmp['kl_mean']:.2e}, top-1 {100 * cmp['top1']:.0f}%, max |logit diff| "
                     f"{cmp['max_abs_diff']:.1e}")
    elif "forward_error" in cmp:
        notes.append(f"MaxText's own conversion through both models could not run: {cmp['forward_error']}")
    return notes


def run_reference(model: str, *, scan: bool | None = None, device: str = "cpu", seed: int = 0) -> dict:
    """compare_with_reference without a mapping, on MaxText model `model`'s tiny pair: does the target model, given
    MaxText's own conversion of the source's seeded tensors, compute what the source computes? (No solve: this
    checks the tiny configs and both runners, not ckptmap's mapping.)"""
    src_spec, tgt_spec = tiny_specs(model)
    if scan is not None:
        tgt_spec += f" scan_layers={'true' if scan else 'false'}"
    src, tgt = runners_for(src_spec, tgt_spec, device=device)
    try:
        return compare_with_reference(None, src, tgt, seed)
    finally:
        tgt.close()


def run_tiny(model: str, *, scan: bool | None = None, device: str = "cpu", out_dir: str | None = None,
             seed: int = 0, reference: bool = False):
    """(final Mapping, VerifyReport, seconds) for MaxText model `model` at its tiny config. With `reference`, the
    report's notes also say how the mapping compares with MaxText's own conversion, tensor by tensor."""
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
        report.notes.extend(reference_note(compare_with_reference(mapping, src, tgt, seed)))
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
