"""Which KerasHub model a `keras:` SPEC names, and building it (abstract for trees, concrete for verify).

    model = describe(spec)                 # KerasModel: backbone class, task class, backbone config
    net = build(model, abstract=True)      # variables declared, never allocated (Keras' deferred init)

A SPEC names its model in one of four ways:
- a KerasHub class, `keras:Llama3CausalLM vocabulary_size=128 num_layers=2 ...` (a Backbone or a Task);
- a family, `keras:llama3 ...` (its CausalLM, else its MaskedLM, else its Backbone; `task=backbone` asks for the
  backbone alone);
- a KerasHub preset directory or its `config.json` (`{"class_name": ..., "config": {...}}`, with `task.json`
  beside it when there is one);
- an HF config: `keras:CONFIG.json` (an HF config.json, or a directory holding one) or `keras:FAMILY hf=CONFIG.json`.
  Sizes come from KerasHub's own HF converter (`keras_hub/src/utils/transformers/convert_*.py`, chosen by
  `TransformersPresetLoader` from `model_type`): its `convert_backbone_config` is called, never copied.
`key=value` overrides are backbone constructor arguments, applied last.

keras is imported here only (and lazily by the adapter), with `KERAS_BACKEND=jax` unless the user chose another.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

from ckptmap.errors import TreeError
from ckptmap.trees import hf_config
from ckptmap.trees.jsonio import load_json_strict
from ckptmap.trees.hf_config import looks_like_config

# Overrides that choose the model rather than size it.
RESERVED_KEYS = ("hf", "task")
# The task kinds a family resolves to, in order of preference: verify compares logits, and KerasHub's decoders
# have a CausalLM, its encoders a MaskedLM.
TASK_SUFFIXES = ("CausalLM", "MaskedLM")


@dataclass(frozen=True)
class KerasModel:
    """A KerasHub model, not yet built: `backbone_cls` with `config` (constructor arguments), wrapped in `task_cls`
    (None: the backbone alone). `origin` is the SPEC text; `hf_config`: the HF config dict it was derived from."""

    backbone_cls: Any
    task_cls: Any
    config: dict
    origin: str
    hf_config: dict | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def class_name(self) -> str:
        return (self.task_cls or self.backbone_cls).__name__


def keras_hub():
    """keras_hub, with Keras on JAX unless KERAS_BACKEND says otherwise (the import takes seconds)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        # CP-SAT's native library must load before TensorFlow's (keras_hub imports TensorFlow): in the other order,
        # with torch also loaded, CpSolver.solve segfaults (measured with ortools 9.15, tensorflow 2.21, torch 2.13)
        import ortools.sat.python.cp_model  # noqa: F401
    except ImportError:
        pass
    import keras_hub as kh

    return kh


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def model_classes() -> dict[str, Any]:
    """Every Backbone and Task class `keras_hub.models` exports, by name."""
    kh = keras_hub()
    out = {}
    for name in dir(kh.models):
        obj = getattr(kh.models, name)
        if inspect.isclass(obj) and issubclass(obj, (kh.models.Backbone, kh.models.Task)):
            out[name] = obj
    return out


def task_for(backbone_cls, wanted: str | None = None):
    """The Task class built on `backbone_cls` (its `backbone_cls` attribute), CausalLM before MaskedLM; `wanted`:
    one suffix only. None when KerasHub has none."""
    tasks = [c for c in model_classes().values() if getattr(c, "backbone_cls", None) is backbone_cls]
    for suffix in ([wanted] if wanted else TASK_SUFFIXES):
        hits = sorted((c for c in tasks if c.__name__.endswith(suffix)), key=lambda c: c.__name__)
        if hits:
            return hits[0]
    return None


