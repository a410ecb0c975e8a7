"""`ckptmap check`: a converted checkpoint against its source, both run on their real weights by their own frameworks.

`check_checkpoints(mapping, source_path, converted_path, ...)` opens each checkpoint in the model its side of the
mapping names (ckptmap.frameworks adapters' `checkpoint_model`: transformers' from_pretrained, MaxText's
load_params_from_path), one side at a time so that only one set of weights is held, runs both on the same prompts
(seeded token sequences, and a user's file) and compares, as verify does on random weights:

- logits: per-token KL(source || converted) max and mean, max |logit diff|, top-1 agreement (verify.metrics);
- per-stage activations (`embed`, `layer_i`, `final_norm`, `logits`): the first stage that diverges
  (verify.localise), the mapping's targets that feed it, and among them the tensors of the converted checkpoint
  that differ from what the mapping makes of the source checkpoint's tensors (read back rule by rule, so memory stays
  at the stage's rules).

The pass mark is the max per-token KL (`KL_CHECK`, per the lowest precision either checkpoint stores).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from ckptmap import frameworks, storage
from ckptmap.apply import apply_rule, read_cell
from ckptmap.atomic import write_text_atomic
from ckptmap.checkpoint_io import open_reader
from ckptmap.errors import CkptmapError
from ckptmap.mapping import Mapping
from ckptmap.runner import Forward
from ckptmap.trees.model import parse_name
from ckptmap.trees.spec import parse_spec
from ckptmap.verify.localise import _stage_layers, first_divergence, rules_in_stage, stage_errors
from ckptmap.verify.metrics import KL_BFLOAT16, KL_FLOAT16, LogitStats, activation_tolerance, compare_logits

# Max per-token KL for a converted checkpoint to pass, by the lowest precision the two checkpoints store.
# float32: the mark for real weights (100x verify's random-weight mark: a real model's peaked distributions
# and full-size reductions raise the round-off floor; a correct 100M llama conversion measures ~1e-11, a wrong tensor
# 1e-2 and more, ckptmap/benchmarks/RESULTS.md "ckptmap check"); half precision: verify's marks (the models' own round-off).
KL_CHECK = {"float32": 1e-5, "bfloat16": KL_BFLOAT16, "float16": KL_FLOAT16}
DEFAULT_PROMPTS = 4      # seeded token sequences
DEFAULT_SEQ_LEN = 64     # tokens each
PROMPT_SEED = 1234


class CheckError(CkptmapError):
    """A check that cannot be run: bad prompts, a side with no model to run it in."""


# ------------------------------------------------------------------------------------------------------ prompts

def seeded_prompts(vocab: int, count: int = DEFAULT_PROMPTS, seq_len: int = DEFAULT_SEQ_LEN,
                   seed: int = PROMPT_SEED) -> list[np.ndarray]:
    """`count` token sequences [seq_len] drawn uniformly from [0, vocab), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=seq_len).astype(np.int64) for _ in range(count)]


