"""`ckptmap check` on a real-shaped ~100M-parameter llama (ckptmap/benchmarks/RESULTS.md, "ckptmap check (issue 14)").

    python -m ckptmap.benchmarks.check_real [--workdir DIR] [--mapping M.json] [--out results.json]
                                            [--write-mapping M.json]

HF llama (hidden 768, 8 layers, 12 heads / 4 kv heads, vocab 32000, float32, seeded, saved with save_pretrained)
-> `ckptmap solve --verify` (or the given mapping) -> `convert` to MaxText's Orbax layout -> `check`; `convert
--reverse` to an HF directory -> `check --reverse`; then one tensor planted wrong in each converted checkpoint (a
layer of the stacked query kernel scaled, a layer's down projection permuted) -> `check` must exit 1 and name it.
Each ckptmap step runs as its own process, timed, with the peak RSS of its process tree (the MaxText worker
included), as ckptmap/benchmarks/consumers.py measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from ckptmap.atomic import write_json_atomic
from ckptmap.benchmarks.consumers import Step, run_cli
from ckptmap.checkpoint_io import read_all, write_all

# the ~100M llama (99.5M parameters): llama2-7b's shape family at hidden 768
HF_CONFIG = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                 num_attention_heads=12, num_key_value_heads=4, head_dim=64, rms_norm_eps=1e-5,
                 max_position_embeddings=2048, tie_word_embeddings=False)
MAXTEXT_SPEC = ("maxtext:llama2-7b base_emb_dim=768 base_num_query_heads=12 base_num_kv_heads=4 head_dim=64 "
                "base_mlp_dim=2048 base_num_decoder_layers=8 vocab_size=32000 scan_layers=true")
# the planted faults: (tensor, what is done to it, the stage check must name)
ORBAX_FAULT = ("params-decoder-layers-self_attention-query-kernel", "layer 3 (stacked axis 1) scaled by 1.5",
               "layer_3")
HF_FAULT = ("model.layers.5.mlp.down_proj.weight", "rows permuted", "layer_5")


def save_llama(out: str, seed: int = 0) -> int:
    """The llama of HF_CONFIG with seeded weights (transformers' init; norms 1 + N(0, 0.1) so that they matter),
    saved float32 with save_pretrained. Returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**HF_CONFIG))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape) * 0.1)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def plant_orbax_fault(src: str, dst: str) -> None:
    """Copy of the Orbax checkpoint `src` at `dst` with ORBAX_FAULT planted."""
    arrays = read_all(src)
    t = arrays[ORBAX_FAULT[0]].copy()
    t[:, 3] *= np.float32(1.5)
    arrays[ORBAX_FAULT[0]] = t
    write_all(f"orbax:{dst}", arrays)


def plant_hf_fault(src: str, dst: str) -> None:
    """Copy of the HF directory `src` at `dst` with HF_FAULT planted (config files copied as they are)."""
    arrays = read_all(src)
    t = arrays[HF_FAULT[0]]
    arrays[HF_FAULT[0]] = t[np.random.default_rng(0).permutation(t.shape[0])]
    write_all(dst, arrays, "sharded")
    for name in ("config.json", "generation_config.json"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), dst)


