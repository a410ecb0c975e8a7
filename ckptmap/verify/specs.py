"""Runners from SPECs, and the tiny SPEC pair of a MaxText model.

    src, tgt = runners_for("hf:config.json", "maxtext:llama3.1-8b base_emb_dim=64 ...", device="cpu")
    src_spec, tgt_spec = tiny_specs("llama3.1-8b")

SPEC forms with a runner: `hf:CONFIG.json [k=v ...]`, `hf:MODEL_TYPE [k=v ...]` (or a bare config.json path), and
`maxtext:MODEL [k=v ...]`; the MaxText session adds the float32 CPU flags itself. Checkpoints and trees have no
forward pass, so they cannot be verified.
"""

from __future__ import annotations

import os
import shlex

from ckptmap import frameworks
from ckptmap.atomic import cache_dir, write_json_atomic
from ckptmap.trees.spec import parse_spec
from ckptmap.verify.hf_runner import VerifyError
from ckptmap.verify.tiny import derive_tiny


def runner_for(spec_text: str, device: str = "cpu", *, hf_layout: str = "saved"):
    """A ModelRunner for one SPEC (by the framework adapter that owns it), tagged with `.spec` for reports.
    `hf_layout`: the names an HF runner takes, "saved" (checkpoint names) or "memory" (the module's own)."""
    spec = parse_spec(spec_text)
    try:
        runner = frameworks.for_kind(spec.kind).runner(spec, device, hf_layout)
    except frameworks.NoRunner as e:
        raise VerifyError(e.message, file=e.file) from None
    runner.spec = spec.text
    return runner


def runners_for(src_spec: str, tgt_spec: str, device: str = "cpu", *, hf_layout: str = "saved"):
    """(source runner, target runner) for two SPECs; device "cpu", "gpu" or "auto" (GPU when torch sees one)."""
    src = runner_for(src_spec, device, hf_layout=hf_layout)
    try:
        tgt = runner_for(tgt_spec, device, hf_layout=hf_layout)
    except Exception:
        src.close()
        raise
    return src, tgt


def runner_covering(spec_text: str, device: str, needed: dict[str, tuple[int, ...]]):
    """The runner for `spec_text` whose tensors (name and shape, tied aliases included) cover the most of `needed`
    (the tensors of that side's tree that the mapping reads or writes, with the tree's shapes), so that verify runs
    the layout the solve read. Checkpoint layout ("saved") first; an HF model's own module layout ("memory") where
    that covers more: transformers' `save_pretrained` keeps Qwen3-VL-MoE's fused experts as the modules hold them,
    [E, 2I, H], while the runner's checkpoint layout follows released checkpoints, [E, H, 2I]. Frameworks with one
    layout give the same runner either way."""
    def cover(runner) -> int:
        shapes = runner.param_shapes()
        shapes.update({a: shapes[c] for a, c in getattr(runner, "aliases", {}).items() if c in shapes})
        return sum(1 for n, shape in needed.items() if tuple(shapes.get(n, ())) == tuple(shape))

    saved = runner_for(spec_text, device)
    if getattr(saved, "framework", "") != "hf" or cover(saved) == len(needed):
        return saved
    try:
        memory = runner_for(spec_text, device, hf_layout="memory")
    except VerifyError:  # no module layout to offer: the checkpoint layout stays
        return saved
    if cover(memory) > cover(saved):
        saved.close()
        return memory
    memory.close()
    return saved


def tiny_dir() -> str:
    """Where tiny HF configs are written: $CKPTMAP_CACHE_DIR/tiny, else ~/.cache/ckptmap/tiny."""
    return cache_dir("tiny")


def tiny_specs(maxtext_model_name: str, *, directory: str | None = None, real: dict | None = None) -> tuple[str, str]:
    """(`hf:<dir>/<model>.config.json`, `maxtext:<model> k=v ...`): the tiny pair derived from the real configs.
    The HF config is written (atomically) so that both trees and runners read the same file."""
    pair = derive_tiny(maxtext_model_name, real)
    path = os.path.join(directory or tiny_dir(), f"{pair.maxtext_model}.config.json")
    write_json_atomic(path, pair.hf_config)
    tgt = " ".join([f"maxtext:{pair.maxtext_model}", *(shlex.quote(o) for o in pair.maxtext_overrides)])
    return f"hf:{path}", tgt
