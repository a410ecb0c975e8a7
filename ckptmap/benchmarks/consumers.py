"""The round trip through the real consumers: a tiny HF checkpoint -> solve --verify -> convert -> MaxText's own
loaders -> logits against HF; then back to an HF directory that transformers' `from_pretrained` loads; and a
checkpoint MaxText itself saved -> convert --reverse -> `from_pretrained` -> logits against MaxText.

    python -m ckptmap.benchmarks.consumers MODEL [MODEL ...] [--scan both|on|off] [--dtype float32|bfloat16]
                                           [--out results.json]

Each `ckptmap` step runs as its own process (the command a user types), timed, with the peak resident memory of its
process tree (the MaxText worker included) sampled at 20 Hz. KL is per-token KL(reference || consumer), max over
the tokens (ckptmap.verify.metrics.compare_logits), in float32.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import psutil

from ckptmap.atomic import write_json_atomic, write_text_atomic
from ckptmap.checkpoint_io import read_all
from ckptmap.cli import main as cli_main
from ckptmap.maxtext import session
from ckptmap.verify import tiny_specs
from ckptmap.verify.metrics import KL_FLOAT32_TIED_CAST, compare_logits

SEQ = 24  # tokens per logit check
KL_BAR = 1e-6  # float32, both directions (measured ~1e-13 on untied models)
SHOW_COMMANDS = False  # print each ckptmap command before it runs (--show-commands; `make demo`)


@dataclass
class Step:
    name: str
    seconds: float
    peak_rss_mb: float
    ok: bool
    detail: str = ""


@dataclass
class ConsumerResult:
    model: str
    scan: bool
    dtype: str
    hf_class: str = ""
    steps: list[Step] = field(default_factory=list)
    kl: dict[str, float] = field(default_factory=dict)  # check -> max KL
    bit_exact_back: bool | None = None
    error: str = ""

    tied: bool = False  # the HF config ties the embedding and the LM head

    def bar(self, check: str) -> float:
        """The KL a check must stay under: 1e-6; where MaxText computes a tied model's logits through its bf16 cast
        of the table (its own behaviour on any checkpoint, not the mapping's), verify's tied-cast mark."""
        return KL_FLOAT32_TIED_CAST if self.tied and check.startswith("maxtext ") else KL_BAR

    @property
    def passed(self) -> bool:
        return not self.error and all(s.ok for s in self.steps) and bool(self.kl) and all(
            v < self.bar(k) for k, v in self.kl.items())

    def to_json(self) -> dict:
        return {"model": self.model, "scan": self.scan, "dtype": self.dtype, "hf_class": self.hf_class,
                "tied": self.tied,
                "passed": self.passed, "kl": self.kl, "bit_exact_back": self.bit_exact_back, "error": self.error,
                "steps": [s.__dict__ for s in self.steps]}


def _tree_rss(proc) -> float:
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 1e6


def run_cli(name: str, args: list[str], env: dict | None = None, *, in_process: bool = False) -> Step:
    """`ckptmap ARGS` as a process: seconds, peak RSS of its process tree, exit status and the last stderr line.
    `in_process`: through `ckptmap.cli.main` in this process instead (tests: one MaxText worker for every step;
    no memory is measured)."""
    if in_process:
        t0 = time.perf_counter()
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli_main(list(args))
        lines = err.getvalue().strip().splitlines()
        detail = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
        return Step(name, time.perf_counter() - t0, 0.0, code == 0, detail[-300:] if code else "")

    cmd = [sys.executable, "-m", "ckptmap.cli", *args]
    if SHOW_COMMANDS:
        print("$ ckptmap " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        handle = psutil.Process(p.pid)
        peak = 0.0
        while p.poll() is None:
            peak = max(peak, _tree_rss(handle))
            time.sleep(0.05)
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()
    detail = next((line for line in reversed(tail) if "error" in line.lower()), tail[-1] if tail else "")
    return Step(name, time.perf_counter() - t0, peak, p.returncode == 0, detail[-300:] if p.returncode else "")


def _tokens(vocab: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(1, SEQ)).astype(np.int64)


def hf_logits(model_dir: str, tokens: np.ndarray) -> tuple[np.ndarray, str]:
    """(logits float32, class name) of `AutoModelForCausalLM.from_pretrained(model_dir)` in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(tokens)).logits
    return out.float().numpy(), type(model).__name__


