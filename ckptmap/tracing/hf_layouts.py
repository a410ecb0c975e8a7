"""Fused-axis layouts of an HF model, read off its code: build the transformers causal LM (random init, CPU, float32,
eager attention and experts), trace one forward with ckptmap.tracing.torch_dataflow, and key the layouts by the
checkpoint names the `hf:` tree reader uses; a parameter whose checkpoint form is not one tensor (transformers 5
fused MoE experts saved per expert, Mixtral) keeps its module name.

CLI: `python -m ckptmap.tracing.hf_layouts CONFIG.json [key=value ...]` prints the layouts as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ckptmap.errors import CkptmapError, TreeError
from ckptmap.trees.hf import _saved_name, build_meta_model, choose_model_class, quiet_transformers
from ckptmap.trees.hf_config import build_config, config_for_file, reconcile, unwrap_config
from ckptmap.trees.hf_models import causal_lm_config, checkpoint_names, rename_into
from ckptmap.trees.spec import parse_overrides
from ckptmap.tracing.torch_dataflow import (DEFAULT_MAX_PARAMS, CodeLayoutError, ModelTooLarge,  # noqa: F401
                                            fused_layouts_from_module)


def _config_object(config: Any, label: str):
    from transformers import PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    if not isinstance(config, dict):
        raise CodeLayoutError(f"expected an HF config (dict or PretrainedConfig), got {type(config).__name__}",
                              file=label)
    cfg, _notes = reconcile(unwrap_config(config, label))
    return build_config(cfg, label)


def _label_of(config: Any) -> str:
    if isinstance(config, dict):
        inner = config.get("hf_config") if isinstance(config.get("hf_config"), dict) else config
        return f"hf config {inner.get('model_type') or inner.get('architectures') or '?'}"
    return f"hf config {getattr(config, 'model_type', '') or type(config).__name__}"


def _checkpoint_name_map(model, config, text_part_only: bool) -> dict[str, str]:
    """module parameter name -> the checkpoint name the `hf:` reader gives it (where that is one tensor of the same
    shape; otherwise the module name stays)."""
    shapes, _aliases = checkpoint_names(model)
    mod_shapes = {n: tuple(int(d) for d in p.shape) for n, p in model.named_parameters()}
    names: dict[str, str] = {}
    for n, p in model.named_parameters():
        with quiet_transformers():
            saved = _saved_name(model, n, p)
        names[n] = saved if shapes.get(saved) == mod_shapes[n] else n
    if text_part_only:
        try:
            meta = build_meta_model(config, file="")
        except TreeError:
            return names
        outer_shapes, outer_aliases = checkpoint_names(meta)
        renamed = rename_into(sorted(set(shapes) | set(_aliases)), set(outer_shapes) | set(outer_aliases))
        if renamed:
            # the prefix each top-level module took, for module-only names (fused experts) as well
            prefix = {}
            for old, new in renamed.items():
                top, _, rest = old.partition(".")
                prefix[top] = new[:len(new) - len(rest) - 1] if rest else new
            for n, v in names.items():
                if v in renamed:
                    names[n] = renamed[v]
                else:
                    top, _, rest = v.partition(".")
                    if top in prefix and rest:
                        names[n] = f"{prefix[top]}.{rest}"
    return names


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _builders(cfg, build_cfg, text_only: bool):
    """(how to build, the config the built model's names relate to, True when it is a composite's text part)
    candidates, in order: verify's HF runner's causal LM, then the class the `hf:` reader builds (a composite
    whose decoder has no causal-LM class of its own: Qwen3-VL, Qwen3-Omni)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32, "attn_implementation": "eager", "experts_implementation": "eager"}
    yield (lambda: AutoModelForCausalLM.from_config(build_cfg, **kwargs)), text_only
    if build_cfg is cfg and not text_only:
        cls = choose_model_class(cfg, "")
        yield (lambda: cls._from_config(cfg, **kwargs)), False


def _forward_target(model):
    """The module to run: the model, or where its class has no forward of its own (Qwen3-Omni's wrapper) its
    first sub-model that has one (the thinker)."""
    from torch import nn
    from transformers import PreTrainedModel

    if type(model).forward is not nn.Module.forward:
        return model
    for child in model.children():
        if isinstance(child, PreTrainedModel) and type(child).forward is not nn.Module.forward:
            return child
    return model


def _fused_layouts_hf(config: Any, *, max_params: int, label: str, seq: int = 8) -> dict[str, dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    cfg = _config_object(config, label)
    build_cfg, text_only = causal_lm_config(cfg)

    # shapes first (meta device, no weight memory): refuse a model too large to trace
    failures, chosen = [], None
    for make, part_only in _builders(cfg, build_cfg, text_only):
        try:
            with quiet_transformers(), torch.device("meta"):
                meta = make()
        except Exception as e:  # model __init__ code fails on inconsistent configs in many ways
            failures.append(_one_line(e))
            continue
        chosen = (make, part_only, sum(p.numel() for p in meta.parameters()))
        del meta
        break
    if chosen is None:
        raise CodeLayoutError("transformers cannot build a model from this config: " + "; ".join(failures), file=label)
    make, text_only, n_params = chosen
    if n_params > max_params:
        raise ModelTooLarge(f"the model has {n_params:,} parameters, more than max_params={max_params:,}: "
                              "trace a shrunk config (fewer layers, smaller sizes)", file=label)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and the cores are shared
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                with quiet_transformers():
                    model = make().eval()
            except Exception as e:  # model __init__ code fails on inconsistent configs in many ways
                raise CodeLayoutError(f"transformers cannot build a model from this config: {_one_line(e)}",
                                      file=label) from None
            text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
            vocab = int(getattr(text_cfg, "vocab_size", 0) or 2)
            ids = torch.randint(0, vocab, (1, seq))

            target = _forward_target(model)

            def run():
                with torch.no_grad(), quiet_transformers():
                    target(input_ids=ids, use_cache=False)

            try:
                found = fused_layouts_from_module(model, run)
            except Exception as e:  # model code raises anything on configs it does not expect
                raise CodeLayoutError(f"the traced forward of {type(model).__name__} failed: {_one_line(e)}",
                                      file=label) from None
    finally:
        torch.set_num_threads(threads)
    names = _checkpoint_name_map(model, cfg, text_only)
    return {names.get(n, n): v for n, v in sorted(found.items())}


def fused_layouts_hf(config: dict | Any, *, max_params: int = DEFAULT_MAX_PARAMS) -> dict[str, dict]:
    """Build the HF causal LM of `config` (a config.json dict, the fixtures' `{"hf_config": ...}` wrapper, or a
    PretrainedConfig) on the CPU with random weights, trace one forward on 8 tokens and return the fused layouts
    keyed by checkpoint name (see the module docstring). Refuses (CodeLayoutError) a model of more than
    `max_params` parameters."""
    return _fused_layouts_hf(config, max_params=max_params, label=_label_of(config))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ckptmap.tracing.hf_layouts",
                                 description="Print the fused-parameter layouts an HF model's forward code shows.")
    ap.add_argument("config", help="an HF config.json (or a directory holding one, or a fixture wrapping one)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (dotted keys reach sub-configs)")
    ap.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS)
    ns = ap.parse_args(argv)
    try:
        _raw, overrides = parse_overrides(ns.overrides, ns.config)
        cfg, _notes, path = config_for_file(ns.config, overrides)
        found = _fused_layouts_hf(cfg, max_params=ns.max_params, label=path)
    except CkptmapError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in found.items()]
    print("{\n" + ",\n".join(lines) + "\n}" if lines else "{}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
