"""Benchmark: conversion speed against `cp` of the same bytes, on llama-shaped bf16 checkpoints, both directions.

For each size (llama-3.2-1B-like ~2.5 GB, llama-3.1-8B-like ~16 GB), on the same disk, each command in a fresh
process under /usr/bin/time -v (wall time, peak RSS), with the input evicted from the page cache first (so every
command reads it from disk) and the output flushed to disk before the clock stops:

- HF safetensors -> MaxText Orbax: `cp -r` of the HF directory (+ fsync of the copies), `ckptmap convert
  --workers 1`, `ckptmap convert --workers N`, and MaxText's own `to_maxtext.py` when its venv can run it;
- MaxText Orbax -> HF safetensors (`--reverse`): `cp -r` of the Orbax directory, ckptmap 1 and N workers.

Each output is removed once measured (disk space); the N-worker Orbax output is the input of the reverse case.
`--repeat K` runs each direction's rows K times in turn (cp, ckptmap, cp, ckptmap, ...) and reports medians, for
a disk whose speed drifts from minute to minute.
The tables (time, throughput as a fraction of cp's, peak RSS, against the largest rule) print as markdown and
go to `--json`.

MaxText's `to_maxtext.py` (MaxText 0.2.5) needs torch, which `.venv-maxtext` lacks: pass `--maxtext-python` of a
venv that has both (maxtext_torch_venv.sh builds one); without it the run says why and goes on. The HF input gets
a llama-3.1 config.json of its shapes. to_maxtext runs with llama3.1-8b's mapping, scanned, its defaults otherwise
(lazy loading, 16 simulated CPU devices, bf16, zstd-compressed OCDBT/zarr3 output), `hardware=cpu
skip_jax_distributed_system=true`, JAX_PLATFORMS=cpu and HF_HUB_OFFLINE=1; for shapes other than llama-3.1-8B's
with MaxText's shape overrides and through to_maxtext_hf_config.py (MaxText takes the HF config of its mapping from
its own table per model_name, not from the checkpoint). Its output is checked as an Orbax checkpoint of the
MaxText tree, and (up to COMPARE_VALUES_UP_TO) compared with ckptmap's tensor by tensor: query and key differ by
design, to_maxtext's llama3.1 hooks interleave the RoPE halves of both and scale the query by 1/sqrt(head_dim),
the shapes-only mapping here does neither. Its memory model (from `to_maxtext.main` and
`utils.save_weights_to_checkpoint` / `shard_jax_weights`; measured ~1 GB + 1.83x the checkpoint): every
converted tensor is built and `jax.device_put` onto the 16 simulated devices before the Orbax save starts, so the
whole model is resident, and Orbax's `transfer_arrays_to_host` copies every shard to host at once while it writes
(~0.7x more); eager loading (`lazy_load_tensors=false`) also holds the mmap'd HF tensors and the numpy tree
(~1 GB + 3.5x). The run is skipped when that predicted peak is over MemAvailable (`--maxtext-anyway` runs it).

    .venv/bin/python -m ckptmap.benchmarks.convert_speed                     # both sizes
    .venv/bin/python -m ckptmap.benchmarks.convert_speed --size 2GB --dir /work/tmp-bench
    .venv/bin/python -m ckptmap.benchmarks.convert_speed --size 16GB --one-worker-up-to 2GB --repeat 3
    .venv/bin/python -m ckptmap.benchmarks.convert_speed --size tiny --dir /work/tmp-cs-tiny \\
        --maxtext-python /work/venv-mt-torch/bin/python                      # with MaxText's to_maxtext.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import numpy as np
from ckptmap.atomic import write_json_atomic
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
TO_MAXTEXT_HF_CONFIG = os.path.join(REPO, "ckptmap", "benchmarks", "to_maxtext_hf_config.py")
# on a CPU host: no TPU/GPU distributed system to join (to_maxtext itself sets jax_platforms=cpu)
MAXTEXT_CPU_ARGS = ("hardware=cpu", "skip_jax_distributed_system=true")
# to_maxtext's peak memory with its defaults, measured (RESULTS.md, "Convert speed"): every converted tensor as a
# jax.Array plus Orbax's host copies of them while it saves, 1.83x the checkpoint above ~1 GB of imports (two
# sizes); rounded up
MAXTEXT_PEAK_PER_BYTE = 2.0
MAXTEXT_PEAK_BASE = 1.2e9
# to_maxtext's output is compared with ckptmap's tensor by tensor up to this input size (reading both back)
COMPARE_VALUES_UP_TO = 3 * 10**9


def files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)


def size_of(path: str) -> int:
    return sum(os.path.getsize(f) for f in files_under(path))


SETTLE_S = 3.0  # seconds of quiet after the sync, before each timed command


def settle() -> None:
    """Let the disk finish what came before a timed command: `sync` (which also waits for the journal commit that
    discards the blocks of a deleted output, on a file system mounted with `discard`, as this project's VM is),
    then SETTLE_S seconds. Every command, `cp` or ckptmap, starts this way. Before, only ckptmap's runs followed
    the deletion of a 16 GB output (its own previous one, removed just before it, and `cp`'s, removed just
    after `cp` was timed), so they alone paid for its discards."""
    os.sync()
    time.sleep(SETTLE_S)


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
    r = {"seconds": round(seconds, 2), "peak_rss_mb": round(int(m.group(1)) / 1024) if m else None,
         "rc": p.returncode, "tail": [x for x in tail if "Command being timed" not in x][-3:] if p.returncode
         else []}
    # a conversion over Ray processes: their own peaks, from convert's report (time -v sees only the driver)
    peaks = [int(x) for x in re.findall(r"^process \S+ wrote .*peak RSS (\d+) MB$", p.stdout, re.M)]
    if peaks:
        r["process_peak_rss_mb"] = peaks
    return r


def write_hf(path: str, shapes: dict[str, list[int]], max_shard: int = 5 * 10**9, config: dict | None = None) -> None:
    """A sharded bf16 safetensors directory of seeded normal values (std 0.02, like trained weights), written with
    ckptmap's planned writer; `config`, when given, goes beside it as config.json. Each tensor takes its sign and
    exponent bits from one shared normal block and draws its 7 mantissa bits afresh, so no tensor or layer repeats
    another: zstd (MaxText's Orbax output is compressed) finds what it finds on a real checkpoint, the skewed
    exponents, not whole layers equal to the one before."""
    import ml_dtypes


    bf16 = np.dtype(ml_dtypes.bfloat16)
    plans = [RulePlan(i, (), (TargetPlan(n, tuple(s), bf16, i),), 0, 0) for i, (n, s) in enumerate(shapes.items())]
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(size=(1 << 25) + 17, dtype=np.float32) * 0.02).astype(bf16).view(np.uint16)
    sink = SafetensorsSink(path, plans, max_shard_bytes=max_shard)
    with sink:
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            bits = np.resize(block, n) & np.uint16(0xFF80)
            bits |= rng.integers(0, 128, size=n, dtype=np.uint16)
            sink.write(name, bits.view(bf16).reshape(shape))
    if config is not None:
        write_json_atomic(os.path.join(path, "config.json"), config)


def llama_config(hidden: int, heads: int, kv: int, head_dim: int, mlp: int, layers: int, vocab: int) -> dict:
    """The config.json of a llama-3.1-like model of these shapes, as transformers' LlamaConfig writes it: bf16,
    untied embeddings, llama-3.1's RoPE (theta 500000, llama3 scaling) and norm epsilon (llama-3.1-8B's own
    config for SIZES["16GB"])."""
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                      intermediate_size=mlp, num_hidden_layers=layers, vocab_size=vocab, tie_word_embeddings=False,
                      rms_norm_eps=1e-5, max_position_embeddings=131072, rope_parameters=rope,
                      bos_token_id=128000 if vocab > 128001 else 1, eos_token_id=128001 if vocab > 128001 else 2, dtype="bfloat16", architectures=["LlamaForCausalLM"])
    return cfg.to_diff_dict()


def ckptmap_cmd(mapping: str, src: str, dst: str, workers: int, reverse: bool, *extra: str) -> list[str]:
    cmd = [os.path.join(REPO, ".venv", "bin", "ckptmap"), "convert", "--mapping", mapping, "--input", src,
           "--output", dst, "--workers", str(workers), "--no-progress", *extra]
    return cmd + (["--reverse"] if reverse else [])


def cp_cmd(src: str, dst: str) -> list[str]:
    return ["sh", "-c", f'cp -r "{src}" "{dst}" && find "{dst}" -type f -exec sync {{}} +']


def maxtext_env() -> dict:
    """The environment of a to_maxtext run: CPU only, offline (it reads the local HF directory, no hub)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def maxtext_runnable(python: str) -> str | None:
    """None when MaxText's to_maxtext.py can run in `python`'s venv (torch and MaxText's checkpoint_conversion
    import); else why not."""
    if not os.path.exists(python):
        return f"no MaxText venv at {python}"
    p = subprocess.run([python, "-c", "import torch, maxtext.checkpoint_conversion"], capture_output=True, text=True,
                       env=maxtext_env())
    if p.returncode and "No module named 'torch'" in p.stderr:
        return (f"MaxText's to_maxtext.py reads HF safetensors with safe_open(framework='pt') and converts torch "
                f"tensors, and {python} has no torch (PyPI has only the multi-GB CUDA build of torch for Python "
                f"3.12: build a throwaway venv with ckptmap/benchmarks/maxtext_torch_venv.sh)")
    if p.returncode:
        return f"{python} cannot import torch and maxtext.checkpoint_conversion: {p.stderr.strip().splitlines()[-1:]}"
    return None


def mem_available() -> int:
    """MemAvailable of /proc/meminfo, bytes (what the machine can give a new process without swapping)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def maxtext_fits(nbytes: int, available: int) -> str | None:
    """None when to_maxtext's predicted peak for an `nbytes` checkpoint fits in `available` bytes; else why not
    (run anyway, it would be OOM-killed or swap on a machine shared with others)."""
    need = MAXTEXT_PEAK_PER_BYTE * nbytes + MAXTEXT_PEAK_BASE
    if need <= available:
        return None
    return (f"not run: its predicted peak memory, {need / 1e9:.1f} GB ({MAXTEXT_PEAK_PER_BYTE:g}x the checkpoint + "
            f"{MAXTEXT_PEAK_BASE / 1e9:g} GB: all converted tensors as jax.Arrays plus Orbax's host copies while it "
            f"saves), is over the {available / 1e9:.1f} GB available (--maxtext-anyway runs it)")


def to_maxtext_cmd(python: str, hf: str, out: str, shape: tuple[int, ...]) -> list[str]:
    """MaxText's own HF -> Orbax conversion of the HF directory `hf` into `out` (its checkpoint is out/0/items):
    llama3.1-8b's mapping, scanned layers, its defaults otherwise (lazy loading, 16 simulated CPU devices, bf16
    save), on CPU without a distributed system, output files synced like cp's. For shapes other than llama-3.1-8B's
    (`shape` as in SIZES) the MaxText model's shapes are overridden and to_maxtext runs through
    to_maxtext_hf_config.py, which gives it the checkpoint's config.json (MaxText reads its HF config from its own
    table per model_name)."""
    args = ["model_name=llama3.1-8b", f"hf_model_path={hf}", f"base_output_directory={out}", "scan_layers=true",
            *MAXTEXT_CPU_ARGS]
    if tuple(shape) == SIZES["16GB"]:
        run = [python, "-m", TO_MAXTEXT, *args]
    else:
        hidden, heads, kv, head_dim, mlp, layers, vocab = shape
        run = [python, TO_MAXTEXT_HF_CONFIG, *args, "override_model_config=true", f"base_emb_dim={hidden}",
               f"base_num_query_heads={heads}", f"base_num_kv_heads={kv}", f"head_dim={head_dim}",
               f"base_mlp_dim={mlp}", f"base_num_decoder_layers={layers}", f"vocab_size={vocab}"]
    return ["sh", "-c", f'{shlex.join(run)} && find "{out}" -type f -exec sync {{}} +']


def check_maxtext_output(own: str, ours: str, mt_shapes: dict[str, list[int]], compare_values: bool) -> dict:
    """Is to_maxtext's output `own` an Orbax checkpoint of the MaxText tree `mt_shapes` (names and shapes), in which
    dtypes; with `compare_values`, which of its tensors equal ckptmap's output `ours` bit for bit (one tensor of
    each in memory at a time)."""
    try:
        with open_reader("orbax:" + own) as r:
            got = {n: list(r.shape(n)) for n in r.names()}
            out: dict = {"tensors": len(got), "tree_matches": got == mt_shapes,
                         "dtypes": sorted({str(r.dtype(n)) for n in got})}
            if got != mt_shapes:
                out["tree_differs_at"] = sorted(n for n in set(got) | set(mt_shapes) if got.get(n) != mt_shapes.get(n))
            elif compare_values:
                with open_reader("orbax:" + ours) as c:
                    same = [n for n in got if r.read(n).tobytes() == c.read(n).tobytes()]
                out["equal_to_ckptmap"] = same
                out["differ_from_ckptmap"] = [n for n in got if n not in same]
    except Exception as e:  # a damaged or foreign checkpoint is a finding of the benchmark, not its crash
        return {"unreadable": f"{type(e).__name__}: {e}"}
    return out


def merged(before: dict | None, run: dict) -> dict:
    """A row's record after one more run: every run's seconds and peak RSS kept (`runs`), `seconds` their median
    and `peak_rss_mb` their largest; a failed run makes the row failed."""
    runs = (before or {}).get("runs", []) + [{"seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"],
                                              **({"process_peak_rss_mb": run["process_peak_rss_mb"]}
                                                 if "process_peak_rss_mb" in run else {})}]
    failed = run if run["rc"] else (before if before and before["rc"] else None)
    out = dict(failed or run)
    out["runs"] = runs
    if failed is None:
        out["seconds"] = round(statistics.median(r["seconds"] for r in runs), 2)
        out["peak_rss_mb"] = max((r["peak_rss_mb"] or 0) for r in runs)
        peaks = [p for r in runs for p in r.get("process_peak_rss_mb", [])]
        if peaks:
            out["process_peak_rss_mb"] = sorted(peaks)
    return out


ORBAX_COMMIT_NOTES = ("commit_success.txt", "_CHECKPOINT_METADATA")  # Orbax's own: its temp path, timestamps


def differing_files(a: str, b: str) -> list[str]:
    """Relative paths of the files that differ between two output trees (or exist in one only), read in 16 MB
    blocks; Orbax's commit notes (which record a temp path and timestamps in every run) are compared without
    them: `commit_success.txt` not at all, `_CHECKPOINT_METADATA` less its `*timestamp*` fields."""
    def rel(root: str) -> dict[str, str]:
        return {os.path.relpath(f, root): f for f in files_under(root)}

    ours, theirs = rel(a), rel(b)
    differ = sorted(set(ours) ^ set(theirs))
    for name in sorted(set(ours) & set(theirs)):
        base = os.path.basename(name)
        if base == "commit_success.txt":
            continue
        if base == "_CHECKPOINT_METADATA":
            x, y = ({k: v for k, v in json.load(open(f)).items() if "timestamp" not in k}
                    for f in (ours[name], theirs[name]))
            if x != y:
                differ.append(name)
            continue
        with open(ours[name], "rb") as f, open(theirs[name], "rb") as g:
            while True:
                x, y = f.read(1 << 24), g.read(1 << 24)
                if x != y:
                    differ.append(name)
                    break
                if not x:
                    break
    return sorted(differ)


def run_size(label: str, work: str, workers: int, mt_python: str, results: dict, save=lambda: None,
             one_worker: bool = True, maxtext_anyway: bool = False, repeat: int = 1, ocdbt_row: bool = False,
             processes: int = 0) -> None:
    """`processes` > 1: also time each direction split over that many Ray processes (--processes, the cores
    shared out as --workers), and check its output is the one-process output's bytes."""

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
    write_hf(hf, hf_shapes, config=llama_config(*SIZES[label]))
    nbytes = size_of(hf)
    row = results.setdefault(label, {"bytes": nbytes, "largest_rule_bytes": largest, "tensors": len(hf_shapes),
                                     "write_input_s": round(time.perf_counter() - t0, 1), "cases": {}})
    print(f"[{label}] HF input {nbytes / 1e9:.2f} GB, largest rule {largest / 1e9:.2f} GB", file=sys.stderr)

    def measure(key: str, cmd: list[str], src: str, dst: str, keep: bool = False, env: dict | None = None) -> dict:
        shutil.rmtree(dst, ignore_errors=True)
        settle()
        evict(src)
        r = timed(cmd, env)
        r["out_bytes"] = size_of(dst) if os.path.exists(dst) else 0
        print(f"[{label}] {key}: {r}", file=sys.stderr)
        row["cases"][key] = merged(row["cases"].get(key), r)
        save()
        if not keep:
            shutil.rmtree(dst, ignore_errors=True)
        return r

    mt = os.path.join(case, "mt.orbax")
    for _ in range(repeat):  # cp and ckptmap in turn, so that a slow spell of the disk falls on both
        measure("hf->mt cp", cp_cmd(hf, os.path.join(case, "cp")), hf, os.path.join(case, "cp"))
        if one_worker:
            measure("hf->mt ckptmap 1 worker", ckptmap_cmd(mapping_path, hf, mt, 1, False), hf, mt)
        if ocdbt_row:  # the form MaxText's own conversion writes (OCDBT databases)
            measure(f"hf->mt ckptmap {workers} workers --orbax-ocdbt",
                    ckptmap_cmd(mapping_path, hf, mt, workers, False, "--orbax-ocdbt"), hf, mt)
        measure(f"hf->mt ckptmap {workers} workers", ckptmap_cmd(mapping_path, hf, mt, workers, False), hf, mt,
                keep=True)
        if processes > 1:
            many = os.path.join(case, "mt_processes.orbax")
            measure(f"hf->mt ckptmap {processes} processes", ckptmap_cmd(
                mapping_path, hf, many, max(1, workers // processes), False, "--processes", str(processes)), hf,
                many, keep=True)
            row["processes_differing_files_hf->mt"] = differing_files(mt, many)
            shutil.rmtree(many, ignore_errors=True)
    why = maxtext_runnable(mt_python) or (None if maxtext_anyway else maxtext_fits(nbytes, mem_available()))
    row["maxtext_to_maxtext"] = why or "ran"
    if why is None:
        own = os.path.join(case, "mt_own")
        cmd = to_maxtext_cmd(mt_python, hf, own, SIZES[label])
        row["maxtext_command"] = cmd[-1]
        r = measure("hf->mt MaxText to_maxtext.py", cmd, hf, own, keep=True, env=maxtext_env())
        if r["rc"] == 0:
            row["maxtext_output"] = check_maxtext_output(own, mt, mt_shapes, nbytes <= COMPARE_VALUES_UP_TO)
            print(f"[{label}] MaxText's output: {row['maxtext_output']}", file=sys.stderr)
        shutil.rmtree(own, ignore_errors=True)
    back = os.path.join(case, "back")
    for _ in range(repeat):
        measure("mt->hf cp", cp_cmd(mt, os.path.join(case, "cp")), mt, os.path.join(case, "cp"))
        if one_worker:
            measure("mt->hf ckptmap 1 worker", ckptmap_cmd(mapping_path, "orbax:" + mt, back, 1, True), mt, back)
        r = measure(f"mt->hf ckptmap {workers} workers",
                    ckptmap_cmd(mapping_path, "orbax:" + mt, back, workers, True), mt, back, keep=True)
        if processes > 1:
            many = os.path.join(case, "back_processes")
            measure(f"mt->hf ckptmap {processes} processes", ckptmap_cmd(
                mapping_path, "orbax:" + mt, many, max(1, workers // processes), True, "--processes", str(processes)),
                mt, many, keep=True)
            row["processes_differing_files_mt->hf"] = differing_files(back, many)
            shutil.rmtree(many, ignore_errors=True)
    if r["rc"] == 0:  # the round trip is bit-exact

        with open_reader(hf) as a, open_reader(back) as b:
            row["round_trip_bit_exact"] = all(a.read(n).tobytes() == b.read(n).tobytes() for n in a.names())
    shutil.rmtree(case, ignore_errors=True)


def table(results: dict, workers: int) -> str:
    """The markdown table: per row the median time (its range over repeated runs), throughput and ratio to cp's
    median, peak RSS."""
    lines = ["| size | direction | command | time s | MB/s | x cp | peak RSS MB | RSS / largest rule |",
             "|---|---|---|---|---|---|---|---|"]
    for label, row in results.items():
        for direction in ("hf->mt", "mt->hf"):
            cp = row["cases"].get(f"{direction} cp")
            for key, r in row["cases"].items():
                if not key.startswith(direction):
                    continue
                nbytes = row["bytes"]
                ok = r["rc"] == 0 and r["seconds"] > 0  # a run under 5 ms rounds to 0 s: no rate
                rate = nbytes / r["seconds"] / 1e6 if ok else 0
                ratio = cp["seconds"] / r["seconds"] if cp and ok else 0
                rss = r["peak_rss_mb"] or 0
                shown = f"{rss}"
                if "process_peak_rss_mb" in r:  # Ray's processes: the driver's and the largest task process's
                    rss = max(r["process_peak_rss_mb"])
                    shown = f"{r['peak_rss_mb']} driver, {rss} largest process"
                runs = [x["seconds"] for x in r.get("runs", [])]
                took = f"{r['seconds']} ({min(runs)}-{max(runs)})" if len(runs) > 1 else f"{r['seconds']}"
                lines.append(f"| {nbytes / 1e9:.2f} GB | {direction} | {key[len(direction) + 1:]} | {took} | "
                             f"{rate:.0f} | {ratio:.2f} | {shown} | {rss * 1048576 / row['largest_rule_bytes']:.2f} |"
                             if r["rc"] == 0 else f"| {nbytes / 1e9:.2f} GB | {direction} | {key} | failed "
                             f"(rc {r['rc']}: {' / '.join(r['tail'])[:200]}) | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", nargs="+", default=["2GB", "16GB"], choices=sorted(SIZES))
    ap.add_argument("--dir", default="/work/tmp-convert-speed", help="work folder on the disk to measure")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--maxtext-python", default=os.path.join(REPO, ".venv-maxtext", "bin", "python"))
    ap.add_argument("--maxtext-anyway", action="store_true",
                    help="run to_maxtext.py even where its predicted peak memory is over what the machine has free")
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run cp and ckptmap this many times each, in turn, and report the median (a noisy disk)")
    ap.add_argument("--one-worker-up-to", default="16GB", choices=sorted(SIZES),
                    help="run the 1-worker conversions only for sizes up to this one (time on a busy machine)")
    ap.add_argument("--ocdbt-row", action="store_true",
                    help="also time the forward conversion with --orbax-ocdbt (MaxText's own storage form)")
    ap.add_argument("--processes", type=int, default=0,
                    help="also time both directions split over this many Ray processes, and check their output "
                         "is byte-identical to one process's")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.dir, exist_ok=True)
    results: dict = {}
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "workers": args.workers,
            "repeat": max(1, args.repeat)}
    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "results": results}, f, indent=1)

    try:
        for label in args.size:
            one = list(SIZES).index(label) <= list(SIZES).index(args.one_worker_up_to)
            run_size(label, args.dir, args.workers, args.maxtext_python, results, save, one_worker=one,
                     maxtext_anyway=args.maxtext_anyway, repeat=max(1, args.repeat), ocdbt_row=args.ocdbt_row,
                     processes=args.processes)
    finally:
        save()
    print(json.dumps(meta))
    print(table(results, args.workers))
    for label, row in results.items():
        print(f"{label}: round trip bit-exact: {row.get('round_trip_bit_exact')}; MaxText to_maxtext.py: "
              f"{row.get('maxtext_to_maxtext')}")
        for direction in ("hf->mt", "mt->hf"):
            if f"processes_differing_files_{direction}" in row:
                differ = row[f"processes_differing_files_{direction}"]
                same = "byte-identical to one process" if not differ else f"{len(differ)} files differ: {differ[:5]}"
                print(f"{label}: {direction} across {args.processes} processes: {same}")
        if "maxtext_command" in row:
            own = row["cases"]["hf->mt MaxText to_maxtext.py"]
            print(f"{label}: to_maxtext: {row['maxtext_command']}\n{label}: its output {own['out_bytes'] / 1e9:.3f} GB "
                  f"(ckptmap's {row['cases'][f'hf->mt ckptmap {args.workers} workers']['out_bytes'] / 1e9:.3f} GB): "
                  f"{row.get('maxtext_output')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
