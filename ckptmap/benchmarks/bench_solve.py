"""Solve time and peak memory: full-size trees (llama3.1-405b, deepseek3-671b unscanned) and every tiny family.

Each case runs in a fresh subprocess so that its peak RSS is its own. The full-size trees are committed under
ckptmap/benchmarks/data/fullsize/ (HF side read from the real configs on the meta device, MaxText side by `jax.eval_shape`
of the real model in the MaxText worker), gzipped name -> shape JSON.

    .venv/bin/python ckptmap/benchmarks/bench_solve.py            # prints a Markdown table
Targets (issue 4): full-size < 30 s and < 2 GB peak on 2 cores; each tiny family < 2 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
FULLSIZE = os.path.join(HERE, "data", "fullsize")
TINY = os.path.join(HERE, "..", "..", "tests", "data", "maxtext_tiny")

CHILD = r"""
import gzip, json, resource, sys, time
from ckptmap.trees.model import ParamInfo, ParamTree
from ckptmap.solver import solve

def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        d = json.load(f)
    return ParamTree.from_items([ParamInfo(k, tuple(v)) for k, v in d.items()], origin=path)

src, tgt = load(sys.argv[1]), load(sys.argv[2])
t0 = time.perf_counter()
res = solve(src, tgt)
dt = time.perf_counter() - t0
m = res.mapping
print(json.dumps({"seconds": dt, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "sources": len(src), "targets": len(tgt), "rules": len(m.rules),
                  "unmapped": len(m.unmapped_targets), "unused": len(m.unused_sources)}))
"""


def run_case(src: str, tgt: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, src, tgt], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cases() -> list[tuple[str, str, str]]:
    out = [
        ("llama3.1-405b (full, unscanned)", os.path.join(FULLSIZE, "llama3.1-405b.hf.json.gz"),
         os.path.join(FULLSIZE, "llama3.1-405b.maxtext.scan0.json.gz")),
        ("deepseek3-671b (full, unscanned)", os.path.join(FULLSIZE, "deepseek3-671b.hf.json.gz"),
         os.path.join(FULLSIZE, "deepseek3-671b.maxtext.scan0.json.gz")),
    ]
    for fam in sorted(os.listdir(TINY)):
        for scan in (0, 1):
            tgt = os.path.join(TINY, fam, f"maxtext_params.scan{scan}.json")
            if os.path.exists(tgt):
                out.append((f"{fam} tiny scan{scan}", os.path.join(TINY, fam, "hf_params.json"), tgt))
    return out


def main() -> int:
    rows = []
    print("| case | source params | target params | rules | unmapped | unused sources | solve s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for label, src, tgt in cases():
        r = run_case(src, tgt)
        rows.append((label, r))
        print(f"| {label} | {r['sources']} | {r['targets']} | {r['rules']} | {r['unmapped']} | {r['unused']} "
              f"| {r['seconds']:.2f} | {r['peak_mb']:.0f} |", flush=True)
    slow = [label for label, r in rows if ("full" in label and (r["seconds"] > 30 or r["peak_mb"] > 2048))
            or ("tiny" in label and r["seconds"] > 2)]
    if slow:
        print("over target:", ", ".join(slow))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