def read_prompts(path: str, vocab: int) -> list[np.ndarray]:
    """Token-id prompts from `path`: a JSON list of lists of ints, or text with one prompt per line (ids separated
    by spaces or commas; blank lines and `#` lines skipped). Every id must be in [0, vocab)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CheckError(f"cannot read the prompts: {e.strerror}", file=path) from None
    rows: list[tuple[str, list]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckError(f"invalid JSON: {e.msg} at line {e.lineno}", file=path) from None
        if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
            raise CheckError("expected a JSON list of token-id lists", file=path)
        rows = [(f"prompt {i}", r) for i, r in enumerate(data)]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append((f"line {n}", line.replace(",", " ").split()))
    out = []
    for where, row in rows:
        try:
            ids = np.array([int(x) for x in row], dtype=np.int64)
        except (TypeError, ValueError):
            raise CheckError("token ids must be integers", file=path, key=where) from None
        if ids.size == 0:
            raise CheckError("an empty prompt", file=path, key=where)
        if ids.min() < 0 or ids.max() >= vocab:
            raise CheckError(f"token id {int(ids.max() if ids.max() >= vocab else ids.min())} outside the "
                             f"vocabulary [0, {vocab})", file=path, key=where)
        out.append(ids)
    if not out:
        raise CheckError("no prompts in the file", file=path)
    return out


def batches(prompts: list[np.ndarray]) -> list[np.ndarray]:
    """Prompts grouped by length into [batch, seq] arrays (one compiled shape per length), in first-seen order."""
    groups: dict[int, list[np.ndarray]] = {}
    for p in prompts:
        groups.setdefault(len(p), []).append(p)
    return [np.stack(g) for g in groups.values()]


# ------------------------------------------------------------------------------------------------------- report

@dataclass
class TensorDiff:
    """One target tensor of the converted checkpoint against what the mapping makes of the source checkpoint."""

    name: str
    max_abs_diff: float
    fraction_differing: float
    cells: list[list[int]] = field(default_factory=list)  # grid cells (layers, experts) that differ, where stacked
    missing: bool = False


@dataclass
class CheckReport:
    passed: bool
    stats: LogitStats
    kl_threshold: float
    dtype: str
    stage_errors: dict[str, float]
    first_divergence: str | None
    stage_targets: list[str]
    tensor_diffs: list[TensorDiff]
    prompts: int
    source: dict
    converted: dict
    timings: dict

    def to_json(self) -> dict:
        return {"passed": self.passed, "kl_threshold": self.kl_threshold, "dtype": self.dtype,
                **self.stats.to_json(), "prompts": self.prompts, "stage_errors": self.stage_errors,
                "first_divergence": self.first_divergence, "stage_targets": self.stage_targets,
                "tensor_diffs": [d.__dict__ for d in self.tensor_diffs],
                "source": self.source, "converted": self.converted, "timings": self.timings}

    def table(self) -> str:
        s = self.stats
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"check: {verdict}  max KL {s.kl_max:.3g} (threshold {self.kl_threshold:.2g}, {self.dtype})"
                 f"  mean KL {s.kl_mean:.3g}  max |logit diff| {s.max_abs_diff:.3g}  top-1 agreement "
                 f"{100 * s.top1_agreement:.1f}%  ({self.prompts} prompts, {s.tokens} tokens, vocab {s.vocab})",
                 f"  source:    {self.source['path']}  [{self.source['model']}]",
                 f"  converted: {self.converted['path']}  [{self.converted['model']}]",
                 "  stage errors (relative RMS): " + "  ".join(f"{k} {v:.3g}" for k, v in self.stage_errors.items())]
        if self.first_divergence:
            lines.append(f"  first diverging stage: {self.first_divergence} (its mapping targets: "
                         f"{', '.join(self.stage_targets[:8])}{' ...' if len(self.stage_targets) > 8 else ''})")
            wrong = [d for d in self.tensor_diffs if d.missing or d.max_abs_diff > 0]
            for d in wrong:
                where = f" at grid cells {d.cells[:8]}" if d.cells else ""
                lines.append(f"  tensor {d.name}: " + ("missing from the converted checkpoint" if d.missing else
                             f"differs from the mapping applied to the source{where}: max |diff| "
                             f"{d.max_abs_diff:.3g}, {100 * d.fraction_differing:.1f}% of elements"))
            if self.tensor_diffs and not wrong:
                lines.append("  the stage's converted tensors equal the mapping applied to the source: the mapping "
                             "itself (or a config difference) is at fault, not the conversion")
        lines.append("  " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)

    def save(self, path: str) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")


# -------------------------------------------------------------------------------------------------- the check

def side_spec(mapping: Mapping, side: str) -> str:
    """The SPEC the mapping was solved (or verified) for on `side` ("source" | "target")."""
    verification = mapping.meta.get("verification") or {}
    return str(verification.get(side) or getattr(mapping, side, "") or "")


def open_side(spec_text: str, path: str, device: str, options: dict):
    """The checkpoint at `path` in the model `spec_text` names, through its framework adapter. A SPEC that names
    no framework with a runner (a tree file) falls back to transformers with the checkpoint's own config."""
    spec = parse_spec(spec_text) if spec_text else None
    adapter = frameworks.for_kind(spec.kind) if spec is not None else None
    if adapter is None or adapter.name == "files":
        adapter = frameworks.for_prefix("hf")
    try:
        return adapter.checkpoint_model(spec, path, device, options)
    except frameworks.NoRunner as e:
        raise CheckError(e.message, file=e.file) from None


