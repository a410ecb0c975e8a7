"""Benchmark: `ckptmap convert` time and peak memory on a llama-shaped checkpoint (synthetic values).

The HF and MaxText (scanned) trees of a llama with the given sizes are written as name -> shape JSON, the solver
maps them, seeded bfloat16 HF tensors are written as sharded safetensors, and then, each in a fresh process (so that
its peak RSS is its own): HF -> MaxText (sharded safetensors), MaxText -> HF (--reverse), and a bit-exact check.

    .venv/bin/python ckptmap/benchmarks/bench_convert.py [--hidden 2048 --mlp 5632 --layers 16 --vocab 32000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import numpy as np
import os
import shutil
import subprocess
import sys
import tempfile
import time
from ckptmap.checkpoint_io import open_reader, open_writer
from ckptmap.solver import solve
from ckptmap.trees import read_tree

# The child samples its anonymous resident memory (RssAnon: arrays it allocated, not file pages it maps) every
# 20 ms; ru_maxrss also counts the mapped file pages of the lazy reader, which the kernel can drop at will.
CHILD = r"""
import resource, sys, threading, time
from ckptmap.convert import convert
from ckptmap.mapping import Mapping
peak = [0]
done = threading.Event()
def sample():
    while not done.is_set():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
report = convert(Mapping.load(sys.argv[1]), sys.argv[2], sys.argv[3], reverse=sys.argv[4] == "1", progress=False,
                 max_shard_bytes=1_000_000_000)
seconds = time.perf_counter() - t0
done.set()
print(f"RESULT {seconds:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} {peak[0] / 1024:.0f} "
      f"{report.bytes_written} {report.largest_rule_bytes} {report.tensors_written}")
"""


def llama_trees(hidden: int, heads: int, kv: int, head_dim: int, mlp: int, layers: int, vocab: int):
    hf = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden], "lm_head.weight": [vocab, hidden]}
    for i in range(layers):
        p = f"model.layers.{i}."
        hf.update({p + "self_attn.q_proj.weight": [heads * head_dim, hidden],
                   p + "self_attn.k_proj.weight": [kv * head_dim, hidden],
                   p + "self_attn.v_proj.weight": [kv * head_dim, hidden],
                   p + "self_attn.o_proj.weight": [hidden, heads * head_dim],
                   p + "mlp.gate_proj.weight": [mlp, hidden], p + "mlp.up_proj.weight": [mlp, hidden],
                   p + "mlp.down_proj.weight": [hidden, mlp], p + "input_layernorm.weight": [hidden],
                   p + "post_attention_layernorm.weight": [hidden]})
    q = "params-decoder-layers-"
    mt = {"params-token_embedder-embedding": [vocab, hidden], "params-decoder-decoder_norm-scale": [hidden],
          "params-decoder-logits_dense-kernel": [hidden, vocab],
          q + "self_attention-query-kernel": [hidden, layers, heads, head_dim],
          q + "self_attention-key-kernel": [hidden, layers, kv, head_dim],
          q + "self_attention-value-kernel": [hidden, layers, kv, head_dim],
          q + "self_attention-out-kernel": [heads, layers, head_dim, hidden],
          q + "mlp-wi_0-kernel": [hidden, layers, mlp], q + "mlp-wi_1-kernel": [hidden, layers, mlp],
          q + "mlp-wo-kernel": [mlp, layers, hidden],
          q + "pre_self_attention_layer_norm-scale": [hidden, layers],
          q + "post_self_attention_layer_norm-scale": [hidden, layers]}
    return hf, mt


def run_child(mapping: str, src: str, dst: str, reverse: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mapping, src, dst, "1" if reverse else "0"],
                         capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    seconds, rss_mb, anon_mb, nbytes, largest, count = line.split()[1:]
    return {"seconds": float(seconds), "peak_rss_mb": float(rss_mb), "peak_anon_mb": float(anon_mb),
            "bytes": int(nbytes), "largest_rule_bytes": int(largest), "tensors": int(count)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed afterwards)")
    args = ap.parse_args(argv)

    import ml_dtypes

    work = args.dir or tempfile.mkdtemp(prefix="ckptmap-bench-convert-")
    os.makedirs(work, exist_ok=True)
    try:
        hf, mt = llama_trees(args.hidden, args.heads, args.kv, args.hidden // args.heads, args.mlp, args.layers,
                             args.vocab)
        for name, tree in (("hf.json", hf), ("mt.json", mt)):
            with open(os.path.join(work, name), "w") as f:
                json.dump(tree, f)
        t0 = time.perf_counter()
        mapping = solve(read_tree(os.path.join(work, "hf.json")), read_tree(os.path.join(work, "mt.json"))).mapping
        solve_s = time.perf_counter() - t0
        mapping_path = os.path.join(work, "mapping.json")
        mapping.save(mapping_path)
        rng = np.random.default_rng(0)
        src = os.path.join(work, "hf")
        with open_writer(src, "sharded", max_shard_bytes=1_000_000_000) as w:
            for name, shape in hf.items():
                w.write(name, rng.integers(-8, 9, size=shape, dtype=np.int8).astype(ml_dtypes.bfloat16))
        total = sum(int(np.prod(s)) for s in hf.values()) * 2
        fwd = run_child(mapping_path, src, os.path.join(work, "mt"), False)
        back = run_child(mapping_path, os.path.join(work, "mt"), os.path.join(work, "back"), True)
        exact = True
        with open_reader(src) as a, open_reader(os.path.join(work, "back")) as b:
            for name in a.names():
                exact &= a.read(name).tobytes() == b.read(name).tobytes()
        print(json.dumps({"checkpoint_bytes": total, "solve_seconds": round(solve_s, 2), "hf_to_maxtext": fwd,
                          "maxtext_to_hf": back, "round_trip_bit_exact": bool(exact)}, indent=1))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
