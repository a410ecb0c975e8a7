"""`ckptmap bench`: the benchmark suite against MaxText's own conversion (see ckptmap.benchmarks.suite).

`--quick` (CI): the fixture families, trees only (solver + offline baselines), against the committed ground
truth, no MaxText venv needed; exits 1 when ckptmap falls below ckptmap/benchmarks/data/quick_thresholds.json.
Without `--quick`: all methods, the ground truth regenerated first when the MaxText venv is there, the table
written into the `## Benchmark suite` section of ckptmap/benchmarks/RESULTS.md and the plot to ckptmap/benchmarks/accuracy.png.
"""

from __future__ import annotations

# lazy imports: a subcommand imports its own work when it runs, so that `ckptmap --help` and `ckptmap trees`
# start without the solver (OR-Tools), verify (torch on use) or the benchmarks.

import os
import shlex
import subprocess
import sys
import time

from ckptmap.errors import CkptmapError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
DEFAULT_RESULTS = os.path.join(REPO, "ckptmap", "benchmarks", "RESULTS.md")
DEFAULT_PLOT = os.path.join(REPO, "ckptmap", "benchmarks", "accuracy.png")
MAXTEXT_PYTHON = os.path.join(REPO, ".venv-maxtext", "bin", "python")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark ckptmap and baselines against MaxText's own mappings",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="fixture families, trees only, committed ground truth; fails below the thresholds")
    p.add_argument("--families", nargs="+", metavar="FAMILY", help="only these fixture families")
    p.add_argument("--scans", nargs="+", type=int, choices=[0, 1], default=[0, 1], help="scan settings (default 0 1)")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="methods to run (default: quick: ckptmap name-greedy shapes-only; full: all)")
    p.add_argument("--out", help="write the summary into the '## Benchmark suite' section of this Markdown file "
                                 "(default: ckptmap/benchmarks/RESULTS.md without --quick, nothing with it)")
    p.add_argument("--plot", help="write the accuracy bar plot PNG here (default: ckptmap/benchmarks/accuracy.png "
                                  "without --quick)")
    p.add_argument("--json", help="write every run's numbers and per-target verdicts as JSON here")
    p.add_argument("--thresholds", help="floors file (default ckptmap/benchmarks/data/quick_thresholds.json)")
    p.add_argument("--write-thresholds", action="store_true", help="record this run's ckptmap scores as the floors")
    p.add_argument("--no-regenerate", action="store_true",
                   help="without --quick: score against the committed ground truth instead of regenerating it")
    p.set_defaults(func=run)


def regenerate_ground_truth(families: list[str] | None) -> None:
    if not os.path.exists(MAXTEXT_PYTHON):
        print(f"ground truth: {MAXTEXT_PYTHON} not found; using the committed ground truth")
        return
    cmd = [MAXTEXT_PYTHON, "-m", "ckptmap.benchmarks.ground_truth"] + (["--families", *families] if families else [])
    print("ground truth: " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CkptmapError(f"regenerating the ground truth failed: {tail[0]}")
    for line in proc.stdout.splitlines():
        if "scan" in line or line.startswith("ground truth"):
            print("  " + line)


def _command(args) -> str:
    """The command line this run stands for, rebuilt from its options (for RESULTS.md)."""
    parts = ["ckptmap", "bench"]
    if args.quick:
        parts.append("--quick")
    for flag, value in (("--families", args.families), ("--methods", args.methods)):
        if value:
            parts += [flag, *value]
    if list(args.scans) != [0, 1]:
        parts += ["--scans", *map(str, args.scans)]
    for flag, value in (("--out", args.out), ("--plot", args.plot), ("--json", args.json)):
        if value:
            parts += [flag, value]
    if args.no_regenerate:
        parts.append("--no-regenerate")
    return " ".join(shlex.quote(p) for p in parts)


def _verdicts(result) -> list[dict]:
    out = []
    for r in result.runs:
        row = r.row()
        if r.score is not None:
            row["verdicts"] = {t.name: [t.verdict, t.detail, t.sources_ok] for t in r.score.targets}
        out.append(row)
    return out


def run(args) -> int:
    from ckptmap.benchmarks import report, suite, thresholds
    from ckptmap.mapping import write_json_atomic

    methods = tuple(args.methods or (suite.QUICK_METHODS if args.quick else suite.ALL_METHODS))
    unknown = [m for m in methods if m not in suite.MAPPERS]
    if unknown:
        raise CkptmapError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(suite.MAPPERS)}",
                           key="--methods")
    if not args.quick and not args.no_regenerate:
        regenerate_ground_truth(args.families)
    result = suite.run_suite(families=args.families, scans=tuple(args.scans), methods=methods)

    command = _command(args)
    date = time.strftime("%a %b %d %H:%M:%S %Z %Y")
    print()
    print(report.summary_table(result))
    print()
    print(report.case_table(result))
    notes = report.notes(result)
    if notes:
        print(notes)
    print(f"\nbench: {len(result.runs)} runs in {result.seconds:.1f} s")

    out = args.out or (None if args.quick else DEFAULT_RESULTS)
    if out:
        report.write_section(out, report.markdown(result, command=command, date=date))
        print(f"wrote the '{report.SECTION[3:]}' section of {out}")
    plot = args.plot or (None if args.quick else DEFAULT_PLOT)
    if plot:
        from ckptmap.benchmarks.plot import plot_accuracy

        print(f"wrote {plot_accuracy(result, plot)}")
    if args.json:
        write_json_atomic(args.json, {"command": command, "date": date, "seconds": round(result.seconds, 2),
                                      "unavailable": result.unavailable, "runs": _verdicts(result)})
        print(f"wrote {args.json}")

    path = args.thresholds or thresholds.PATH
    if args.write_thresholds:
        data = thresholds.write(result, path)
        print(f"wrote {sum(len(f['min']) for f in data['floors'])} floors ({', '.join(f['method'] for f in data['floors'])}) "
              f"to {path}")
        return 0
    if not args.quick:
        return 0
    failures = thresholds.check(result, thresholds.load(path))
    if failures:
        print(f"bench --quick: FAILED, below the floors of {path}:", file=sys.stderr)
        for line in failures:
            print("  " + line, file=sys.stderr)
        return 1
    print(f"bench --quick: at or above every floor in {os.path.relpath(path, REPO)}")
    return 0
