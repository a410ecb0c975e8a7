"""A model bound to one real checkpoint, run by its own framework: what `ckptmap check` compares.

Each class loads the weights once through the framework's own loader and answers `forward(tokens) -> Forward`
(logits [batch, seq, vocab] float32 and the shared activations `embed`, `layer_{i}`, `final_norm`; see
ckptmap.runner.Forward), `describe() -> str` (where it runs) and `close()`.

- `HFCheckpointModel`: transformers' `from_pretrained` on a directory of safetensors, placed on the accelerators when
  there are any (`device_map`: every visible GPU, through accelerate's dispatch where there are several), else on the
  CPU; a checkpoint that is not a plain causal-LM model directory (one file, npz, Orbax holding HF names, a composite
  config) goes through verify's HFRunner with its tensors read by ckptmap.checkpoint_io.
- `MaxTextCheckpointModel`: MaxText's `load_params_from_path` onto the model's own mesh (sharded by its logical axes
  over every device JAX sees) and its forward pass, inside the MaxText worker; the weights never cross processes.

A checkpoint may be at a URL (ckptmap.storage): MaxText's loader is handed the URL (Orbax reads gs:// itself); an
HF model directory is copied to a local temp directory for from_pretrained.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import tempfile
from typing import Any

import numpy as np

from ckptmap import maxtext, orbax_io, storage
from ckptmap.checkpoint_io import open_reader
from ckptmap.runner import Forward
from ckptmap.verify.hf_runner import (HFRunner, VerifyError, _decoder_layers, _first_tensor, hf_config,
                                     runner_model)


def _torch():
    import torch

    return torch


def hf_placement(device: str) -> tuple[Any, str]:
    """(`device_map` for from_pretrained, the device inputs go to) for "auto" | "cpu" | "gpu": every visible GPU
    when there are any (auto / gpu), else the CPU. Several GPUs need accelerate (transformers dispatches through
    it); without it the model goes on GPU 0."""
    torch = _torch()
    n = torch.cuda.device_count() if device != "cpu" else 0
    if device in ("gpu", "cuda") and n == 0:
        raise VerifyError("--device gpu asked for, but torch sees no CUDA device")
    if n == 0:
        return None, "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32
    torch.backends.cudnn.allow_tf32 = False
    if n > 1:
        if importlib.util.find_spec("accelerate") is not None:
            return "auto", "cuda:0"
    return {"": 0}, "cuda:0"


def forward_with_activations(model, n_layers: int, tokens: np.ndarray, device: str) -> Forward:
    """Run a transformers causal LM on tokens [batch, seq] (positions 0..seq-1) and record `embed` (block 0's
    input), `layer_{i}` (block i's output) and `final_norm` (the LM head's input), float32 numpy."""
    torch = _torch()
    layers = _decoder_layers(model, n_layers)
    acts: dict[str, Any] = {}

    def grab_input(name):
        def hook(_mod, args, kwargs):
            acts[name] = (args[0] if args else kwargs.get("hidden_states")).detach()
        return hook

    def grab_output(name):
        def hook(_mod, _args, out):
            acts[name] = _first_tensor(out).detach()
        return hook

    hooks = [layers[0].register_forward_pre_hook(grab_input("embed"), with_kwargs=True)]
    hooks += [layer.register_forward_hook(grab_output(f"layer_{i}")) for i, layer in enumerate(layers)]
    head = model.get_output_embeddings()
    if head is not None:
        hooks.append(head.register_forward_pre_hook(grab_input("final_norm"), with_kwargs=True))
    try:
        with torch.no_grad():
            ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=device)
            out = model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return Forward(logits=out.logits.float().cpu().numpy(),
                   activations={k: v.float().cpu().numpy() for k, v in acts.items()})


def _config_in(path: str) -> str | None:
    candidate = os.path.join(path, "config.json")
    return candidate if os.path.isdir(path) and os.path.isfile(candidate) else None


def _has_safetensors(path: str) -> bool:
    return os.path.isdir(path) and any(f.endswith(".safetensors") for f in os.listdir(path))


class HFCheckpointModel:
    """transformers' own loader and forward pass on the checkpoint at `path` (float32, eager attention).

    `config`: the HF config (a dict or a config.json path) where `path` has no config.json of its own (the one a
    mapping records). `device`: "auto" (the GPUs when torch sees any), "cpu" or "gpu"."""

    framework = "hf"

    def __init__(self, path: str, device: str = "auto", config: Any = None, step: int | None = None):
        torch = _torch()
        self._staged = None
        if storage.is_remote(path) and storage.isdir(path):
            # from_pretrained reads a local directory: a remote model directory is copied first (removed at close)
            self._staged = tempfile.mkdtemp(prefix="ckptmap-check-")
            path = storage.download_tree(path, self._staged)
        path = storage.local_path(path)
        own = _config_in(path)
        if own is None and config is None:
            raise VerifyError("an HF checkpoint needs its config: a model directory with config.json, or the HF "
                              "config the mapping records (--hf-config)", file=path)
        self.path = path
        self.config = hf_config(own or config)
        self.build_config, model_class, part = runner_model(self.config)
        self.n_layers = int(getattr(self.build_config, "num_hidden_layers", 0) or self.config.get_text_config()
                            .num_hidden_layers)
        self._runner = None
        self._params = None
        if not part and _has_safetensors(path):
            from transformers import GenerationConfig

            self.device_map, self.device = hf_placement(device)
            extra = {}
            if not os.path.isfile(os.path.join(path, "generation_config.json")):
                # transformers (5.24) fails reading a missing generation_config.json offline; the check never
                # generates, so the config's defaults do
                extra["generation_config"] = GenerationConfig.from_model_config(self.build_config)
            try:
                self.model = model_class.from_pretrained(path, config=self.build_config, dtype=torch.float32,
                                                         attn_implementation="eager",
                                                         device_map=self.device_map, **extra).eval()
            except Exception as e:  # transformers raises many kinds; the user gets its message
                raise VerifyError(f"transformers could not load the checkpoint: {' '.join(str(e).split())[:300]}",
                                  file=path) from None
            self.loader = f"{model_class.__name__}.from_pretrained"
        else:  # one file, npz, Orbax with HF names, a composite's text part: verify's runner, tensors read here
            self._runner = HFRunner(self.config, device="cpu" if device == "cpu" else "auto", threads=None)
            self.device = self._runner.device
            with open_reader(path, step=step) as reader:
                self._params = {n: np.array(reader.read(n)) for n in self._runner.param_shapes() if n in reader}
            self.model = None
            self.loader = "ckptmap.checkpoint_io + transformers' loader (HFRunner)"

    @property
    def vocab(self) -> int:
        return int(self.config.get_text_config().vocab_size)

    def describe(self) -> str:
        if self.model is None:
            return f"{self.loader} on {self.device}"
        devices = sorted({str(p.device) for p in self.model.parameters()})
        return f"{self.loader} on {', '.join(devices)}"

    def forward(self, tokens: np.ndarray) -> Forward:
        if self._runner is not None:
            return self._runner.forward(self._params, tokens)
        return forward_with_activations(self.model, self.n_layers, tokens, self.device)

    def close(self) -> None:
        self.model = None
        self._params = None
        if self._staged:
            shutil.rmtree(self._staged, ignore_errors=True)
            self._staged = None


def remote_item_dir(url: str, step: int | None = None) -> str:
    """orbax_io.locate for a remote Orbax checkpoint: `url` itself when it holds `_METADATA`, its `items`, or
    `<step>/items` under a root (the latest step unless `step`), found by listing (ckptmap.storage)."""
    names = storage.listdir(url)
    if step is None and "_METADATA" in names:
        return url
    if step is None and "items" in names:
        return storage.join(url, "items")
    steps = sorted(int(n) for n in names if n.isdigit())
    if step is not None and step not in steps:
        raise VerifyError(f"no step {step} in this checkpoint (steps: {', '.join(map(str, steps)) or 'none'})",
                          file=url)
    for s in ([step] if step is not None else reversed(steps)):
        if "items" in storage.listdir(storage.join(url, str(s))):
            return storage.join(url, str(s), "items")
    raise VerifyError("no Orbax tree metadata (_METADATA) here, in items/, or in a numbered step directory", file=url)


class MaxTextCheckpointModel:
    """MaxText model `model_name` with `overrides` ("key=value": the model the checkpoint was converted for) with
    the weights of the Orbax checkpoint at `path` (a root of steps: `step` or the latest; a step; its `items`)."""

    framework = "maxtext"

    def __init__(self, model_name: str, overrides: list[str], path: str, device: str = "auto",
                 step: int | None = None):
        name, overrides = model_name, list(overrides)
        if device == "auto":  # the GPUs when there are any (torch's count stands for the machine's)
            device = "gpu" if _torch().cuda.is_available() else "cpu"
        if device in ("gpu", "cuda"):  # MaxText's GPU build; its mesh spans every device JAX sees
            overrides = [o for o in overrides if not o.startswith("hardware=")] + ["hardware=gpu"]
        else:
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        self.spec = " ".join([f"maxtext:{name}", *(shlex.quote(o) for o in overrides)])
        bare = path[len("orbax:"):] if path.startswith("orbax:") else path
        if storage.is_remote(bare):  # MaxText's loader (Orbax, TensorStore) reads gs:// itself
            self.items = remote_item_dir(bare, step)
        else:  # absolute: the MaxText worker runs in a directory of its own
            self.items = os.path.abspath(orbax_io.locate(storage.local_path(bare), step).item_dir)
        self.session = maxtext.session(name, overrides)
        self.vocab = int((self.session.abstract_tree().meta.get("dims") or {}).get("vocab") or 0)

    def describe(self) -> str:
        return f"MaxText load_params_from_path({self.items}) on its mesh, worker {self.session.transport_kind}"

    def forward(self, tokens: np.ndarray) -> Forward:
        return self.session.checkpoint_forward(self.items, tokens)

    def close(self) -> None:
        self.session.close()
