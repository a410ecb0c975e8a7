"""Trace one command's memory by phase: its RSS, anonymous and file-backed RSS (MB, /proc/PID/status) every 0.1 s,
cut into phases at the output lines that contain one of the given markers; the peak of each phase and of the run.

Used for MaxText's to_maxtext.py memory model (RESULTS.md, "Convert speed"): the markers are its own log lines.
The command's output is read, not kept (only the marker lines, with their time).

    .venv/bin/python -m ckptmap.benchmarks.rss_trace --json out.json --marker "Shard weights" --marker \\
        "Elapse for checkpoint sharding" -- /work/venv-mt-torch/bin/python -m maxtext.checkpoint_conversion.to_maxtext ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

# to_maxtext's (MaxText 0.2.5) log lines that open its phases
TO_MAXTEXT_MARKERS = ("Initializing MaxText abstract model", "Starting weight transformation",
                      "Starting checkpoint save", "Shard weights across", "Single device: Skip sharding",
                      "Elapse for checkpoint sharding", "Elapse for checkpoint save", "Conversion complete")


def _rss_mb(pid: int) -> tuple[int, int, int] | None:
    """(VmRSS, RssAnon, RssFile) in MB of a live process; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            d = dict(line.split(":", 1) for line in f if ":" in line)
        return tuple(int(d[k].split()[0]) // 1024 for k in ("VmRSS", "RssAnon", "RssFile"))  # type: ignore[return-value]
    except (OSError, KeyError, ValueError):
        return None


def trace(cmd: list[str], markers: tuple[str, ...], period: float = 0.1) -> dict:
    """Run `cmd`; its exit code, wall seconds, peaks, and per phase (the start marker line, its time) the peaks."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    t0 = time.perf_counter()
    events: list[tuple[float, str]] = [(0.0, "start")]
    samples: list[tuple[float, int, int, int]] = []

    def read() -> None:
        for line in p.stdout:  # type: ignore[union-attr]
            if any(m in line for m in markers):
                events.append((round(time.perf_counter() - t0, 2), line.strip()[-160:]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while p.poll() is None:
        r = _rss_mb(p.pid)
        if r:
            samples.append((round(time.perf_counter() - t0, 2), *r))
        time.sleep(period)
    reader.join()
    phases = []
    for (start, line), (end, _) in zip(events, events[1:] + [(float("inf"), "")]):
        seg = [s for s in samples if start <= s[0] < end]
        if seg:
            phases.append({"from_s": start, "marker": line, "peak_rss_mb": max(s[1] for s in seg),
                           "peak_anon_mb": max(s[2] for s in seg), "peak_file_mb": max(s[3] for s in seg)})
    return {"rc": p.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": max((s[1] for s in samples), default=None),
            "peak_anon_mb": max((s[2] for s in samples), default=None), "phases": phases}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: rss_trace [--json FILE] [--marker TEXT ...] -- COMMAND ...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the trace here too")
    ap.add_argument("--marker", action="append", default=None,
                    help="an output line containing this opens a phase (default: to_maxtext's log lines)")
    args = ap.parse_args(argv[:cut])
    result = trace(argv[cut + 1:], tuple(args.marker or TO_MAXTEXT_MARKERS))
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if result["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
