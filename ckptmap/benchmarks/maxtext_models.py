"""Every MaxText model with an HF counterpart: solve and verify its tiny pair (issue 11).

    python -m ckptmap.benchmarks.maxtext_models --out results.json [--only MODEL ...] [--scan on|off|both]
                                                 [--timeout 600] [--no-dedupe] [--plan-only]

1. *Plan*: MaxText's model ymls are enumerated (`ckptmap.verify.maxtext_catalog`). A model has an HF
   counterpart when MaxText pairs an HF config with it (`hf_model_configs.py`: "paired") or when one can be derived
   from its yml (`verify.maxtext_catalog.hf_config_from_maxtext`: "derived"; the HF config of a sibling with the same decoder
   block, or the transformers model type named like the block). Others (gpt3, envy, qwen3-custom) are listed with
   the reason. Each model's tiny pair is derived (`derive_tiny`); models whose tiny pairs are the same (qwen3-4b,
   qwen3-4b-base, ...) are run once and the others point at it (`same_as`), unless --no-dedupe. The plan runs in
   the MaxText venv (one process; it reads MaxText's configs in-process).
2. *Run*: `ckptmap solve MODEL --tiny --verify [--no-scan]` per model and scan setting, each in its own process
   with a timeout; the row records the HF class, the structural solve (targets mapped / unmapped), the verify
   verdict, max KL, top-1 agreement, seconds, and for a failure the lines that say why (the error, the first
   divergence, the config differences verify names).

The JSON is rewritten after every run, so a sweep stopped half-way keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from ckptmap.mapping import write_json_atomic
from ckptmap.verify.maxtext_catalog import hf_config_from_maxtext, maxtext_catalog
from ckptmap.verify.real_configs import ConfigError, last_line_in_maxtext_venv, real_configs
from ckptmap.verify.tiny import derive_tiny
from ckptmap.verify.tiny_keys import MAXTEXT_TO_HF_KEYS, MAXTEXT_TO_HF_LISTS

# ----------------------------------------------------------------------------------------------------------- plan

def _size_keys() -> set[str]:
    return set(MAXTEXT_TO_HF_KEYS) | set(MAXTEXT_TO_HF_LISTS) | {"vocab_size"}


def plan_in_process(only: list[str] | None = None) -> list[dict]:
    """One row per MaxText model yml: its HF counterpart, HF model type and class name, tiny pair, and a dedupe
    key (the tiny HF config, the tiny MaxText overrides and the yml's non-size keys)."""
    catalog = maxtext_catalog()
    sizes = _size_keys()
    rows = []
    for name in sorted(catalog["models"]):
        if only and name not in only:
            continue
        yml = catalog["models"][name]
        row = {"model": name, "decoder_block": yml.get("decoder_block")}
        try:
            if name in catalog["hf_models"]:
                real = real_configs(name)
                row["hf"] = "paired"
            else:
                hf, notes = hf_config_from_maxtext(name, catalog)
                real = None
                row["hf"] = "derived"
                row["derived_from"] = notes[0]
            pair = derive_tiny(name, real)
        except Exception as e:  # no HF counterpart (or no tiny pair): say why
            row["hf"] = None
            row["reason"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            rows.append(row)
            continue
        row["model_type"] = pair.hf_config.get("model_type")
        archs = (real or {}).get("hf", {}).get("architectures") if real else None
        row["hf_architecture"] = archs[0] if isinstance(archs, list) and archs else None
        row["tiny_notes"] = pair.notes
        row["tiny_hf_config"] = pair.hf_config
        row["maxtext_overrides"] = pair.maxtext_overrides
        rest = {k: v for k, v in yml.items() if k not in sizes}
        row["dedupe_key"] = json.dumps([pair.hf_config, sorted(pair.maxtext_overrides), rest], sort_keys=True,
                                       default=str)
        rows.append(row)
    return rows


def plan(only: list[str] | None = None) -> list[dict]:
    """plan_in_process, run in the MaxText venv unless MaxText imports here."""
    try:
        import maxtext  # noqa: F401
        return plan_in_process(only)
    except ImportError:
        pass

    args = ["ckptmap.benchmarks.maxtext_models", "--plan-json"] + (["--only", *only] if only else [])
    try:
        return json.loads(last_line_in_maxtext_venv(args, "the plan", timeout=1800))
    except ConfigError as e:
        stderr = getattr(e, "stderr", None)
        raise SystemExit(f"plan failed: {stderr.strip()[-2000:]}" if stderr else e.one_line()) from None


def hf_class(model_type: str | None) -> str | None:
    """transformers' causal-LM class for a model type (what verify runs)."""
    if not model_type:
        return None
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    except ImportError:
        return None


def dedupe(rows: list[dict]) -> None:
    """Rows whose tiny pairs are the same point at the first such row (`same_as`)."""
    first: dict[str, str] = {}
    for row in rows:
        key = row.get("dedupe_key")
        if key is None:
            continue
        if key in first:
            row["same_as"] = first[key]
        else:
            first[key] = row["model"]


# ------------------------------------------------------------------------------------------------------------ run

_RULES = re.compile(r"(\d+) rules, (\d+) target tensors mapped, (\d+) unmapped, (\d+) sources unused")
_VERIFY = re.compile(r"verify: (PASS|FAIL)\s+max KL (\S+) \(threshold (\S+), (\w+)\).*?top-1 agreement ([\d.]+)%")
_WHY = ("first divergence", "config differences", "    - ", "broken:", "note:", "error", "Error", "not checked")


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def parse_solve_output(text: str) -> dict:
    """The numbers `ckptmap solve --verify` prints: rules / mapped / unmapped, verdict, max KL, top-1."""
    out: dict = {}
    m = _RULES.search(text)
    if m:
        out.update(rules=int(m.group(1)), mapped=int(m.group(2)), unmapped=int(m.group(3)),
                   unused_sources=int(m.group(4)))
        out["structural_ok"] = out["unmapped"] == 0
    m = _VERIFY.search(text)
    if m:
        out.update(verify=m.group(1), kl_max=_float(m.group(2)), kl_threshold=_float(m.group(3)),
                   dtype=m.group(4), top1=float(m.group(5)) / 100)
    else:
        v = re.search(r"verify: (PASS|FAIL)\s+(.*)", text)
        if v:
            out.update(verify=v.group(1), verify_error=v.group(2).strip()[:300])
    return out


def _why(text: str) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if any(w in ln for w in _WHY) and "[transformers]" not in ln]
    return lines[:8]


def run_one(model: str, scan: bool, timeout: int, out_dir: str) -> dict:
    """`ckptmap solve MODEL --tiny --verify [--no-scan]` in its own process; a row of what it printed."""
    mapping = os.path.join(out_dir, f"{model}.scan{int(scan)}.mapping.json")
    cmd = [sys.executable, "-m", "ckptmap.cli", "solve", model, "--tiny", "--verify", "--allow-partial",
           "--out", mapping] + ([] if scan else ["--no-scan"])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.time()
    row: dict = {"model": model, "scan": scan, "command": f"ckptmap solve {model} --tiny --verify"
                 + ("" if scan else " --no-scan")}
    try:
        # cwd: the output folder, where no folder named like a package (`maxtext`) shadows an import
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=out_dir)
        text = proc.stdout + "\n" + proc.stderr
        row["rc"] = proc.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        row["rc"] = None
        row["timed_out"] = True
    row["seconds"] = round(time.time() - t0, 1)
    row.update(parse_solve_output(text))
    row["passed"] = row.get("verify") == "PASS" and row.get("structural_ok", False)
    if not row["passed"] and maxtext_build_error(text):
        # MaxText's own error building its model from the tiny overrides: not a ckptmap failure, say what it said
        row["maxtext_cannot_build"] = maxtext_build_error(text)
    if not row["passed"]:
        row["why"] = _why(text) or [ln for ln in text.strip().splitlines()[-3:]]
    return row


