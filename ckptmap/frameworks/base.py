"""What a framework adapter supplies (see ckptmap.frameworks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ckptmap.errors import CkptmapError


class NoRunner(CkptmapError):
    """This SPEC has no forward pass (a checkpoint or a tree file): it cannot be verified."""


def _no_runner(spec, device: str, layout: str):
    raise NoRunner(f"a {spec.kind} SPEC has no forward pass to verify; give hf:CONFIG.json, hf:MODEL_TYPE or "
                   "maxtext:MODEL", file=spec.text or spec.target)


def _no_checkpoint_model(spec, path: str, device: str, options: dict):
    raise NoRunner(f"a {spec.kind} SPEC names no model to run a checkpoint in; give hf:CONFIG.json, hf:MODEL_TYPE or "
                   "maxtext:MODEL", file=spec.text or spec.target)


def _no_layouts(spec, tree, notes: list[str]) -> dict:
    return {}


@dataclass(frozen=True)
class Adapter:
    """One framework.

    name: what reports call it. prefixes: SPEC prefixes it owns (`hf` for `hf:...`). kinds: the SPEC kinds
    (ckptmap.trees.spec.TreeSpec.kind) it reads. parse(prefix, target, raw, parsed, text) -> TreeSpec: the
    prefixed SPEC. read_tree(spec, layout) -> ParamTree. runner(spec, device, layout) -> a verify ModelRunner
    (raises NoRunner where there is none). code_layouts(spec, tree, notes) -> {name: layout} read off its code.
    storage: the layout its matrices are stored in ("torch": [out, in]; "flax": [in, out]; "" when it varies).
    naming: its name joiner ("." or "-"). export: a writer of its own mapping-module form, or None.
    checkpoint_model(spec, path, device, options) -> the model with a real checkpoint's weights, loaded by the
    framework's own loader (`forward(tokens) -> Forward`, `describe()`, `close()`; options `hf_config`, `step`):
    what `ckptmap check` runs (ckptmap.verify.checkpoint_models).
    complete(spec, partner) -> SPEC text or None: this side's SPEC made whole from the other side's (a `keras:FAMILY`
    with no sizes takes them from an `hf:CONFIG` partner); None when it needs nothing.
    write_output(mapping, input, path, *, reverse, force, **convert options) -> ConvertReport: convert's output in
    the framework's own form (`ckptmap convert --output PREFIX:PATH`), or None.
    name_priors: the framework's own naming convention, whole name token -> the concepts it stands for
    (heuristics.names.concepts reads every adapter's, beside the cross-convention vocabulary there).
    """

    name: str
    prefixes: tuple[str, ...]
    kinds: tuple[str, ...]
    read_tree: Callable[[Any, str], Any]
    parse: Callable[..., Any] | None = None
    runner: Callable[[Any, str, str], Any] = _no_runner
    code_layouts: Callable[[Any, Any, list], dict] = _no_layouts
    checkpoint_model: Callable[[Any, str, str, dict], Any] = _no_checkpoint_model
    storage: str = ""
    naming: str = ""
    export: Callable[..., Any] | None = None
    complete: Callable[[Any, Any], str | None] | None = None
    write_output: Callable[..., Any] | None = None
    name_priors: dict = field(default_factory=dict, compare=False)
    notes: dict = field(default_factory=dict, compare=False)
