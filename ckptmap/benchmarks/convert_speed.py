"""Benchmark: conversion speed against `cp` of the same bytes, on llama-shaped bf16 checkpoints, both directions.

For each size (llama-3.2-1B-like ~2.5 GB, llama-3.1-8B-like ~16 GB), on the same disk, each command in a fresh
process under /usr/bin/time -v (wall time, peak RSS), with the input evicted from the page cache first (so every
command reads it from disk) and the output flushed to disk before the clock stops:

- HF safetensors -> MaxText Orbax: `cp -r` of the HF directory (+ fsync of the copies), `ckptmap convert
  --workers 1`, `ckptmap convert --workers N`, and MaxText's own `to_maxtext.py` when its venv can run it;
- MaxText Orbax -> HF safetensors (`--reverse`): `cp -r` of the Orbax directory, ckptmap 1 and N workers.

Each output is removed once measured (disk space); the N-worker Orbax output is the input of the reverse case.
The tables (time, throughput as a fraction of cp's, peak RSS, against the largest rule) print as markdown and
go to `--json`.

    .venv/bin/python ckptmap/benchmarks/convert_speed.py                     # both sizes
    .venv/bin/python ckptmap/benchmarks/convert_speed.py --size 2GB --dir /work/tmp-bench
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import numpy as np
from ckptmap.pipeline.plan import RulePlan, TargetPlan
from ckptmap.pipeline.sinks import SafetensorsSink
from ckptmap.solver import solve
from ckptmap.trees import read_tree
from ckptmap.benchmarks.bench_convert import llama_trees
from ckptmap.pipeline.plan import plan_mapping
from ckptmap.checkpoint_io import open_reader



def _repo_root(start: str) -> str:
    """The checkout holding pyproject.toml above this file (wherever the benchmarks folder lives)."""
    d = os.path.dirname(os.path.realpath(start))
    while d != os.path.dirname(d) and not os.path.exists(os.path.join(d, "pyproject.toml")):
        d = os.path.dirname(d)
    return d


REPO = _repo_root(__file__)

# llama shapes (hidden, heads, kv heads, head_dim, mlp, layers, vocab): llama-3.2-1B's layers with a 32000 vocab
# (2.2 GB), and llama-3.1-8B (16.1 GB)
# ("tiny": a 20 MB smoke run of the whole script)
SIZES = {"tiny": (256, 8, 2, 32, 1024, 2, 8000), "2GB": (2048, 32, 8, 64, 8192, 16, 32000),
         "16GB": (4096, 32, 8, 128, 14336, 32, 128256)}
TO_MAXTEXT = "maxtext.checkpoint_conversion.to_maxtext"


def files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)


def size_of(path: str) -> int:
    return sum(os.path.getsize(f) for f in files_under(path))


def evict(path: str) -> None:
    """Drop a tree's pages from the page cache (this tree only: other people's caches stay)."""
    for f in files_under(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run under /usr/bin/time -v: wall seconds, peak RSS (MB), exit code, the last lines of output."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    tail = (p.stdout + p.stderr).strip().splitlines()
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(int(m.group(1)) / 1024) if m else None,
            "rc": p.returncode, "tail": [x for x in tail if "Command being timed" not in x][-3:] if p.returncode
            else []}


def write_hf(path: str, shapes: dict[str, list[int]], max_shard: int = 5 * 10**9) -> None:
    """A sharded bf16 safetensors directory of seeded normal values (std 0.02, like trained weights: Orbax's
    zstd finds little to compress, as on real checkpoints), written with ckptmap's planned writer."""
    import ml_dtypes


    bf16 = np.dtype(ml_dtypes.bfloat16)
    plans = [RulePlan(i, (), (TargetPlan(n, tuple(s), bf16, i),), 0, 0) for i, (n, s) in enumerate(shapes.items())]
    block = (np.random.default_rng(0).standard_normal(size=(1 << 25) + 17, dtype=np.float32) * 0.02).astype(bf16)
    sink = SafetensorsSink(path, plans, max_shard_bytes=max_shard)
    with sink:
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            sink.write(name, np.resize(block, n).reshape(shape))


def ckptmap_cmd(mapping: str, src: str, dst: str, workers: int, reverse: bool) -> list[str]:
    cmd = [os.path.join(REPO, ".venv", "bin", "ckptmap"), "convert", "--mapping", mapping, "--input", src,
           "--output", dst, "--workers", str(workers), "--no-progress"]
    return cmd + (["--reverse"] if reverse else [])


def cp_cmd(src: str, dst: str) -> list[str]:
    return ["sh", "-c", f'cp -r "{src}" "{dst}" && find "{dst}" -type f -exec sync {{}} +']


def maxtext_runnable(python: str) -> str | None:
    """None when MaxText's to_maxtext.py can run in `python`'s venv; else why not."""
    if not os.path.exists(python):
        return f"no MaxText venv at {python}"
    p = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    if p.returncode:
        return ("MaxText's to_maxtext.py reads HF safetensors with safe_open(framework='pt') and converts torch "
                "tensors, and its venv has no torch (PyPI has only the multi-GB CUDA build of torch for Python 3.12)")
    return None