_MAXTEXT_CANNOT_BUILD = re.compile(r"MaxText could not build the model: (.*)")
_NAME_LIST = re.compile(r"(model_name / )?Input should be ('[^']*'(?:, '[^']*')*)(?:, '[^']*)?\.*(?: or '[^']*')?")


def maxtext_build_error(text: str) -> str:
    """MaxText's own error where it could not build its model (pydantic's list of allowed model names left out),
    or ''."""
    m = _MAXTEXT_CANNOT_BUILD.search(text)
    if not m:
        return ""
    msg = _short(m.group(1))
    names = _NAME_LIST.search(msg)
    if names:
        msg = msg[:names.start()] + "model_name is not among the model names MaxText's config accepts"
    return msg[:400]


def outcome(run: dict) -> str:
    """"pass", "maxtext_cannot_build" (MaxText's own error building its model), "timeout" or "fail"."""
    if run.get("passed"):
        return "pass"
    if run.get("maxtext_cannot_build") or any(maxtext_build_error(w) for w in run.get("why", [])):
        return "maxtext_cannot_build"
    return "timeout" if run.get("timed_out") else "fail"


def order(rows: list[dict]) -> list[dict]:
    """The models to run, most telling first (a sweep under a time budget runs these): the models MaxText ships
    no HF config for, then the first model of each decoder block, then the rest; repeats of another's tiny pair
    are not run."""
    todo = [r for r in rows if r.get("hf") and not r.get("same_as")]
    seen: set = set()

    def tier(r: dict) -> int:
        if r["hf"] == "derived":
            return 0
        if r.get("decoder_block") not in seen:
            seen.add(r.get("decoder_block"))
            return 1
        return 2

    tiers = [(tier(r), i) for i, r in enumerate(todo)]
    return [todo[i] for _, i in sorted(tiers)]