def save_tiny_hf(config: dict, out: str, dtype: str, seed: int = 0) -> str:
    """A tiny HF model from `config` with seeded random weights, saved as a safetensors model directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    with torch.no_grad():  # norms and biases too, so that a misplaced one shows in the logits
        for p in model.parameters():
            # bf16-representable values: MaxText casts a tied embedding table to bf16 for the logits, and that
            # cast must not be mistaken for the mapping (verify draws its weights the same way)
            p.copy_(torch.randn(p.shape).mul_(0.5 if p.ndim == 1 else 0.08).to(torch.bfloat16).to(p.dtype))
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    return type(model).__name__


def run_case(model: str, scan: bool, workdir: str, dtype: str = "float32", *, in_process: bool = False,
             orbax_flags: tuple[str, ...] = ()) -> ConsumerResult:
    """One model through every consumer; `orbax_flags` (convert flags: --orbax-ocdbt, --processes 2, ...) choose how
    the Orbax output is stored and written."""
    res = ConsumerResult(model, scan, dtype)
    src_spec, tgt_spec = tiny_specs(model)
    tgt_spec = f"{tgt_spec} scan_layers={'true' if scan else 'false'}"
    with open(src_spec[3:].split()[0]) as f:
        config = json.load(f)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    res.tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    hf_dir, mapping = os.path.join(workdir, "hf"), os.path.join(workdir, "mapping.json")
    mt_dir, back_dir = os.path.join(workdir, "mt.orbax"), os.path.join(workdir, "hf_back")
    try:
        t0 = time.perf_counter()
        res.hf_class = save_tiny_hf(config, hf_dir, dtype)
        res.steps.append(Step("hf save_pretrained", time.perf_counter() - t0, 0.0, True))
        steps = [
            ("solve --verify", ["solve", "--source", f"hf:{hf_dir}/config.json", "--target", tgt_spec, "--verify",
                                "--quiet", "--out", mapping]),
            ("convert -> orbax", ["convert", "--mapping", mapping, "--input", hf_dir, "--output", f"orbax:{mt_dir}",
                                  "--quiet", "--require-verified", *orbax_flags]),
            ("convert --reverse -> hf dir", ["convert", "--mapping", mapping, "--input", mt_dir, "--output", back_dir,
                                             "--reverse", "--quiet", "--require-verified"]),
        ]
        for name, args in steps:
            step = run_cli(name, args, in_process=in_process)
            res.steps.append(step)
            if not step.ok:
                res.error = f"{name}: {step.detail}"
                return res
        mt_name, *overrides = shlex.split(tgt_spec[len("maxtext:"):])
        mt = session(mt_name, overrides)
        vocab = int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size"))
        tokens = _tokens(vocab)
        reference, _ = hf_logits(hf_dir, tokens)
        items = os.path.join(mt_dir, "0", "items")
        t0 = time.perf_counter()
        loaded = mt.load_checkpoint(items)
        res.kl["maxtext load_params_from_path"] = compare_logits(reference, mt.forward(loaded, tokens).logits).kl_max
        res.steps.append(Step("maxtext load_params_from_path + forward", time.perf_counter() - t0, 0.0, True))
        t0 = time.perf_counter()
        res.kl["maxtext from_pretrained"] = compare_logits(reference, mt.from_pretrained_logits(items, tokens)).kl_max
        res.steps.append(Step("maxtext from_pretrained + forward", time.perf_counter() - t0, 0.0, True))
        t0 = time.perf_counter()
        back, _ = hf_logits(back_dir, tokens)
        res.kl["hf from_pretrained (round trip)"] = compare_logits(reference, back).kl_max
        res.bit_exact_back = _same_tensors(hf_dir, back_dir)
        res.steps.append(Step("hf from_pretrained (round trip)", time.perf_counter() - t0, 0.0, True))
        _maxtext_written(res, mt, mapping, workdir, tokens, in_process)
    except Exception as e:  # noqa: BLE001 - one case's failure is reported, the sweep goes on
        res.error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return res


def _maxtext_written(res: ConsumerResult, mt, mapping: str, workdir: str, tokens: np.ndarray,
                     in_process: bool = False) -> None:
    """MaxText's own random init, saved by MaxText's own conversion save, converted back to an HF directory."""
    written, hf_out = os.path.join(workdir, "maxtext_written"), os.path.join(workdir, "hf_from_maxtext")
    import ml_dtypes

    # MaxText's own init, rounded to bf16-representable values for the reason save_tiny_hf gives
    params = {k: (v.astype(ml_dtypes.bfloat16).astype(v.dtype) if v.dtype == np.float32 else v)
              for k, v in mt.init(seed=3).items()}
    t0 = time.perf_counter()
    mt.save_checkpoint(written, params)
    res.steps.append(Step("maxtext save (its own saver)", time.perf_counter() - t0, 0.0, True))
    step = run_cli("convert --reverse maxtext-written -> hf dir",
                   ["convert", "--mapping", mapping, "--input", written, "--output", hf_out, "--reverse", "--quiet"],
                   in_process=in_process)
    res.steps.append(step)
    if not step.ok:
        res.error = f"{step.name}: {step.detail}"
        return
    reference = mt.forward(params, tokens).logits
    got, _ = hf_logits(hf_out, tokens)
    res.kl["maxtext-written -> hf from_pretrained"] = compare_logits(reference, got).kl_max


def _same_tensors(a: str, b: str) -> bool:
    x, y = read_all(a), read_all(b)
    return sorted(x) == sorted(y) and all(x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes() for k in x)


def markdown(results: list[dict]) -> str:
    """Two tables: KL per consumer check, then seconds and peak RSS per step."""
    checks = ["maxtext load_params_from_path", "maxtext from_pretrained", "hf from_pretrained (round trip)",
              "maxtext-written -> hf from_pretrained"]
    lines = ["| model | scan | dtype | HF class | " + " | ".join(checks) + " | HF->MT->HF bit-exact | pass |",
             "|---" * (len(checks) + 6) + "|"]
    for r in results:
        kl = [f"{r['kl'][c]:.1e}" if c in r["kl"] else "-" for c in checks]
        lines.append(f"| {r['model']} | {int(r['scan'])} | {r['dtype']} | {r['hf_class']} | " + " | ".join(kl)
                     + f" | {r['bit_exact_back']} | {'PASS' if r['passed'] else 'FAIL: ' + r['error'][:80]} |")
    steps = [s["name"] for s in results[0]["steps"]] if results else []
    lines += ["", "| model | scan | dtype | " + " | ".join(steps) + " |", "|---" * (len(steps) + 3) + "|"]
    for r in results:
        cells = []
        for name in steps:
            s = next((x for x in r["steps"] if x["name"] == name), None)
            cells.append("-" if s is None else (f"{s['seconds']:.1f} s" + (f", {s['peak_rss_mb']:.0f} MB"
                                                                             if s["peak_rss_mb"] else "")))
        lines.append(f"| {r['model']} | {int(r['scan'])} | {r['dtype']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m ckptmap.benchmarks.consumers", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--scan", choices=["both", "on", "off"], default="both")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--out", default=None)
    p.add_argument("--show-commands", action="store_true", help="print each ckptmap command as it runs")
    p.add_argument("--in-process", action="store_true",
                   help="run the ckptmap commands in this process (one MaxText worker for all; no memory measured)")
    args = p.parse_args(argv)
    global SHOW_COMMANDS
    SHOW_COMMANDS = args.show_commands
    scans = {"both": [False, True], "on": [True], "off": [False]}[args.scan]
    results = []
    for model in args.models:
        for scan in scans:
            with tempfile.TemporaryDirectory(prefix="ckptmap-consumer-") as work:
                r = run_case(model, scan, work, args.dtype, in_process=args.in_process)
            results.append(r.to_json())
            kl = ", ".join(f"{k} {v:.2e}" for k, v in r.kl.items())
            print(f"{model} scan={int(scan)} {args.dtype}: {'PASS' if r.passed else 'FAIL'}  {kl}  {r.error}",
                  flush=True)
            for s in r.steps:
                print(f"    {s.name:45s} {s.seconds:7.2f} s  {s.peak_rss_mb:8.0f} MB  {'ok' if s.ok else s.detail}")
    if args.out:
        write_json_atomic(args.out, results)
        write_text_atomic(os.path.splitext(args.out)[0] + ".md", markdown(results))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
