"""Per-layer activations of a MaxText forward pass, taken from the model's own nnx intermediates.

While `capturing()` is active, every call of a decoder-layer class sows its input and output as
`nnx.Intermediate` values (`ckptmap_layer_in`, `ckptmap_layer_out`) and the decoder sows the output of its final
norm (`ckptmap_final_norm`). MaxText returns them through the Linen `intermediates` collection; scanned stacks
return them stacked on leading axes. `order_layer_calls` then puts all captured layer calls back in execution
order by following the data itself (layer k+1 reads exactly what layer k wrote), so no per-model knowledge of
scan layouts (gemma3 blocks, deepseek dense/moe stacks, remainders) is needed.

The patches are installed once per process and do nothing outside `capturing()`, so init and eval_shape see
the untouched model.
"""

from __future__ import annotations

# lazy imports: MaxText, jax and flax exist only in the worker's venv (.venv-maxtext); the client side imports
# this package without them, and the worker's modules load each other only where they run.

import contextlib
import functools
import inspect
import re
import warnings
from dataclasses import dataclass

import numpy as np

LAYER_IN = "ckptmap_layer_in"
LAYER_OUT = "ckptmap_layer_out"
FINAL_NORM = "ckptmap_final_norm"
_MARK = "__ckptmap_capture__"


class _State:
    active = 0  # > 0 while a capturing forward is being traced
    inside_layer = 0  # > 0 inside a patched layer call (a subclass calling its parent's patched __call__)


_state = _State()


@contextlib.contextmanager
def capturing():
    """Trace-time switch: layer calls traced inside this block sow their inputs and outputs."""
    _state.active += 1
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sow.*", category=DeprecationWarning)
            yield
    finally:
        _state.active -= 1


def _sow(module, name, value) -> None:
    from flax import nnx

    module.sow(nnx.Intermediate, name, value)


def _wrap_layer_call(original):
    @functools.wraps(original)
    def __call__(self, *args, **kwargs):
        if not _state.active or _state.inside_layer or not args:
            return original(self, *args, **kwargs)
        _state.inside_layer += 1
        try:
            out = original(self, *args, **kwargs)
        finally:
            _state.inside_layer -= 1
        y = out[0] if isinstance(out, tuple) else out
        _sow(self, LAYER_IN, args[0])
        _sow(self, LAYER_OUT, y)
        return out

    setattr(__call__, _MARK, True)
    return __call__


def _wrap_output_head(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def apply_output_head(self, *args, **kwargs):
        if _state.active and hasattr(self, "decoder_norm"):
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            if bound.arguments.get("normalize_y", True):
                # Calling the model's own final norm once more on the same input: XLA merges the duplicate.
                _sow(self, FINAL_NORM, self.decoder_norm(bound.arguments["y"]))
        return original(self, *args, **kwargs)

    setattr(apply_output_head, _MARK, True)
    return apply_output_head


class _UnscannedView:
    """The config seen with scan_layers off, to ask MaxText for its per-layer (not per-block) classes."""

    def __init__(self, config):
        self._config = config

    def __getattr__(self, key):
        return False if key == "scan_layers" else getattr(self._config, key)


def decoder_layer_classes(config) -> list[type]:
    """The unit decoder-layer classes MaxText builds for this config (one class per layer kind)."""
    from maxtext.layers import nnx_decoders

    class _Holder:
        pass

    holder = _Holder()
    holder.config = _UnscannedView(config)
    return list(nnx_decoders.NNXDecoder.get_decoder_layers(holder))


def install(config) -> list[str]:
    """Patch this config's decoder-layer classes and the decoder's output head (idempotent); returns class names."""
    from maxtext.layers import nnx_decoders

    names = []
    for cls in decoder_layer_classes(config):
        if not getattr(cls.__call__, _MARK, False):
            cls.__call__ = _wrap_layer_call(cls.__call__)
        names.append(f"{cls.__module__}.{cls.__qualname__}")
    head = nnx_decoders.NNXDecoder.apply_output_head
    if not getattr(head, _MARK, False):
        nnx_decoders.NNXDecoder.apply_output_head = _wrap_output_head(head)
    return names


@dataclass
class LayerCall:
    """One captured layer call: where it was sown (`label`, with its stack index) and its input / output."""

    label: str
    inputs: np.ndarray
    outputs: np.ndarray


def _path_text(path) -> list[str]:
    parts = []
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry)))
        parts.append(str(key))
    return parts


def collect(intermediates, activation_rank: int = 3) -> tuple[list[LayerCall], np.ndarray | None]:
    """Layer calls (one per layer and stack index) and the final-norm output from a Linen intermediates tree.

    Arrays are [*stack, batch, seq, hidden]; each stack index is one layer call.
    """
    import jax

    ins: dict[str, np.ndarray] = {}
    outs: dict[str, np.ndarray] = {}
    final_norm = None
    for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
        parts = _path_text(path)
        if parts and parts[-1].isdigit():
            parts = parts[:-1]  # sow keeps a tuple of values; one forward sows once
        if not parts:
            continue
        where = "/".join(parts[:-1])
        if parts[-1] == LAYER_IN:
            ins[where] = np.asarray(leaf)
        elif parts[-1] == LAYER_OUT:
            outs[where] = np.asarray(leaf)
        elif parts[-1] == FINAL_NORM:
            final_norm = np.asarray(leaf)
    calls = []
    for where in sorted(ins, key=_natural_key):
        if where not in outs:
            continue
        x, y = ins[where], outs[where]
        stack_shape = x.shape[: max(0, x.ndim - activation_rank)]
        if y.shape[: len(stack_shape)] != stack_shape:
            continue
        for idx in np.ndindex(*stack_shape) if stack_shape else [()]:
            label = where + ("[" + ",".join(map(str, idx)) + "]" if idx else "")
            calls.append(LayerCall(label, x[idx], y[idx]))
    return calls, final_norm


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
    return bool(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))) <= 1e-6 * scale) if a.size else True


def order_layer_calls(calls: list[LayerCall], expected: int) -> tuple[list[LayerCall], list[str]]:
    """Layer calls in execution order, found by chaining each call's output to the next call's input.

    Returns (ordered calls, notes). The longest chain wins (a side block such as a multi-token-prediction layer
    starts its own chain). When no chain of `expected` calls exists, falls back to the sow-path order and says so.
    """
    n = len(calls)
    successors: list[list[int]] = [[] for _ in range(n)]
    has_predecessor = [False] * n
    for i in range(n):
        for j in range(n):
            if i != j and _same(calls[i].outputs, calls[j].inputs):
                successors[i].append(j)
                has_predecessor[j] = True
    best: list[int] = []
    for head in (i for i in range(n) if not has_predecessor[i]):
        chain, seen = [head], {head}
        while len(successors[chain[-1]]) == 1 and successors[chain[-1]][0] not in seen:
            nxt = successors[chain[-1]][0]
            chain.append(nxt)
            seen.add(nxt)
        if len(chain) > len(best):
            best = chain
    if len(best) == expected:
        return [calls[i] for i in best], []
    note = (f"per-layer activations: could not chain {n} captured layer calls into {expected} layers "
            f"(longest chain {len(best)}); using sow-path order")
    return calls[:expected], [note]