def resolve_name(name: str, spec: str) -> tuple[Any, Any]:
    """(backbone class, task class or None) for a class name (`Llama3CausalLM`, `BertBackbone`) or a family
    (`llama3`, `gemma3`, `bert`: matched against the backbones' names without `Backbone`)."""
    kh = keras_hub()
    classes = model_classes()
    if name in classes:
        cls = classes[name]
        if issubclass(cls, kh.models.Backbone):
            return cls, None
        if getattr(cls, "backbone_cls", None) is None:
            raise TreeError(f"{name} has no backbone class", file=spec)
        return cls.backbone_cls, cls
    key = _normalise(name)
    backbones = {_normalise(n[: -len("Backbone")]): c for n, c in classes.items()
                 if n.endswith("Backbone") and issubclass(c, kh.models.Backbone)}
    if key not in backbones:
        close = sorted(n for n in backbones if n.startswith(key[:3]))[:8]
        raise TreeError(f"KerasHub has no model class or family {name!r}"
                        + (f" (families like it: {', '.join(close)})" if close else ""), file=spec)
    backbone = backbones[key]
    return backbone, task_for(backbone)


def _hf_converter(hf: dict, file: str):
    """KerasHub's own converter module for an HF config dict (by its model_type)."""
    keras_hub()
    from keras_hub.src.utils.transformers.preset_loader import TransformersPresetLoader

    try:
        return TransformersPresetLoader(None, hf).converter
    except (ValueError, KeyError) as e:
        raise TreeError(f"KerasHub cannot convert this HF config: {e}", file=file, key="model_type") from None


def hf_config_dict(path: str) -> dict:
    """An HF config file as the complete dict transformers writes (defaults filled in), for KerasHub's converters."""

    config = hf_config.config_for_file(path, {})[0]
    return config.to_dict()


def from_hf(path: str, spec: str) -> tuple[Any, dict, dict]:
    """(backbone class, backbone config, HF config dict) through KerasHub's HF converter for the config at `path`."""
    hf = hf_config_dict(path)
    converter = _hf_converter(hf, path)
    backbone = converter.backbone_cls
    fn = converter.convert_backbone_config
    try:
        if len(inspect.signature(fn).parameters) == 1:
            config = fn(hf)
        else:
            config = fn(hf, backbone)
    except (KeyError, TypeError, ValueError) as e:
        raise TreeError(f"KerasHub's {backbone.__name__} converter rejects this HF config: {type(e).__name__}: "
                        f"{e}", file=path) from None
    return backbone, dict(config), hf


def _keras_preset_config(path: str, spec: str) -> tuple[Any, Any, dict]:
    """(backbone class, task class or None, config) from a KerasHub preset's config.json (and task.json)."""

    doc = load_json_strict(path)
    classes = model_classes()
    name = doc.get("class_name") if isinstance(doc, dict) else None
    if name not in classes or not isinstance(doc.get("config"), dict):
        raise TreeError("expected a KerasHub preset config ({\"class_name\": a keras_hub model, \"config\": {...}})"
                        " or an HF config.json", file=path)
    backbone = classes[name]
    config = {k: v for k, v in doc["config"].items() if k not in ("name", "trainable", "dtype")}
    if isinstance(doc["config"].get("dtype"), (str, dict)):
        config["dtype"] = doc["config"]["dtype"]
    task = None
    task_path = os.path.join(os.path.dirname(path), "task.json")
    if os.path.exists(task_path):
        task_doc = load_json_strict(task_path)
        task = classes.get(task_doc.get("class_name")) if isinstance(task_doc, dict) else None
    return backbone, task or task_for(backbone), config


def _choose_task(backbone_cls, task_cls, task: Any, spec: str):
    if task is None:
        return task_cls
    if str(task).lower() == "backbone":
        return None
    wanted = {"causal_lm": "CausalLM", "causallm": "CausalLM", "masked_lm": "MaskedLM", "maskedlm": "MaskedLM"}
    suffix = wanted.get(str(task).lower())
    found = task_for(backbone_cls, suffix) if suffix else model_classes().get(str(task))
    if found is None:
        raise TreeError(f"no {task} task on {backbone_cls.__name__} (task=backbone, causal_lm or masked_lm)",
                        file=spec, key="task")
    return found


