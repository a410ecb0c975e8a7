"""VerifyReport: the outcome of verifying (and searching) a mapping, as JSON and as a readable table."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckptmap.atomic import write_json_atomic, write_text_atomic
from ckptmap.verify.metrics import LogitStats


def _fmt(x) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return "-"
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    return f"{x:.2e}" if (x and (abs(x) < 1e-2 or abs(x) >= 1e4)) else f"{x:.4f}"


@dataclass
class VerifyReport:
    """passed: max per-token KL(source || target) <= kl_threshold. `stages`: relative error per stage.
    `first_divergence` / `suspects`: the first stage over tolerance and the target tensors feeding it.
    `broken`: target tensors a diagnosis showed to be wrong, with the change that fixed their stage.
    `trials` / `decisions`: the search log (every candidate with its stage error and KL) and what it settled."""

    passed: bool
    dtype: str
    kl_threshold: float
    tolerance: float
    logits: LogitStats | None
    stages: dict[str, float] = field(default_factory=dict)
    first_divergence: str | None = None
    suspects: list[str] = field(default_factory=list)
    broken: list[dict] = field(default_factory=list)
    trials: list = field(default_factory=list)
    decisions: list = field(default_factory=list)
    source: str = ""
    target: str = ""
    seed: int = 0
    tokens: int = 0
    forwards: int = 0
    timings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    # targets the forward passes do not test (target -> why), and how far the target's logits move when they change
    # (0.0: the target's forward pass does not read them either)
    unchecked: dict[str, str] = field(default_factory=dict)
    unchecked_logit_change: float | None = None
    # where the HF and MaxText configs disagree on what the models compute (config_diff.Disagreement), named
    # whether verify passes or not
    config_diff: list = field(default_factory=list)
    # the final check on a long sequence (api._long_range): tokens, kl_max, passed, ...; None: not run
    long_range: dict | None = None
    # MaxText's bf16 cast of a tied table: the logits as the models gave them, and the cast's measured effect
    raw_logits: LogitStats | None = None
    tied_cast: dict | None = None

    @property
    def kl_max(self) -> float:
        """The largest per-token KL verify measured: on the search's sequence and, where it ran, the long one."""
        kl = self.logits.kl_max if self.logits else float("inf")
        far = (self.long_range or {}).get("kl_max")
        return max(kl, float(far)) if isinstance(far, (int, float)) else kl

    def to_json(self) -> dict:
        return {
            "format": "ckptmap.verify_report", "version": 1,
            "passed": self.passed, "kl_max": _json_num(self.kl_max), "dtype": self.dtype,
            "kl_threshold": self.kl_threshold,
            "activation_tolerance": self.tolerance,
            "logits": self.logits.to_json() if self.logits else None,
            "stages": {k: _json_num(v) for k, v in self.stages.items()},
            "first_divergence": self.first_divergence, "suspects": self.suspects, "broken": self.broken,
            "decisions": [d.to_json() for d in self.decisions],
            "trials": [t.to_json() for t in self.trials],
            "source": self.source, "target": self.target, "seed": self.seed, "tokens": self.tokens,
            "forwards": self.forwards, "timings": {k: round(float(v), 3) for k, v in self.timings.items()},
            "notes": self.notes, "error": self.error,
            "unchecked": self.unchecked,
            "unchecked_logit_change": (None if self.unchecked_logit_change is None
                                       else _json_num(self.unchecked_logit_change)),
            "config_diff": [d.to_json() for d in self.config_diff],
            "long_range": ({k: (_json_num(v) if isinstance(v, float) else v) for k, v in self.long_range.items()}
                           if self.long_range is not None else None),
            "raw_logits": self.raw_logits.to_json() if self.raw_logits else None,
            "tied_cast": ({k: (_json_num(v) if isinstance(v, float) else v) for k, v in self.tied_cast.items()}
                          if self.tied_cast is not None else None),
        }

    def config_summary(self) -> str:
        """`rope scaling (all layers): HF default, MaxText llama3 (...) -- applied by model name llama3.1; ...`,
        or ''."""
        return "; ".join(d.describe() for d in self.config_diff)

    def unchecked_summary(self) -> str:
        """`355 targets not checked (the source model's forward pass does not read their sources)`, one clause per
        reason (the tower named by its first target), or ''."""
        if not self.unchecked:
            return ""
        by_reason: dict[str, list[str]] = {}
        for name, why in self.unchecked.items():
            by_reason.setdefault(why, []).append(name)
        parts = [f"{len(names)} with {why} (e.g. {names[0]})" for why, names in by_reason.items()]
        return f"{len(self.unchecked)} targets not checked by the forward passes: " + "; ".join(parts)

    def save(self, path: str) -> tuple[str, str]:
        """Write the report as JSON at `path` and as the readable table beside it (`.txt`), atomically."""
        text_path = (path[:-5] if path.endswith(".json") else path) + ".txt"
        write_json_atomic(path, self.to_json())
        write_text_atomic(text_path, self.table(max_trials_per_step=1000) + "\n")
        return path, text_path

    def table(self, max_trials_per_step: int = 5) -> str:
        """A readable summary: verdict, logit metrics, stage errors, decisions, and the best trials per step."""
        lines = []
        verdict = "PASS" if self.passed else "FAIL"
        if self.logits:
            s = self.logits
            lines.append(f"verify: {verdict}  max KL {_fmt(s.kl_max)} (threshold {_fmt(self.kl_threshold)}, "
                         f"{self.dtype})  mean KL {_fmt(s.kl_mean)}  max |logit diff| {_fmt(s.max_abs_diff)}  "
                         f"top-1 agreement {100 * s.top1_agreement:.1f}%  ({s.tokens} tokens, vocab {s.vocab})")
        else:
            lines.append(f"verify: {verdict}  {self.error}")
        lines.append(f"  source: {self.source}")
        lines.append(f"  target: {self.target}")
        if self.config_diff:
            lines.append(f"  config differences (HF vs MaxText, {len(self.config_diff)}):")
            for d in self.config_diff:
                lines.append(f"    - {d.describe()}")
        lr = self.long_range
        if lr:
            if "kl_max" in lr:
                lines.append(f"  long sequence ({lr['tokens']} tokens): {'pass' if lr.get('passed') else 'FAIL'}  "
                             f"max KL {_fmt(lr['kl_max'])} (threshold {_fmt(lr.get('kl_threshold'))})  top-1 "
                             f"{100 * lr.get('top1_agreement', 0):.1f}%"
                             + (f"  first divergence {lr['first_divergence']}" if lr.get("first_divergence") else ""))
            else:
                lines.append(f"  long sequence ({lr.get('tokens')} tokens): FAIL  {lr.get('error', '')}")
        t = self.timings
        lines.append(f"  {self.forwards} target forward passes, seed {self.seed}; "
                     + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
        if self.stages:
            lines.append("  stage errors (relative RMS): " + "  ".join(f"{k} {_fmt(v)}" for k, v in self.stages.items()))
        if self.first_divergence:
            lines.append(f"  first divergence: {self.first_divergence} (tolerance {_fmt(self.tolerance)})")
            if self.suspects:
                lines.append(f"  parameters in it: {', '.join(self.suspects[:12])}"
                             + (" ..." if len(self.suspects) > 12 else ""))
        for b in self.broken:
            lines.append(f"  broken: {', '.join(b['targets'])}  (fixed by: {b['fix']})")
        if self.unchecked:
            moved = self.unchecked_logit_change
            lines.append(f"  not checked: {self.unchecked_summary()}"
                         + ("" if moved is None else f" (changing them moves the target's logits by {moved:.1e})"))
        for n in self.notes:
            lines.append(f"  note: {n}")
        if self.decisions:
            lines.append("  decisions:")
            for d in self.decisions:
                lines.append(f"    rule {d.rule:3d}  {d.targets[0]:60s} {d.choice}")
        if self.trials:
            lines.append(f"  trials ({len(self.trials)}; best {max_trials_per_step} per step, * = accepted):")
            lines.append(f"    {'step':>4} {'stage':12} {'stage err':>10} {'max KL':>10}  move")
            steps = sorted({tr.step for tr in self.trials})
            for st in steps:
                rows = sorted((tr for tr in self.trials if tr.step == st),
                              key=lambda tr: (not tr.accepted, _key(tr.stage_error), _key(tr.kl_max)))
                for tr in rows[:max_trials_per_step]:
                    mark = "*" if tr.accepted else " "
                    lines.append(f"   {mark}{tr.step:>4} {tr.stage:12} {_fmt(tr.stage_error):>10} "
                                 f"{_fmt(tr.kl_max):>10}  {tr.move[:110]}")
        return "\n".join(lines)


def _key(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("inf")


def _json_num(x):
    x = float(x)
    return x if x == x and abs(x) != float("inf") else str(x)
