"""One verification run: seeded random source parameters, converted through a Mapping, both models run, compared.

`Evaluator(src_runner, tgt_runner, seed=, seq_len=)` draws the source parameters and runs the source model once;
`evaluate(mapping)` converts, runs the target and returns an `Evaluation` (logit stats + per-stage errors).
Used by `verify_mapping` (once) and by the search (once per candidate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ckptmap.apply import apply_to_dict
from ckptmap.errors import CkptmapError, MappingError
from ckptmap.mapping import Mapping
from ckptmap.runner import Forward
from ckptmap.verify.hf_runner import VerifyError
from ckptmap.verify.localise import stage_errors
from ckptmap.verify.metrics import LogitStats, compare_logits
from ckptmap.verify.weights import random_params, random_tokens


@dataclass
class Evaluation:
    """The target model's forward pass under one mapping, compared with the source's."""

    stats: LogitStats | None
    errors: dict[str, float] = field(default_factory=dict)
    forward: Forward | None = None
    error: str = ""  # why the target could not run (a chain that does not fit, a missing tensor)

    @property
    def ok(self) -> bool:
        return self.stats is not None

    @property
    def kl_max(self) -> float:
        return self.stats.kl_max if self.stats else float("inf")

    def stage_error(self, stage: str) -> float:
        if not self.ok:
            return float("inf")
        if stage in self.errors:
            return self.errors[stage]
        return self.errors.get("logits", float("inf"))


def runner_vocab(runner) -> int | None:
    v = getattr(runner, "vocab", None)
    if v:
        return int(v)
    dims = runner.dims() if hasattr(runner, "dims") else {}
    return int(dims["vocab"]) if dims.get("vocab") else None


class Evaluator:
    """Holds the source parameters, tokens and reference forward pass; evaluates mappings on the target."""

    def __init__(self, src_runner, tgt_runner, *, seed: int = 0, seq_len: int = 64, batch: int = 1):
        self.src_runner, self.tgt_runner = src_runner, tgt_runner
        self.seed = seed
        self.timings = {"source_forward_s": 0.0, "target_forward_s": 0.0, "convert_s": 0.0}
        self.forwards = 0
        aliases = dict(getattr(src_runner, "aliases", {}) or {})
        scales = src_runner.init_scales() if hasattr(src_runner, "init_scales") else None
        self.src_params = random_params(src_runner.param_shapes(), seed, aliases, scales)
        vocabs = [v for v in (runner_vocab(src_runner), runner_vocab(tgt_runner)) if v]
        if not vocabs:
            raise VerifyError("neither model says its vocab size")
        self.tokens = random_tokens(min(vocabs), seq_len, batch, seed)
        t = time.perf_counter()
        self.reference = src_runner.forward(self.src_params, self.tokens)
        self.timings["source_forward_s"] += time.perf_counter() - t
        self.target_shapes = dict(tgt_runner.param_shapes())
        self.target_aliases = dict(getattr(tgt_runner, "aliases", {}) or {})

    def source_shape(self, name: str) -> tuple[int, ...]:
        return tuple(np.shape(self.src_params[name]))

    def convert(self, mapping: Mapping) -> dict[str, np.ndarray]:
        """Target name -> array for every target tensor of the target model; MappingError naming the first one
        the mapping does not produce or produces with the wrong shape."""
        t = time.perf_counter()
        out = apply_to_dict(mapping, self.src_params)
        self.timings["convert_s"] += time.perf_counter() - t
        for alias, canonical in self.target_aliases.items():
            if canonical not in out and alias in out:
                out[canonical] = out[alias]
        missing = [n for n in self.target_shapes if n not in out]
        if missing:
            raise MappingError(f"the mapping does not produce this target tensor ({len(missing)} missing)",
                               key=missing[0])
        for name, shape in self.target_shapes.items():
            if tuple(np.shape(out[name])) != tuple(shape):
                raise MappingError(f"the mapping produces shape {tuple(np.shape(out[name]))}, the target model "
                                   f"expects {tuple(shape)}", key=name)
        return {n: out[n] for n in self.target_shapes}

    def evaluate(self, mapping: Mapping) -> Evaluation:
        """Convert, run the target, compare. A mapping that cannot be applied gives an Evaluation with `error`."""
        try:
            params = self.convert(mapping)
        except CkptmapError as e:
            return Evaluation(stats=None, error=e.one_line())
        t = time.perf_counter()
        try:
            fwd = self.tgt_runner.forward(params, self.tokens)
        except CkptmapError as e:
            return Evaluation(stats=None, error=e.one_line())
        finally:
            self.timings["target_forward_s"] += time.perf_counter() - t
            self.forwards += 1
        stats = compare_logits(self.reference.logits, fwd.logits)
        return Evaluation(stats=stats, errors=stage_errors(self.reference, fwd), forward=fwd)
