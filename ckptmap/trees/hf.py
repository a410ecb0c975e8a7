"""HF tree reader: build the transformers model on the meta device from a config and list what it would save.

No weight memory is used: every tensor lives on the `meta` device. The tree follows what `save_pretrained`
writes (layout "saved"): tied copies are dropped (the kept tensor is tagged "tied", `meta["tied"]` says
which name points to it) and the model's weight conversions are reverted with transformers' own machinery, so
names and shapes are those of a checkpoint on disk (per-expert MoE tensors for Mixtral/Qwen-MoE/DeepSeek, ...).
Layout "memory" gives the model's own `state_dict()` names instead (fused experts, v5 module paths), which is
what a runner that loads tensors into the torch module needs.

Non-persistent buffers (rotary `inv_freq`, ...) are never saved: they are listed in `meta["buffers"]` only.
Persistent buffers are saved, so they are in the tree, tagged "buffer".
"""

from __future__ import annotations

import json

import contextlib
import logging
import os
import warnings
from typing import Any

from ckptmap.errors import TreeError
from ckptmap.trees.dims import dims_from_hf_config
from ckptmap.trees.model import ParamInfo, ParamTree, normalise_dtype

LAYOUTS = ("saved", "memory")

# Auto-class lookup order when a config names no architecture: a composite (vision/audio) config wants the
# conditional-generation class that holds every tower, a text config wants the causal LM with its head.
_TEXT_FIRST = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
               "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES", "MODEL_MAPPING_NAMES")
_MULTIMODAL_FIRST = ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
                     "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_MAPPING_NAMES")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' config / init chatter (warnings and logger output) for the duration."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    torch_logger = logging.getLogger("torch")
    old_torch = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(level)
        torch_logger.setLevel(old_torch)


def _is_composite(config) -> bool:
    return any(getattr(config, k, None) is not None for k in ("vision_config", "audio_config", "thinker_config"))


def choose_model_class(config, file: str):
    """The class whose checkpoint this config describes: `architectures[0]` when transformers has it, else the
    first auto-mapping hit for the model_type (multimodal classes first for a composite config)."""
    import transformers
    from transformers.models.auto import modeling_auto

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(arch), None)
        if cls is not None and isinstance(config, cls.config_class):
            return cls
    order = _MULTIMODAL_FIRST if _is_composite(config) else _TEXT_FIRST
    model_type = getattr(config, "model_type", "")
    for mapping_name in order:
        class_name = getattr(modeling_auto, mapping_name, {}).get(model_type)
        cls = getattr(transformers, class_name, None) if class_name else None
        if cls is not None:
            return cls
    raise TreeError(f"no transformers model class for model_type {model_type!r}", file=file, key="model_type")


def build_meta_model(config, file: str):
    """Instantiate the model on the meta device (shapes only, no weight memory)."""
    import torch

    cls = choose_model_class(config, file)
    try:
        with quiet_transformers(), torch.device("meta"):
            return cls._from_config(config)
    except TreeError:
        raise
    except Exception as e:  # model __init__ code can fail on inconsistent configs in many ways
        first_line = " ".join(str(e).split())[:300]
        raise TreeError(f"transformers cannot build {cls.__name__} from this config: {type(e).__name__}: "
                        f"{first_line}", file=file) from None


def _expert_stacked_axes(model, name: str, shape: tuple[int, ...], n_experts: int | None) -> tuple:
    """(0, "experts") for a fused experts tensor (a parameter of an `...Experts` module whose axis 0 is E)."""
    if not n_experts or len(shape) < 2 or shape[0] != n_experts:
        return ()
    module_path, _, _ = name.rpartition(".")
    try:
        module = model.get_submodule(module_path)
    except AttributeError:
        return ()
    return ((0, "experts"),) if type(module).__name__.endswith("Experts") else ()