def run_size(label: str, work: str, workers: int, mt_python: str, results: dict, save=lambda: None,
             one_worker: bool = True) -> None:

    hidden, heads, kv, head_dim, mlp, layers, vocab = SIZES[label]
    case = os.path.join(work, label)
    shutil.rmtree(case, ignore_errors=True)
    os.makedirs(case)
    hf_shapes, mt_shapes = llama_trees(hidden, heads, kv, head_dim, mlp, layers, vocab)
    for name, tree in (("hf.json", hf_shapes), ("mt.json", mt_shapes)):
        with open(os.path.join(case, name), "w") as f:
            json.dump(tree, f)
    mapping = solve(read_tree(os.path.join(case, "hf.json")), read_tree(os.path.join(case, "mt.json"))).mapping
    mapping_path = os.path.join(case, "mapping.json")
    mapping.save(mapping_path)
    import ml_dtypes

    bf16 = np.dtype(ml_dtypes.bfloat16)
    plans = plan_mapping(mapping, lambda n: tuple(hf_shapes[n]), lambda n: bf16)
    largest = max(p.out_bytes for p in plans)
    hf = os.path.join(case, "hf")
    t0 = time.perf_counter()
    write_hf(hf, hf_shapes)
    nbytes = size_of(hf)
    row = results.setdefault(label, {"bytes": nbytes, "largest_rule_bytes": largest, "tensors": len(hf_shapes),
                                     "write_input_s": round(time.perf_counter() - t0, 1), "cases": {}})
    print(f"[{label}] HF input {nbytes / 1e9:.2f} GB, largest rule {largest / 1e9:.2f} GB", file=sys.stderr)

    def measure(key: str, cmd: list[str], src: str, dst: str, keep: bool = False) -> dict:
        shutil.rmtree(dst, ignore_errors=True)
        evict(src)
        r = timed(cmd)
        r["out_bytes"] = size_of(dst) if os.path.exists(dst) else 0
        print(f"[{label}] {key}: {r}", file=sys.stderr)
        row["cases"][key] = r
        save()
        if not keep:
            shutil.rmtree(dst, ignore_errors=True)
        return r

    mt = os.path.join(case, "mt.orbax")
    measure("hf->mt cp", cp_cmd(hf, os.path.join(case, "cp")), hf, os.path.join(case, "cp"))
    if one_worker:
        measure("hf->mt ckptmap 1 worker", ckptmap_cmd(mapping_path, hf, mt, 1, False), hf, mt)
    measure(f"hf->mt ckptmap {workers} workers", ckptmap_cmd(mapping_path, hf, mt, workers, False), hf, mt, keep=True)
    why = maxtext_runnable(mt_python)
    row["maxtext_to_maxtext"] = why or "ran"
    if why is None:
        measure("hf->mt MaxText to_maxtext.py", [mt_python, "-m", TO_MAXTEXT, "model_name=llama3.1-8b",
                                                   f"base_output_directory={case}/mt_own", "scan_layers=true",
                                                   f"hf_model_path={hf}"], hf, os.path.join(case, "mt_own"))
    back = os.path.join(case, "back")
    measure("mt->hf cp", cp_cmd(mt, os.path.join(case, "cp")), mt, os.path.join(case, "cp"))
    if one_worker:
        measure("mt->hf ckptmap 1 worker", ckptmap_cmd(mapping_path, "orbax:" + mt, back, 1, True), mt, back)
    r = measure(f"mt->hf ckptmap {workers} workers", ckptmap_cmd(mapping_path, "orbax:" + mt, back, workers, True),
                mt, back, keep=True)
    if r["rc"] == 0:  # the round trip is bit-exact

        with open_reader(hf) as a, open_reader(back) as b:
            row["round_trip_bit_exact"] = all(a.read(n).tobytes() == b.read(n).tobytes() for n in a.names())
    shutil.rmtree(case, ignore_errors=True)


def table(results: dict, workers: int) -> str:
    lines = ["| size | direction | command | time s | MB/s | x cp | peak RSS MB | RSS / largest rule |",
             "|---|---|---|---|---|---|---|---|"]
    for label, row in results.items():
        for direction in ("hf->mt", "mt->hf"):
            cp = row["cases"].get(f"{direction} cp")
            for key, r in row["cases"].items():
                if not key.startswith(direction):
                    continue
                nbytes = row["bytes"]
                rate = nbytes / r["seconds"] / 1e6 if r["rc"] == 0 else 0
                ratio = cp["seconds"] / r["seconds"] if cp and r["rc"] == 0 else 0
                rss = r["peak_rss_mb"] or 0
                lines.append(f"| {nbytes / 1e9:.2f} GB | {direction} | {key[len(direction) + 1:]} | {r['seconds']} | "
                             f"{rate:.0f} | {ratio:.2f} | {rss} | {rss * 1048576 / row['largest_rule_bytes']:.2f} |"
                             if r["rc"] == 0 else f"| {nbytes / 1e9:.2f} GB | {direction} | {key} | failed "
                             f"(rc {r['rc']}: {' / '.join(r['tail'])[:200]}) | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", nargs="+", default=["2GB", "16GB"], choices=sorted(SIZES))
    ap.add_argument("--dir", default="/work/tmp-convert-speed", help="work folder on the disk to measure")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--maxtext-python", default=os.path.join(REPO, ".venv-maxtext", "bin", "python"))
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--one-worker-up-to", default="16GB", choices=sorted(SIZES),
                    help="run the 1-worker conversions only for sizes up to this one (time on a busy machine)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.dir, exist_ok=True)
    results: dict = {}
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "workers": args.workers}
    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "results": results}, f, indent=1)

    try:
        for label in args.size:
            one = list(SIZES).index(label) <= list(SIZES).index(args.one_worker_up_to)
            run_size(label, args.dir, args.workers, args.maxtext_python, results, save, one_worker=one)
    finally:
        save()
    print(json.dumps(meta))
    print(table(results, args.workers))
    for label, row in results.items():
        print(f"{label}: round trip bit-exact: {row.get('round_trip_bit_exact')}; MaxText to_maxtext.py: "
              f"{row.get('maxtext_to_maxtext')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