def run_side(model, prompt_batches: list[np.ndarray]) -> list[Forward]:
    try:
        return [model.forward(b) for b in prompt_batches]
    finally:
        model.close()


def lowest_precision(*readers) -> str:
    """"bfloat16" / "float16" when any floating tensor of the readers is stored so, else "float32"."""
    found = set()
    for r in readers:
        for n in r.names():
            dt = np.dtype(r.dtype(n))
            if dt.kind == "f" or dt.name == "bfloat16":
                found.add(dt.name)
    for name in ("bfloat16", "float16"):
        if name in found:
            return name
    return "float32"


def in_stage(name: str, layers: set[int] | None) -> bool:
    """Whether target `name` belongs to a stage of `layers` (None: a global stage, every name); a stacked name
    (no layer index) belongs to every layer."""
    if layers is None:
        return True
    index = parse_name(name).layer_index
    return index is None or index in layers


def tensor_diffs(mapping: Mapping, rule_indices: list[int], source_reader, converted_reader,
                 layers: set[int] | None = None) -> list[TensorDiff]:
    """For the given rules: each target tensor (of `layers`, see in_stage) of the converted checkpoint against the
    mapping applied to the source checkpoint's tensors (cast to the converted tensor's dtype; exact equality expected), with the grid
    cells that differ where the target stacks its cells."""
    out: list[TensorDiff] = []
    for i in rule_indices:
        rule = mapping.rules[i]
        produced = dict(apply_rule(rule, source_reader.read))
        for slot in rule.targets:
            for name in dict.fromkeys(n for n in slot.names() if in_stage(n, layers)):
                if name not in converted_reader:
                    out.append(TensorDiff(name, float("inf"), 1.0, missing=True))
                    continue
                got = np.asarray(converted_reader.read(name))
                want = np.asarray(produced[name]).astype(got.dtype)
                if got.shape != want.shape:
                    out.append(TensorDiff(name, float("inf"), 1.0))
                    continue
                diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
                cells = []
                if slot.axes and diff.any():
                    cells = [list(c) for c in rule.cells() if slot.name_at(c) == name
                             and read_cell(slot, c, {name: diff}.__getitem__, rule.grid).any()]
                out.append(TensorDiff(name, float(diff.max()) if diff.size else 0.0,
                                      float((diff > 0).mean()) if diff.size else 0.0, cells))
                del got, want, diff
        del produced
    return out


