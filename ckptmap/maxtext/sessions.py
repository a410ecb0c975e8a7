"""MaxTextSession: one MaxText model (name + overrides) built once and used many times.

`session(model_name, overrides)` returns the process-wide session for that key. The model runs in-process where
MaxText imports, else inside one kept-alive worker process shared by all sessions (see transport.py), so JAX and
MaxText are imported once. At most `CKPTMAP_MAXTEXT_MAX_MODELS` (default 4) built models stay alive at once; an
evicted session rebuilds on its next call. Workers are shut down at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict

import numpy as np

from ckptmap.maxtext import transport
from ckptmap.maxtext.errors import MaxTextError
from ckptmap.maxtext.overrides import CPU_OVERRIDES, merge_overrides, with_scan_layers
from ckptmap.maxtext.tree import tree_from_description
from ckptmap.runner import Forward
from ckptmap.trees.model import ParamTree

MAX_MODELS_ENV_VAR = "CKPTMAP_MAXTEXT_MAX_MODELS"


def spec_text(model_name: str, overrides: tuple[str, ...] | list[str]) -> str:
    """The `maxtext:` spec a session answers to, used as `file` in its errors and `origin` of its tree."""
    return " ".join([f"maxtext:{model_name}", *overrides])


class MaxTextSession:
    """A MaxText model behind the ModelRunner interface (`param_shapes`, `forward`, `close`), plus its tree.

    `overrides` are the full MaxText overrides (CPU flags merged with the caller's); `user_overrides` are the
    caller's own, for messages.
    """

    def __init__(self, model_name: str, overrides: tuple[str, ...], *, user_overrides: tuple[str, ...] = (),
                 transport_kind: str | None = None):
        self.model_name = model_name
        self.overrides = tuple(overrides)
        self.origin = spec_text(model_name, user_overrides)
        self.transport_kind = transport_kind or transport.choose_transport()
        self.notes: list[str] = []  # notes of the latest forward (e.g. activations that could not be ordered)
        self._backend = None
        self._tree: ParamTree | None = None
        self._layouts: dict[str, dict] | None = None
        self._function_config: dict | None = None
        self._timings: dict = {}
        self._lock = threading.RLock()

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def _ensure(self):
        with self._lock:
            if self._backend is not None and not self._backend.alive:
                self._backend = None  # its worker died: build again in a fresh one
            if self._backend is None:
                _make_room(keep=self)
                if self.transport_kind == "inprocess":
                    self._backend = transport.LocalBackend(self.model_name, self.overrides, origin=self.origin)
                else:
                    self._backend = transport.WorkerBackend(self.model_name, self.overrides, origin=self.origin)
            _touch(self)
            return self._backend

    @property
    def alive(self) -> bool:
        return self._backend is not None

    @property
    def timings(self) -> dict:
        """Seconds spent: start_s (worker start + build), import_s, build_s, abstract_s, init_s, forward_s,
        layout_trace_s / layout_analysis_s (fused_layouts)."""
        if self._backend is not None:
            self._timings = {**self._timings, **self._backend.timings}
        return dict(self._timings)

    def close(self) -> None:
        """Drop the built model (in the worker or in-process); the session rebuilds if used again."""
        with self._lock:
            if self._backend is not None:
                self._timings = {**self._timings, **self._backend.timings}
                backend, self._backend = self._backend, None
                backend.close()
            _forget(self)

    # ---- the model -----------------------------------------------------------------------------------------
    def abstract_tree(self) -> ParamTree:
        """The parameters as MaxText's conversion names them, from jax.eval_shape of the real model's init."""
        if self._tree is None:
            description = self._ensure().describe()
            self._function_config = dict(description.get("function_config") or {})
            self._tree = tree_from_description(description, origin=self.origin)
        return self._tree

    def function_config(self) -> dict:
        """The config values that change the function beyond the weights (RoPE, norm epsilon, soft-caps, sliding
        window, tied logits: ckptmap.maxtext.backend.FUNCTION_KEYS), as MaxText's pyconfig resolved them."""
        if getattr(self, "_function_config", None) is None:
            self._tree = None
            self.abstract_tree()
        return dict(self._function_config)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.abstract_tree().shapes()

    def init(self, seed: int = 0) -> dict[str, np.ndarray]:
        """MaxText's own random init of every parameter, name -> array (float32 for the float32 CPU build)."""
        return self._ensure().init(int(seed))

    def check_params(self, params: dict[str, np.ndarray]) -> None:
        """Raise MaxTextError naming the first parameter that is missing, unknown or of the wrong shape."""
        tree = self.abstract_tree()
        for name in tree.names():
            if name not in params:
                raise MaxTextError("parameter missing from the given MaxText params", file=self.origin, key=name)
        for name, value in params.items():
            if name not in tree:
                raise MaxTextError("not a parameter of this MaxText model", file=self.origin, key=name)
            if tuple(np.shape(value)) != tree[name].shape:
                raise MaxTextError(f"shape {tuple(np.shape(value))}, the model expects {tree[name].shape}",
                                   file=self.origin, key=name)

    def forward(self, params: dict[str, np.ndarray], tokens: np.ndarray,
                positions: np.ndarray | None = None) -> Forward:
        """Run the model on tokens [batch, seq] (ints): logits [batch, seq, vocab] float32 and activations
        `embed`, `layer_{i}` (global layer order, scanned or not), `final_norm`, each [batch, seq, hidden].
        `positions` [batch, seq] (ints >= 0): the position ids RoPE sees; None: 0..seq-1."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
            raise MaxTextError(f"tokens must be an integer array [batch, seq], got {tokens.dtype} {tokens.shape}",
                               file=self.origin)
        extra = ()
        if positions is not None:
            positions = np.asarray(positions)
            if positions.shape != tokens.shape or positions.dtype.kind not in "iu" or (
                    positions.size and positions.min() < 0):
                raise MaxTextError(f"positions must be integers >= 0 of the tokens' shape {tokens.shape}, got "
                                   f"{positions.dtype} {positions.shape}", file=self.origin)
            extra = (positions.astype(np.int32),)
        self.check_params(params)
        logits, activations, notes = self._ensure().forward(
            {k: np.asarray(v) for k, v in params.items()}, tokens.astype(np.int32), *extra)
        self.notes = list(notes)
        return Forward(logits=logits, activations=activations)

    def fused_layouts(self) -> dict[str, dict]:
        """How MaxText's own code cuts fused parameter axes: {name: {"axis", "rounds", "blocks"}}.

        Read off the jaxpr of the model's forward pass on abstract parameters (ckptmap.maxtext.code_layout): axis
        `axis` of the parameter as stored (scanned models: of the stacked tensor) is `rounds` repeats of
        [block_0 | block_1 | ...], part k taking block_k consecutive elements per round. Only parameters whose
        axis the code cuts into >= 2 parts are listed; names as in abstract_tree().
        """
        if self._layouts is None:
            self._layouts = self._ensure().fused_layouts()
        return {name: dict(layout, blocks=list(layout["blocks"])) for name, layout in self._layouts.items()}

    def reference_convert(self, hf_params: dict[str, np.ndarray], hf_config: dict) -> dict[str, np.ndarray]:
        """MaxText's own HF -> MaxText conversion of `hf_params` (its PARAM_MAPPING / HOOK_FNS tables).

        Ground truth for tests and acceptance checks only; the solver must never read it.
        """
        return self._ensure().reference_convert({k: np.asarray(v) for k, v in hf_params.items()}, dict(hf_config))

    # ---- MaxText's own checkpoint code (the consumer of a conversion) ----------------------------------------
    def load_checkpoint(self, path: str) -> dict[str, np.ndarray]:
        """name -> array, as MaxText's training loader (`load_params_from_path`) restores `path` (the
        `load_parameters_path`, e.g. ROOT/0/items) into this model's abstract params."""
        return self._ensure().load_checkpoint(str(path))

    def from_pretrained_logits(self, path: str, tokens: np.ndarray) -> np.ndarray:
        """Logits [batch, seq, vocab] of the NNX model MaxText's `from_pretrained` builds with
        `load_parameters_path=path`, on tokens [batch, seq] at positions 0..seq-1."""
        return self._ensure().from_pretrained_logits(str(path), np.asarray(tokens, dtype=np.int32))

    def checkpoint_forward(self, path: str, tokens: np.ndarray) -> Forward:
        """Logits and activations (as `forward`) of this model with the weights MaxText's training loader
        (`load_params_from_path`) restores from `path` onto the model's own mesh, sharded by its logical axes over
        the devices there; the weights never leave MaxText's process. Tokens [batch, seq] at positions 0..seq-1."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
            raise MaxTextError(f"tokens must be an integer array [batch, seq], got {tokens.dtype} {tokens.shape}",
                               file=self.origin)
        logits, activations, notes = self._ensure().checkpoint_forward(str(path), tokens.astype(np.int32))
        self.notes = list(notes)
        return Forward(logits=logits, activations=activations)

    def save_checkpoint(self, path: str, params: dict[str, np.ndarray]) -> None:
        """Write `params` at `path` with MaxText's own conversion save (a step dir `path/0/items`)."""
        self.check_params(params)
        self._ensure().save_checkpoint(str(path), {k: np.asarray(v) for k, v in params.items()})