def _saved_name(model, name: str, tensor) -> str:
    """The on-disk name of one tensor (transformers' reverse renaming of a single key)."""
    from transformers.core_model_loading import revert_weight_conversion

    try:
        out = revert_weight_conversion(model, {name: tensor})
    except Exception:
        return name
    return next(iter(out)) if len(out) == 1 else name


def tree_from_model(model, *, origin: str, layout: str = "saved", notes: list[str] | None = None) -> ParamTree:
    """The ParamTree of a (meta) model: names, shapes, dtypes, tied/buffer tags, dims in meta."""
    import transformers
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    if layout not in LAYOUTS:
        raise TreeError(f"unknown HF layout {layout!r}; expected one of {LAYOUTS}", file=origin)
    full = model.state_dict()
    for key in getattr(model, "_keys_to_ignore_on_save", None) or ():
        full.pop(key, None)
    with quiet_transformers():
        kept = remove_tied_weights_from_state_dict(dict(full), model)

    tied_to_memory: dict[str, str] = {}
    removed = [n for n in full if n not in kept]
    if removed:
        kept_by_storage = {id(model.get_parameter_or_buffer(n)): n for n in kept}
        for name in removed:
            tied_to_memory[name] = kept_by_storage.get(id(model.get_parameter_or_buffer(name)), "")
    buffer_names = {n for n, _ in model.named_buffers()}
    non_persistent = {n: b for n, b in model.named_buffers() if n not in full}
    dims = dims_from_hf_config(model.config)

    memory_tags: dict[str, tuple[str, ...]] = {}
    memory_stacked: dict[str, tuple] = {}
    for name, t in kept.items():
        tags = []
        if name in tied_to_memory.values():
            tags.append("tied")
        if name in buffer_names:
            tags.append("buffer")
        memory_tags[name] = tuple(tags)
        memory_stacked[name] = _expert_stacked_axes(model, name, tuple(t.shape), dims.get("experts"))

    # Renamings hand the very tensor object through, so identity links a saved name to its module name.
    memory_of = {id(t): n for n, t in kept.items()}
    if layout == "saved":
        with quiet_transformers():
            tensors = revert_weight_conversion(model, kept)
        tied = {_saved_name(model, n, full[n]): (_saved_name(model, src, kept[src]) if src in kept else src)
                for n, src in tied_to_memory.items()}
    else:
        tensors = kept
        tied = dict(tied_to_memory)

    params = []
    for name, t in tensors.items():
        source = memory_of.get(id(t))  # None when a converter built a new tensor (split experts, ...)
        params.append(ParamInfo(name, tuple(int(d) for d in t.shape), normalise_dtype(str(t.dtype)),
                                memory_stacked.get(source, ()) if source else (),
                                memory_tags.get(source, ()) if source else ()))
    meta: dict[str, Any] = {
        "naming": "hf",
        "dims": dims,
        "tied": tied,
        "buffers": {n: {"shape": list(b.shape), "dtype": normalise_dtype(str(b.dtype))}
                    for n, b in non_persistent.items()},
        "hf": {"class": type(model).__name__, "model_type": getattr(model.config, "model_type", ""),
               "layout": layout, "transformers_version": transformers.__version__,
               "config": _config_dict(model)},
    }
    if notes:
        meta["notes"] = list(notes)
    return ParamTree.from_items(params, origin=origin, framework="hf", meta=meta)


def read_hf_tree(config, *, origin: str, layout: str = "saved", notes: list[str] | None = None) -> ParamTree:
    """Config object -> ParamTree of the checkpoint its model class would save (see the module docstring)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = build_meta_model(config, origin)
    return tree_from_model(model, origin=origin, layout=layout, notes=notes)


def _config_dict(model) -> dict:
    """The model's full config as JSON data, naming its class in `architectures` (a model directory needs both)."""
    cfg = json.loads(model.config.to_json_string(use_diff=False))
    if not cfg.get("architectures"):
        cfg["architectures"] = [type(model).__name__]
    return cfg