def _fmt_kl(v) -> str:
    return "-" if v is None else f"{v:.1e}"


def _short(text: str) -> str:
    """A failure line without the spec it repeats (`maxtext:MODEL k=v ...:`, `parameter 'x': x:`)."""
    text = re.sub(r"maxtext:\S+(?: [\w.]+=\S+)*:\s*", "", text)
    text = re.sub(r"parameter '([^']*)': \1: ", "", text)
    text = re.sub(r"\s*\[type=value_error.*", "", text)
    return text.replace("|", "/").strip()


def markdown(results: list[dict], earlier: int | None = None) -> str:
    """The RESULTS.md table: one row per MaxText model (scan settings side by side), from one or more sweep JSONs,
    oldest first (later files' runs and plan rows win); a run from the first `earlier` files (default: all but
    the last) is marked "earlier sweep"."""
    earlier = len(results) - 1 if earlier is None else earlier
    models: dict[str, dict] = {}
    runs: dict[tuple[str, bool], dict] = {}
    for age, res in enumerate(results):
        for row in res.get("models", []):
            models[row["model"]] = row
        for run in res.get("runs", []):
            if "not_run" not in run or (run["model"], run["scan"]) not in runs:
                runs[(run["model"], run["scan"])] = dict(run, earlier=age < earlier and "not_run" not in run)

    def cell(model: str, scan: bool) -> str:
        run = runs.get((model, scan))
        if run is None or "not_run" in run:
            return "not run"
        mark = " (earlier sweep)" if run.get("earlier") else ""
        if outcome(run) == "maxtext_cannot_build":
            return f"MaxText cannot build / - / - / {run.get('seconds', '-')}{mark}"
        solved = "ok" if run.get("structural_ok") else (f"{run.get('unmapped')} unmapped" if "unmapped" in run
                                                        else "no solve")
        verdict = "PASS" if run.get("passed") else ("timeout" if run.get("timed_out") else "FAIL")
        return f"{solved} / {verdict} / {_fmt_kl(run.get('kl_max'))} / {run.get('seconds', '-')}{mark}"

    lines = ["| MaxText model | HF class | HF config | scan1: solve / verify / max KL / s | "
             "scan0: solve / verify / max KL / s | why (failures) |", "|---|---|---|---|---|---|"]
    for name in sorted(models):
        row = models[name]
        if not row.get("hf"):
            lines.append(f"| {name} | - | none | - | - | no HF counterpart: {_short(row.get('reason', ''))[:160]} |")
            continue
        src = "paired" if row["hf"] == "paired" else "derived from yml"
        if row.get("same_as"):
            lines.append(f"| {name} | {row.get('hf_class') or row.get('model_type')} | {src} | "
                         f"same tiny pair as {row['same_as']} | | |")
            continue
        why = []
        for scan in (True, False):
            run = runs.get((name, scan))
            if run and outcome(run) == "maxtext_cannot_build":
                line = "MaxText's error: " + (run.get("maxtext_cannot_build") or next(
                    maxtext_build_error(w) for w in run.get("why", []) if maxtext_build_error(w)))
                why += [line] if line not in why else []
            elif run and not run.get("passed") and "not_run" not in run:
                why += [w for w in run.get("why", []) if w not in why][:2]
        text = "; ".join(_short(w)[:220] for w in why)
        lines.append(f"| {name} | {row.get('hf_class') or row.get('model_type')} | {src} | {cell(name, True)} | "
                     f"{cell(name, False)} | {text} |")
    counts: dict[str, dict[str, int]] = {}
    for (model, scan), run in runs.items():
        if "not_run" not in run and not (models.get(model) or {}).get("same_as"):
            by = counts.setdefault(f"scan{int(scan)}", {})
            by[outcome(run)] = by.get(outcome(run), 0) + 1
    per_model: dict[str, str] = {}
    for (model, scan), run in runs.items():
        if "not_run" in run or (models.get(model) or {}).get("same_as"):
            continue
        rank = ("pass", "fail", "timeout", "maxtext_cannot_build")
        got = outcome(run)
        have = per_model.get(model)
        per_model[model] = got if have is None or rank.index(got) < rank.index(have) else have
    by_model = {k: sum(1 for v in per_model.values() if v == k) for k in ("pass", "fail", "timeout",
                                                                          "maxtext_cannot_build")}
    not_run = [m for m, row in models.items() if row.get("hf") and not row.get("same_as") and m not in per_model]
    summary = ["", f"Distinct tiny pairs: {len(per_model) + len(not_run)}; best scan setting per model: "
               + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in by_model.items())
               + f", {len(not_run)} not run" + (f" ({', '.join(sorted(not_run))})" if not_run else "") + ".",
               "Counts (distinct tiny pairs run): " + "; ".join(
        f"{scan}: " + ", ".join(f"{by.get(k, 0)} {k.replace('_', ' ')}" for k in
                                ("pass", "fail", "timeout", "maxtext_cannot_build"))
        for scan, by in sorted(counts.items(), reverse=True))]
    return "\n".join(lines + summary)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ckptmap.benchmarks.maxtext_models", description=__doc__.split("\n")[0])
    p.add_argument("--out", help="results JSON (rewritten after every run)")
    p.add_argument("--only", nargs="+", help="these MaxText models only")
    p.add_argument("--scan", choices=("on", "off", "both"), default="on")
    p.add_argument("--timeout", type=int, default=600, help="seconds per run (default 600)")
    p.add_argument("--no-dedupe", action="store_true", help="run models whose tiny pair repeats another's too")
    p.add_argument("--budget", type=float, default=0, help="stop starting runs after this many seconds (0: none)")
    p.add_argument("--resume", action="store_true", help="keep the runs an earlier --out file already has")
    p.add_argument("--plan-only", action="store_true", help="write the plan (counterparts, tiny pairs), run nothing")
    p.add_argument("--plan-json", action="store_true", help=argparse.SUPPRESS)  # the MaxText venv's half
    p.add_argument("--table", nargs="+", metavar="RESULTS_JSON", help="print the markdown table of sweep results")
    p.add_argument("--earlier", type=int, help="with --table: the first N files are an earlier sweep (default: all "
                                               "but the last)")
    args = p.parse_args(argv)
    if args.table:
        results = []
        for path in args.table:
            with open(path) as f:
                results.append(json.load(f))
        print(markdown(results, args.earlier))
        return 0
    if args.plan_json:
        print(json.dumps(plan_in_process(args.only), default=str))
        return 0
    if not args.out:
        p.error("--out is required")
    rows = plan(args.only)
    if not args.no_dedupe:
        dedupe(rows)
    for row in rows:
        row["hf_class"] = hf_class(row.get("model_type")) or row.get("hf_architecture")
    result = {"format": "ckptmap.maxtext_models", "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": os.environ.get("CKPTMAP_MACHINE", ""), "timeout_s": args.timeout, "models": rows,
              "runs": []}
    if args.resume and os.path.exists(args.out):
        os.replace(args.out, args.out + ".prev")
    write_json_atomic(args.out, result)
    if args.plan_only:
        return 0
    scans = {"on": [True], "off": [False], "both": [True, False]}[args.scan]
    out_dir = os.path.splitext(args.out)[0] + ".mappings"
    os.makedirs(out_dir, exist_ok=True)
    todo = order(rows)
    done = {}
    if args.resume and os.path.exists(args.out + ".prev"):
        with open(args.out + ".prev") as f:
            done = {(r["model"], r["scan"]): r for r in json.load(f).get("runs", [])}
    t_start = time.time()
    for i, row in enumerate(todo):
        for scan in scans:
            if (row["model"], scan) in done:
                result["runs"].append(done[(row["model"], scan)])
                continue
            if args.budget and time.time() - t_start > args.budget:
                result["runs"].append({"model": row["model"], "scan": scan, "not_run": "sweep time budget spent"})
                continue
            run = run_one(row["model"], scan, args.timeout, out_dir)
            result["runs"].append(run)
            write_json_atomic(args.out, result)
            if scan and False not in scans and "scan_layers=False" in run.get("maxtext_cannot_build", ""):
                # MaxText builds this model unscanned only (deepstack, per-layer KV sharing): run that too
                more = run_one(row["model"], False, args.timeout, out_dir)
                result["runs"].append(more)
                write_json_atomic(args.out, result)
                print(f"[{i + 1}/{len(todo)}] {row['model']:28s} scan0 {'PASS' if more['passed'] else 'FAIL':4s} "
                      f"(MaxText builds it unscanned only)  KL {more.get('kl_max', '-')}  {more['seconds']}s",
                      flush=True)
            kl = run.get("kl_max")
            print(f"[{i + 1}/{len(todo)}] {row['model']:28s} scan{int(scan)} "
                  f"{'PASS' if run['passed'] else 'FAIL':4s} "
                  f"mapped {run.get('mapped', '-')}/{run.get('unmapped', '-')} unmapped  "
                  f"KL {kl if kl is not None else '-'}  {run['seconds']}s", flush=True)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
