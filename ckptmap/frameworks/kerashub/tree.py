"""A KerasHub model's variables as a ParamTree: names are Keras variable paths
(`transformer_layer_0/self_attention/query/kernel`), shapes and dtypes as declared, no weights.

Dims (ARCHITECTURE.md "Dims") come from the backbone's constructor arguments, by KerasHub's own argument names
(`KERAS_DIM_ARGUMENTS`: one spelling per KerasHub convention, shared by all its models).
"""

from __future__ import annotations

import json

from ckptmap.errors import TreeError
from ckptmap.trees.model import ParamInfo, ParamTree, normalise_dtype

# KerasHub's backbone constructor arguments -> canonical dim names. KerasHub spells a size the same way across its
# models (`hidden_dim`, `num_query_heads` for decoders, `num_heads` for encoders, ...).
KERAS_DIM_ARGUMENTS = {
    "vocabulary_size": "vocab",
    "num_layers": "layers",
    "hidden_dim": "hidden",
    "num_query_heads": "heads",
    "num_heads": "heads",
    "num_key_value_heads": "kv_heads",
    "head_dim": "head_dim",
    "intermediate_dim": "mlp",
    "num_experts": "experts",
    "moe_intermediate_dim": "moe_mlp",
    "max_sequence_length": "positions",
    "num_segments": "segments",
}
NAMING = "/"


def dims_of(config: dict) -> dict[str, int]:
    """Canonical dims from a backbone config; kv_heads defaults to heads, head_dim to hidden // heads."""
    dims = {canon: int(config[key]) for key, canon in KERAS_DIM_ARGUMENTS.items()
            if isinstance(config.get(key), int) and not isinstance(config.get(key), bool)}
    if "heads" in dims:
        dims.setdefault("kv_heads", dims["heads"])
        if "hidden" in dims and dims["heads"]:
            dims.setdefault("head_dim", dims["hidden"] // dims["heads"])
    return dims


def _owners(model) -> dict[int, object]:
    """id(variable) -> the layer that created it (its own variables, not its sublayers')."""
    out: dict[int, object] = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for v in list(getattr(layer, "_trainable_variables", [])) + list(getattr(layer, "_non_trainable_variables",
                                                                                  [])):
            out.setdefault(id(v), layer)
    return out


def _stacked_axes(owner, shape: tuple[int, ...], n_experts: int | None) -> tuple:
    """(0, "experts") for a variable of an experts layer (a layer class named `...Expert...`) whose axis 0 is E:
    the same rule the HF reader applies to fused-expert modules."""
    if not n_experts or len(shape) < 2 or shape[0] != n_experts or owner is None:
        return ()
    return ((0, "experts"),) if "expert" in type(owner).__name__.lower() else ()


def json_safe(config: dict) -> dict:
    """The config with anything JSON cannot hold spelled as text (tree meta is written as JSON)."""
    return json.loads(json.dumps(config, default=lambda o: repr(o)))


def tree_of(model, keras_model, origin: str) -> ParamTree:
    """ParamTree of a built Keras model (abstract or not): one entry per variable, by its path."""
    backbone = keras_model if model.task_cls is None else keras_model.backbone
    config = backbone.get_config()
    dims = dims_of(config)
    owners = _owners(keras_model)
    items = []
    seen: dict[str, str] = {}
    for v in keras_model.weights:
        name = v.path
        if name in seen:
            raise TreeError("two Keras variables share this path", file=origin, key=name)
        seen[name] = name
        shape = tuple(int(d) for d in v.shape)
        items.append(ParamInfo(name, shape, normalise_dtype(str(v.dtype)),
                               stacked_axes=_stacked_axes(owners.get(id(v)), shape, dims.get("experts"))))
    meta = {
        "naming": NAMING,
        "dims": dims,
        # what the model is, enough to build it again (solve records it in the mapping: keras: convert output)
        "model": {"framework": "keras", "backbone": model.backbone_cls.__name__,
                  "task": model.task_cls.__name__ if model.task_cls is not None else None,
                  "config": json_safe({k: v for k, v in config.items() if k not in ("name", "trainable")})},
    }
    if model.hf_config is not None:
        meta["model"]["from_hf_model_type"] = model.hf_config.get("model_type")
    return ParamTree.from_items(items, origin=origin, framework="keras", meta=meta)