def _merge_stage_errors(per_batch: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for errors in per_batch:
        for k, v in errors.items():
            out[k] = max(out.get(k, 0.0), v)
    return out


def check_checkpoints(mapping: Mapping, source_path: str, converted_path: str, *, source_spec: str = "",
                      converted_spec: str = "", device: str = "auto", prompts: list[np.ndarray] | None = None,
                      prompts_file: str | None = None, n_prompts: int = DEFAULT_PROMPTS,
                      seq_len: int = DEFAULT_SEQ_LEN, hf_config: dict | None = None, step: int | None = None,
                      threshold: float | None = None) -> CheckReport:
    """Run the source checkpoint and the converted one (`mapping` read source -> converted; reverse it first for
    the other direction) on the same prompts and compare. `source_spec` / `converted_spec`: the models the sides
    run in (default: the SPECs the mapping was solved for); `hf_config`: the HF side's config where its checkpoint
    has none (default: the mapping's record for its HF side, else the side's SPEC)."""
    timings: dict[str, float] = {}
    source_spec = source_spec or side_spec(mapping, "source")
    converted_spec = converted_spec or side_spec(mapping, "target")
    recorded = mapping.meta.get("hf_config")

    def options(side: str) -> dict:  # the recorded HF config belongs to the mapping's HF side only
        own = recorded if mapping.meta.get("hf_side") == side else None
        return {"hf_config": hf_config or own, "step": step}

    vocab = int((mapping.meta.get("dims") or {}).get("vocab") or 0)

    t = time.perf_counter()
    source = open_side(source_spec, source_path, device, options("source"))
    timings["source_load_s"] = time.perf_counter() - t
    vocab = min(v for v in (vocab, int(source.vocab or 0)) if v) if (vocab or source.vocab) else 0
    if not vocab:
        raise CheckError("cannot tell the vocabulary size: neither the mapping nor the source model records it")
    prompt_list = list(prompts or [])
    if prompts_file:
        prompt_list += read_prompts(prompts_file, vocab)
    prompt_list += seeded_prompts(vocab, n_prompts, seq_len)
    groups = batches(prompt_list)
    source_info = {"path": source_path, "spec": source_spec, "model": source.describe()}
    t = time.perf_counter()
    reference = run_side(source, groups)
    timings["source_forward_s"] = time.perf_counter() - t

    t = time.perf_counter()
    converted = open_side(converted_spec, converted_path, device, options("target"))
    timings["converted_load_s"] = time.perf_counter() - t
    converted_info = {"path": converted_path, "spec": converted_spec, "model": converted.describe()}
    t = time.perf_counter()
    other = run_side(converted, groups)
    timings["converted_forward_s"] = time.perf_counter() - t

    v = min(f.logits.shape[-1] for f in (*reference, *other))
    stats = compare_logits(np.concatenate([f.logits[..., :v].reshape(-1, v) for f in reference]),
                           np.concatenate([f.logits[..., :v].reshape(-1, v) for f in other]))
    errors = _merge_stage_errors([stage_errors(a, b) for a, b in zip(reference, other)])
    with open_reader(source_path, step=step) as src_reader, open_reader(converted_path, step=step) as conv_reader:
        dtype = lowest_precision(src_reader, conv_reader)
        mark = threshold if threshold is not None else KL_CHECK[dtype]
        passed = bool(stats.kl_max <= mark)
        stage = first_divergence(errors, activation_tolerance(dtype))
        if stage is None and not passed:
            stage = "logits"
        targets, diffs = [], []
        if stage is not None:
            t = time.perf_counter()
            compared = [k for k in errors if k.startswith("layer_")]
            indices = rules_in_stage(mapping, stage, compared)
            layers = _stage_layers(stage, compared) if stage.startswith("layer_") else None
            targets = list(dict.fromkeys(n for i in indices for n in mapping.rules[i].target_names()
                                         if in_stage(n, layers)))
            diffs = tensor_diffs(mapping, indices, src_reader, conv_reader, layers)
            timings["tensor_diff_s"] = time.perf_counter() - t
    return CheckReport(passed=passed, stats=stats, kl_threshold=mark, dtype=dtype, stage_errors=errors,
                       first_divergence=stage, stage_targets=targets, tensor_diffs=diffs, prompts=len(prompt_list),
                       source=source_info, converted=converted_info, timings=timings)


def paths_exist(*paths: str) -> None:
    """CheckError naming the first path (local, or any URL: ckptmap.storage) that does not exist."""
    for p in paths:
        bare = p[len("orbax:"):] if p.startswith("orbax:") else p
        if not storage.exists(bare):
            raise CheckError("no such file or directory", file=p)