# ---- the process-wide cache -------------------------------------------------------------------------------
_sessions: dict[tuple, MaxTextSession] = {}
_live: "OrderedDict[int, MaxTextSession]" = OrderedDict()  # sessions with a built model, least recent first
_registry_lock = threading.RLock()


def _max_live() -> int:
    try:
        return max(1, int(os.environ.get(MAX_MODELS_ENV_VAR, "4")))
    except ValueError:
        return 4


def _touch(s: MaxTextSession) -> None:
    with _registry_lock:
        _live.pop(id(s), None)
        _live[id(s)] = s


def _forget(s: MaxTextSession) -> None:
    with _registry_lock:
        _live.pop(id(s), None)


def _make_room(keep: MaxTextSession) -> None:
    """Close the least recently used built models until one more fits under the limit."""
    with _registry_lock:
        while len([k for k in _live if k != id(keep)]) >= _max_live():
            oldest_id = next(k for k in _live if k != id(keep))
            oldest = _live.pop(oldest_id)
            oldest.close()


def session(model_name: str, overrides: tuple[str, ...] | list[str] = (), *,
            transport_kind: str | None = None) -> MaxTextSession:
    """The session for MaxText model `model_name` with `overrides` (`key=value` strings), built on first use.

    The CPU flags (ckptmap.maxtext.overrides.CPU_OVERRIDES) are added underneath the caller's overrides; a caller's
    value for the same key wins. Cached per (model, full overrides, transport) for the life of the process.
    """
    if not model_name or not isinstance(model_name, str):
        raise MaxTextError(f"a MaxText model name is required, got {model_name!r}", file="maxtext:")
    user = tuple(str(o) for o in overrides)
    full = merge_overrides(CPU_OVERRIDES, user, origin=spec_text(model_name, user))
    kind = transport_kind or transport.choose_transport()
    key = (model_name, full, kind)
    with _registry_lock:
        if key not in _sessions:
            _sessions[key] = MaxTextSession(model_name, full, user_overrides=user, transport_kind=kind)
        return _sessions[key]


def read_maxtext_tree(model_name: str, overrides: tuple[str, ...] | list[str] = (),
                      scan_layers: bool | None = None) -> ParamTree:
    """The ParamTree of a MaxText model (the `maxtext:MODEL key=value ...` spec); scan_layers overrides the flag."""
    return session(model_name, with_scan_layers(tuple(overrides), scan_layers)).abstract_tree()


def available() -> bool:
    """Whether MaxText can be reached: in-process, or through a worker interpreter that imports it."""
    if transport.maxtext_in_process():
        return True
    python = transport.worker_python()
    return python is not None and transport.worker_python_has_maxtext(python)


def close_all() -> None:
    """Drop every built MaxText model and shut the worker processes down (registered with atexit)."""
    with _registry_lock:
        live = list(_live.values())
    for s in live:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    transport.close_workers()


atexit.register(close_all)
