"""Convert output KerasHub loads: a preset directory (`keras_hub.models.X.from_preset(DIR)`) or a `.weights.h5`
file (`model.load_weights(PATH)` on the same architecture).

    ckptmap convert --mapping m.json --input model.safetensors --output keras:OUT_DIR
    ckptmap convert --mapping m.json --input model.safetensors --output keras:OUT.weights.h5

The tensors go through ckptmap's own convert (every check, into a temporary `.safetensors` beside OUT, by Keras
variable path); the model the mapping was solved for (its record, `mapping.meta["models"]`, written by solve from
the `keras:` tree) is then built, its variables assigned by path, and saved by KerasHub itself (`save_to_preset`:
config.json, model.weights.h5, task.json, metadata.json; or `save_weights`). Nothing is left at OUT on failure.
Variables the mapping records as unmapped (solve --allow-partial; BERT's pooler has no source in an LM-head
checkpoint) keep KerasHub's initial values, and the report names them. A preset written here has no tokenizer or preprocessor assets: `from_preset` loads the backbone and the task
(`preprocessor=None`); give the tokenizer's files separately to tokenize text.
Keras must hold the whole model in memory to save it (its own savers do), so OUT costs the model's size in RAM.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import numpy as np

from ckptmap.checkpoint_io import open_reader
from ckptmap.convert import convert
from ckptmap.errors import CkptmapError, MappingError
from ckptmap.frameworks.kerashub.models import KerasModel, build, keras_hub, model_classes
from ckptmap.trees.jsonio import load_json_strict

WEIGHTS_SUFFIX = ".weights.h5"


def model_record(mapping, side: str) -> dict:
    """The KerasHub model recorded for one side of a mapping (`{"framework": "keras", "backbone", "task",
    "config"}`); MappingError when that side is not a KerasHub model."""
    record = ((mapping.meta or {}).get("models") or {}).get(side)
    if not isinstance(record, dict) or record.get("framework") != "keras":
        raise MappingError(f"the mapping's {side} is not a recorded KerasHub model (solve it with a keras: {side} "
                           f"SPEC); a keras: output needs it")
    return record


def model_from_record(record: dict, origin: str):
    """A KerasModel (ckptmap.frameworks.kerashub.models) from a recorded {"backbone", "task", "config"}."""

    classes = model_classes()
    for key in ("backbone", "task"):
        name = record.get(key)
        if name is not None and name not in classes:
            raise MappingError(f"this keras_hub has no class {name!r} (the mapping records it as its {key})",
                               file=origin)
    config = {k: v for k, v in (record.get("config") or {}).items() if k not in ("name", "trainable")}
    task = classes[record["task"]] if record.get("task") else None
    return KerasModel(classes[record["backbone"]], task, config, origin)


def build_with(record: dict, arrays: dict[str, np.ndarray] | None, origin: str, *, keep_init=()):
    """The Keras model of `record` with `arrays` (Keras variable path -> array) assigned; every variable must get
    one of its own shape, except those in `keep_init` (targets the mapping records as unmapped), which keep
    KerasHub's initial values."""

    net = build(model_from_record(record, origin), abstract=False)
    if arrays is not None:
        variables = {v.path: v for v in net.weights if not (v.path in keep_init and v.path not in arrays)}
        missing = [n for n in variables if n not in arrays]
        if missing:
            raise MappingError(f"the converted checkpoint has no tensor for this Keras variable ({len(missing)} "
                               f"missing)", file=origin, key=missing[0])
        for name, v in variables.items():
            a = np.asarray(arrays[name])
            if tuple(a.shape) != tuple(v.shape):
                raise MappingError(f"shape {tuple(a.shape)}, the Keras variable is {tuple(v.shape)}", file=origin,
                                   key=name)
            v.assign(a.astype(v.dtype))
    return net


def _read_all(path: str) -> dict[str, np.ndarray]:

    with open_reader(path) as reader:
        return {n: np.asarray(reader.read(n)) for n in reader.names()}


def write_output(mapping, input_path: str, output: str, *, reverse: bool = False, force: bool = False, **options):
    """Convert `input_path` through `mapping` into a KerasHub preset directory or `.weights.h5` at `output`;
    returns convert's ConvertReport with this output. `options` go to ckptmap.convert.convert (dtype, step,
    progress, ...)."""

    side = "source" if reverse else "target"
    record = model_record(mapping, side)
    out = os.path.abspath(output)
    if os.path.exists(out) and not force:
        raise CkptmapError("the output exists; --force replaces it", file=output)
    parent = os.path.dirname(out) or "."
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".ckptmap-keras-", dir=parent)
    try:
        flat = os.path.join(work, "converted.safetensors")
        report = convert(mapping, input_path, flat, reverse=reverse, force=True, **options)
        arrays = _read_all(flat)
        unmapped = [n for n in (mapping.reversed().unmapped_targets if reverse else mapping.unmapped_targets)
                    if n not in arrays]
        net = build_with(record, arrays, output, keep_init=set(unmapped))
        kept = sorted(v.path for v in net.weights if v.path in unmapped)
        staged = os.path.join(work, "out" + (WEIGHTS_SUFFIX if out.endswith(WEIGHTS_SUFFIX) else ""))
        if out.endswith(WEIGHTS_SUFFIX):
            net.save_weights(staged)
            files = [os.path.basename(out)]
        else:
            net.save_to_preset(staged)
            files = sorted(os.listdir(staged))
        if os.path.exists(out):
            (shutil.rmtree if os.path.isdir(out) else os.remove)(out)
        os.replace(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cls = record.get("task") or record["backbone"]
    kind = (f"keras .weights.h5: {cls}(...).load_weights reads it" if out.endswith(WEIGHTS_SUFFIX) else
            f"keras preset: {', '.join(files)}; keras_hub.models.{cls}.from_preset reads it")
    if kept:  # the mapping says it cannot produce them (solved with --allow-partial): said, never silent
        kind += (f"; {len(kept)} variables the mapping leaves unmapped keep KerasHub's initial values: "
                 f"{', '.join(kept[:6])}" + (" ..." if len(kept) > 6 else ""))
    return dataclasses.replace(report, output=output, format=kind, extra_files=[])


def load_preset(path: str):
    """KerasHub's own loader on a preset directory written here: the task class its task.json names (else the
    backbone), `from_preset(path)` with no preprocessor."""

    kh = keras_hub()
    task_json = os.path.join(path, "task.json")
    if os.path.exists(task_json):
        cls = model_classes()[load_json_strict(task_json)["class_name"]]
        return cls.from_preset(path, preprocessor=None)
    return kh.models.Backbone.from_preset(path)