def describe(target: str, overrides: dict[str, Any], spec: str) -> KerasModel:
    """The KerasHub model a `keras:` SPEC names (see the module docstring for the forms)."""
    sizes = {k: v for k, v in overrides.items() if k not in RESERVED_KEYS}
    hf_path = overrides.get("hf")
    hf = None
    path = os.path.join(target, "config.json") if os.path.isdir(target) else target
    if os.path.isdir(target) or target.endswith(".json"):

        if not os.path.exists(path):
            raise TreeError("no such file", file=path)
        if looks_like_config(load_json_strict(path)) and "class_name" not in load_json_strict(path):
            backbone, config, hf = from_hf(path, spec)
            task = task_for(backbone)
        else:
            backbone, task, config = _keras_preset_config(path, spec)
    else:
        backbone, task = resolve_name(target, spec)
        config = {}
        if hf_path:
            hf_backbone, config, hf = from_hf(str(hf_path), spec)
            if hf_backbone is not backbone:
                raise TreeError(f"the HF config converts to {hf_backbone.__name__}, not {backbone.__name__}",
                                file=str(hf_path), key="model_type")
    task = _choose_task(backbone, task, overrides.get("task"), spec)
    config = {**config, **sizes}
    _check_arguments(backbone, config, spec)
    return KerasModel(backbone, task, config, spec, hf)


def _check_arguments(backbone_cls, config: dict, spec: str) -> None:
    """Every required constructor argument given, and no unknown one (named, with the accepted ones)."""
    params = inspect.signature(backbone_cls.__init__).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    known = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = [n for n in known if params[n].default is inspect.Parameter.empty]
    missing = [n for n in required if n not in config]
    if missing:
        raise TreeError(f"{backbone_cls.__name__} needs {', '.join(missing)} (give key=value sizes, hf=CONFIG.json "
                        f"or a preset)", file=spec, key=missing[0])
    unknown = [k for k in config if k not in known and k not in ("dtype", "name")]
    if unknown and not accepts_any:
        raise TreeError(f"{backbone_cls.__name__} takes no argument {unknown[0]!r} (it takes {', '.join(known)})",
                        file=spec, key=unknown[0])
    if unknown:
        # keras Layer kwargs accept only a few names; an unknown size would fail deep inside keras
        from_layer = {"dtype", "name", "trainable", "autocast", "input_dim", "input_shape", "batch_size"}
        bad = [k for k in unknown if k not in from_layer]
        if bad:
            raise TreeError(f"{backbone_cls.__name__} takes no argument {bad[0]!r} (it takes {', '.join(known)})",
                            file=spec, key=bad[0])


def build(model: KerasModel, *, abstract: bool):
    """The Keras model (the task, else the backbone). `abstract`: the backbone's variables are declared with their
    shapes and dtypes but never allocated (created in a StatelessScope that does not initialise them), so a
    full-size model costs no weight memory; a task's own head (a BERT MLM head) is small and initialised."""
    keras_hub()
    import keras

    # Keras names unnamed layers from a process-wide counter (`mixtral_sparse_moe_block_1`); a fresh session gives
    # every build of one model the same variable paths, which the runner and the writers match by.
    keras.backend.clear_session()
    try:
        if abstract:
            with keras.StatelessScope(initialize_variables=False):
                backbone = model.backbone_cls(**model.config)
        else:
            backbone = model.backbone_cls(**model.config)
        if model.task_cls is None:
            return backbone
        return model.task_cls(backbone=backbone, preprocessor=None)
    except TreeError:
        raise
    except Exception as e:  # keras_hub validates its arguments in many ways
        first = " ".join(str(e).split())[:300]
        raise TreeError(f"KerasHub cannot build {model.class_name} from this config: {type(e).__name__}: {first}",
                        file=model.origin) from None
