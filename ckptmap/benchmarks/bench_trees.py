"""Benchmark: `hf:` trees of full-size configs (time and peak memory, one subprocess per config).

    .venv/bin/python ckptmap/benchmarks/bench_trees.py                 # measure every tests/data/hf_configs/*.json
    .venv/bin/python ckptmap/benchmarks/bench_trees.py --results       # ... and rewrite `## Tree readers` in RESULTS.md
    .venv-maxtext/bin/python ckptmap/benchmarks/bench_trees.py --dump-configs   # refresh the config files

The configs are the real hyperparameters of each model as MaxText's checkpoint conversion writes them
(maxtext/checkpoint_conversion/utils/hf_model_configs.py), dumped with `.to_dict()`; they are data, not code.
Each config is read in a fresh interpreter so that the time includes importing torch/transformers and the peak
RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss` in the child) is that read's alone.
"""

from __future__ import annotations

from ckptmap.atomic import write_json_atomic, write_text_atomic

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "tests", "data", "hf_configs")
RESULTS = os.path.join(ROOT, "ckptmap", "benchmarks", "RESULTS.md")
SECTION = "## Tree readers"

# file name -> (MaxText HF_MODEL_CONFIGS key, sub-config to keep or None)
DUMPS = {
    "llama3.1-8b": ("llama3.1-8b", None),
    "llama3.1-70b": ("llama3.1-70b", None),
    "llama3.1-405b": ("llama3.1-405b", None),
    "qwen3-32b": ("qwen3-32b", None),
    "qwen3-235b-a22b": ("qwen3-235b-a22b", None),
    "gemma2-27b": ("gemma2-27b", None),
    "gemma3-27b": ("gemma3-27b", None),
    "gemma3-27b-text": ("gemma3-27b", "text_config"),
    "mixtral-8x7b": ("mixtral-8x7b", None),
    "deepseek3-671b": ("deepseek3-671b", None),
}

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch, transformers
from ckptmap.trees import read_tree
t1 = time.perf_counter()
tree = read_tree(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "read_s": t2 - t1, "tensors": len(tree), "params": tree.total_params,
                  "bytes": tree.total_bytes, "cls": tree.meta["hf"]["class"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))
"""


def dump_configs() -> None:
    """Run in .venv-maxtext: write each MaxText HF config's to_dict() to tests/data/hf_configs/<name>.json."""
    from maxtext.checkpoint_conversion.utils.hf_model_configs import HF_MODEL_CONFIGS

    os.makedirs(CONFIG_DIR, exist_ok=True)
    for name, (key, sub) in DUMPS.items():
        config = HF_MODEL_CONFIGS[key]
        if sub:
            config = getattr(config, sub)
        d = config.to_dict()
        path = os.path.join(CONFIG_DIR, f"{name}.json")
        write_json_atomic(path, d, sort_keys=True)
        print(f"wrote {path} ({d.get('model_type')})")


def measure(config_path: str) -> dict:
    """One fresh interpreter reads `hf:<config_path>`; returns its timings, counts and peak RSS."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, f"hf:{config_path}"], capture_output=True, text=True,
                          env=env, timeout=300)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{config_path}: {proc.stderr.strip().splitlines()[-1:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def results_section(rows: list[tuple[str, dict]], command: str, load_before: float) -> str:
    machine = f"2-core CPU container ({platform.machine()}, Python {platform.python_version()})"
    lines = [SECTION, "",
             f"`hf:` trees of full-size configs, built on the meta device (no weight memory). Machine: {machine}. "
             f"Date: {datetime.datetime.now().astimezone().strftime('%a %b %d %H:%M:%S %Z %Y')}.",
             f"Command: `{command}`. One fresh interpreter per config; `wall` includes starting Python and importing "
             "torch + transformers + ckptmap (`import`), `read` is `read_tree` alone; peak RSS is the child's "
             "`ru_maxrss`. `read` still includes transformers' lazy import of the model's own modules (most of "
             "it); the "
             "machine is shared with other developers' jobs, so wall times vary with its load (1-minute load average "
             f"{load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after); `CPU s` (the child's user+system "
             "time) varies much less. Bytes use the "
             "config's dtype (float32 where it names none). Budget: < 10 s and < 1 GB each.", "",
             "| config | class | tensors | parameters | bytes | read s | import s | wall s | CPU s | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['cls']} | {r['tensors']:,} | {r['params'] / 1e9:.2f}B | "
                     f"{r['bytes'] / 2**30:.1f} GiB | {r['read_s']:.2f} | {r['import_s']:.2f} | {r['wall_s']:.2f} | "
                     f"{r['cpu_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """Put `section` in place of the existing `## Tree readers` section (up to the next `## `), or append it."""
    start = text.find(SECTION + "\n")
    if start < 0:
        return (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    end = text.find("\n## ", start + len(SECTION))
    tail = text[end + 1:] if end >= 0 else ""
    return text[:start] + section + ("\n" + tail if tail else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump-configs", action="store_true", help="(in .venv-maxtext) refresh the config files")
    parser.add_argument("--results", action="store_true", help=f"rewrite the '{SECTION}' section of RESULTS.md")
    parser.add_argument("names", nargs="*", help="config names (default: all in tests/data/hf_configs)")
    args = parser.parse_args(argv)
    if args.dump_configs:
        dump_configs()
        return 0
    names = args.names or sorted(n[:-5] for n in os.listdir(CONFIG_DIR) if n.endswith(".json"))
    rows = []
    load_before = os.getloadavg()[0]
    for name in names:
        r = measure(os.path.join(CONFIG_DIR, f"{name}.json"))
        rows.append((name, r))
        print(f"{name:18s} {r['cls']:32s} {r['tensors']:7,d} tensors {r['params'] / 1e9:8.2f}B params  "
              f"read {r['read_s']:5.2f}s  wall {r['wall_s']:5.2f}s  cpu {r['cpu_s']:5.2f}s  "
              f"peak {r['peak_rss_mb']:6.0f} MB", flush=True)
    if args.results:
        command = "HF_HUB_OFFLINE=1 .venv/bin/python ckptmap/benchmarks/bench_trees.py --results" + (
            " " + " ".join(args.names) if args.names else "")
        with open(RESULTS) if os.path.exists(RESULTS) else open(os.devnull) as f:
            text = f.read()
        new = replace_section(text, results_section(rows, command, load_before))
        write_text_atomic(RESULTS, new)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
