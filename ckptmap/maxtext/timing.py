"""Time a MaxText session end to end: worker start + build, abstract tree, init, first and repeated forward.

    python -m ckptmap.maxtext.timing tests/data/maxtext_tiny/llama3.1/config.json [more configs ...] [--scan 0|1]

Each config is a fixture config.json (`maxtext_model_name`, `maxtext_overrides`). The first model pays for the
worker process and the JAX / MaxText imports; later ones reuse the worker. Prints one JSON line per model, with
the worker's peak resident memory (VmHWM) and CPU seconds so far (Linux) when the subprocess transport is used.
"""

from __future__ import annotations

# lazy imports: MaxText, jax and flax exist only in the worker's venv (.venv-maxtext); the client side imports
# this package without them, and the worker's modules load each other only where they run.

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def time_one(config_path: str, scan: int, seq: int = 64) -> dict:
    from ckptmap import maxtext

    cfg = json.loads(Path(config_path).read_text())
    t0 = time.perf_counter()
    s = maxtext.session(cfg["maxtext_model_name"], list(cfg["maxtext_overrides"]) + [f"scan_layers={bool(scan)}".lower()])
    tree = s.abstract_tree()
    t_tree = time.perf_counter()
    params = s.init(seed=0)
    t_init = time.perf_counter()
    vocab = int(tree.meta["config"]["vocab_size"])
    tokens = ((np.arange(seq) * 37 + 11) % vocab).astype(np.int32)[None]
    s.forward(params, tokens)
    t_fwd1 = time.perf_counter()
    s.forward(params, tokens)
    t_fwd2 = time.perf_counter()
    row = {"model": cfg["maxtext_model_name"], "scan_layers": bool(scan), "params": len(tree),
           "start_build_tree_s": round(t_tree - t0, 2), "init_s": round(t_init - t_tree, 2),
           "first_forward_s": round(t_fwd1 - t_init, 2), "next_forward_s": round(t_fwd2 - t_fwd1, 3),
           "total_s": round(t_fwd2 - t0, 2), "worker_reused": s.timings.get("worker_reused", False),
           "transport": s.transport_kind}
    worker = getattr(s._backend, "worker", None)
    if worker is not None:
        row["worker_peak_rss_mb"] = _peak_rss_mb(worker.proc.pid)
        row["worker_cpu_s_so_far"] = _cpu_s(worker.proc.pid)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--scan", type=int, choices=(0, 1), default=0)
    args = parser.parse_args(argv)
    for path in args.configs:
        print(json.dumps(time_one(path, args.scan)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