def run(workdir: str, mapping: str | None = None, in_process: bool = False) -> dict:
    """Every step's Step and every check's report (JSON) for the 100M llama, in `workdir`."""
    hf, mt, back = (os.path.join(workdir, n) for n in ("hf", "mt.orbax", "hf_back"))
    bad_mt, bad_hf = os.path.join(workdir, "bad.orbax"), os.path.join(workdir, "bad_hf")
    out: dict = {"steps": [], "checks": {}, "expected": {}}
    t0 = time.perf_counter()
    out["parameters"] = save_llama(hf)
    out["steps"].append(Step("hf save_pretrained", time.perf_counter() - t0, 0.0, True).__dict__)

    def step(name: str, args: list[str]) -> bool:
        s = run_cli(name, args, in_process=in_process)
        out["steps"].append(s.__dict__)
        return s.ok

    def check(name: str, args: list[str]) -> None:
        # a failing check exits 1 and writes its report; bad input exits 2 and writes none
        report = os.path.join(workdir, f"{name.replace(' ', '_')}.json")
        step(f"check {name}", ["check", "--mapping", mapping, *args, "--report", report])
        out["checks"][name] = json.load(open(report)) if os.path.exists(report) else None

    if mapping is None:
        mapping = os.path.join(workdir, "mapping.json")
        if not step("solve --verify", ["solve", "--source", f"hf:{hf}/config.json", "--target", MAXTEXT_SPEC,
                                       "--verify", "--quiet", "--out", mapping]):
            return out
    if not step("convert -> orbax", ["convert", "--mapping", mapping, "--input", hf, "--output", f"orbax:{mt}",
                                     "--quiet", "--require-verified"]):
        return out
    check("hf -> maxtext", ["--source", hf, "--converted", mt])
    if not step("convert --reverse -> hf dir", ["convert", "--mapping", mapping, "--input", mt, "--output", back,
                                                "--reverse", "--quiet", "--require-verified"]):
        return out
    check("maxtext -> hf", ["--source", mt, "--converted", back, "--reverse"])
    plant_orbax_fault(mt, bad_mt)
    out["expected"]["planted orbax"] = list(ORBAX_FAULT)
    check("planted orbax", ["--source", hf, "--converted", bad_mt])
    plant_hf_fault(back, bad_hf)
    out["expected"]["planted hf"] = list(HF_FAULT)
    check("planted hf", ["--source", mt, "--converted", bad_hf, "--reverse"])
    return out


def named(report: dict | None) -> list[str]:
    """The converted tensors a check named as differing from the mapping applied to the source."""
    return [d["name"] + (f" cells {d['cells']}" if d.get("cells") else "")
            for d in (report or {}).get("tensor_diffs", []) if d["missing"] or d["max_abs_diff"] > 0]


def markdown(result: dict) -> str:
    lines = ["| check | passed | max KL | mean KL | top-1 | max \\|logit diff\\| | first diverging | named |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["checks"].items():
        if r is None:
            lines.append(f"| {name} | no report | | | | | | |")
            continue
        lines.append(f"| {name} | {r['passed']} | {r['kl_max']:.3g} | {r['kl_mean']:.3g} | "
                     f"{100 * r['top1_agreement']:.1f}% | {r['max_abs_diff']:.3g} | {r['first_divergence'] or '-'} | "
                     f"{'; '.join(named(r)) or '-'} |")
    lines += ["", "| step | seconds | peak RSS (MB) | exit 0 |", "|---|---|---|---|"]
    for s in result["steps"]:
        lines.append(f"| {s['name']} | {s['seconds']:.1f} | {s['peak_rss_mb']:.0f} | {s['ok']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="keep the checkpoints here (default: a temp dir, removed)")
    p.add_argument("--mapping", default=None, help="a mapping solved --verify for HF_CONFIG (skips the solve)")
    p.add_argument("--write-mapping", default=None, help="copy the solved mapping here (the tests' fixture)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    workdir = args.workdir or tempfile.mkdtemp(prefix="ckptmap-check-")
    os.makedirs(workdir, exist_ok=True)
    try:
        result = run(workdir, os.path.abspath(args.mapping) if args.mapping else None)
        if args.write_mapping and not args.mapping:
            shutil.copy(os.path.join(workdir, "mapping.json"), args.write_mapping)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(result))
    if args.out:
        write_json_atomic(args.out, result)
    good = [result["checks"].get(k) for k in ("hf -> maxtext", "maxtext -> hf")]
    bad = [result["checks"].get(k) for k in ("planted orbax", "planted hf")]
    ok = all(r and r["passed"] for r in good) and all(r and not r["passed"] and named(r) for r in bad)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
