"""The MaxText runner: a thin ModelRunner over a ckptmap.maxtext session (the worker, or in-process MaxText).

The session adds the float32 CPU flags itself (ckptmap.maxtext.CPU_OVERRIDES); `device="gpu"` asks MaxText for its
GPU build instead (`hardware=gpu`); "cpu" and "auto" pin JAX to the CPU in the worker (set before it starts).
"""

from __future__ import annotations

import os

import numpy as np

from ckptmap import maxtext
from ckptmap.runner import Forward
from ckptmap.verify.tied_cast import TiedHead


class MaxTextRunner:
    """MaxText model `model_name` with `overrides` ("key=value"), built once by its session."""

    framework = "maxtext"
    aliases: dict[str, str] = {}

    def __init__(self, model_name: str, overrides: list[str] | tuple[str, ...] = (), device: str = "cpu"):
        overrides = list(overrides)
        if device in ("gpu", "cuda"):
            overrides = [o for o in overrides if not o.startswith("hardware=")] + ["hardware=gpu"]
        else:  # "cpu", and "auto" too: the worker venv's JAX is a CPU build unless the user says gpu
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        self.model_name = model_name
        self.device = device
        self.session = maxtext.session(model_name, overrides)
        self.tree = self.session.abstract_tree()

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.tree.shapes()

    def dims(self) -> dict[str, int]:
        return dict(self.tree.meta.get("dims") or {})

    @property
    def vocab(self) -> int | None:
        return self.dims().get("vocab")

    @property
    def tied_logits(self) -> bool:
        """Logits through the embedding (MaxText casts it on that path: the bf16 floor of the KL)."""
        cfg = self.tree.meta.get("config") or {}
        if "logits_via_embedding" in cfg:
            return bool(cfg["logits_via_embedding"])
        return not any("logits" in n for n in self.tree.names())

    def tied_head(self):
        """How this model computes tied logits (ckptmap.verify.tied_cast.TiedHead: the table it casts to bf16, the
        sqrt(emb_dim) normalisation, the final soft-cap), or None when its logits have their own kernel."""
        if not self.tied_logits:
            return None
        tables = [n for n in self.tree.names() if n.endswith("token_embedder-embedding")]
        if len(tables) != 1:
            return None
        cfg = {**(self.tree.meta.get("config") or {}), **self.function_config()}
        return TiedHead(table=tables[0], normalize=bool(cfg.get("normalize_embedding_logits", True)),
                        soft_cap=float(cfg.get("final_logits_soft_cap") or 0.0))

    def integer_params(self) -> dict[str, str]:
        """Name -> dtype of the integer variables (index tables such as the hash-routing `...-tid2eid`)."""
        return {n: self.tree[n].dtype for n in self.tree.names()
                if str(self.tree[n].dtype).startswith(("int", "uint"))}

    def function_config(self) -> dict:
        """MaxText's config values that change the function beyond the weights (see ckptmap.verify.config_diff)."""
        return self.session.function_config()

    def init_scales(self) -> dict[str, float]:
        """name -> std of MaxText's own init of each matrix (fan-in aware in flax's [in, ..., out] layout), so
        that random weights drawn for a MaxText source keep activations in range."""
        if not hasattr(self, "_scales"):
            init = self.session.init(0)
            self._scales = {n: float(np.std(a)) for n, a in init.items() if np.ndim(a) >= 2 and np.std(a) > 0}
        return dict(self._scales)

    @property
    def timings(self) -> dict:
        return self.session.timings

    def forward(self, params: dict[str, np.ndarray], tokens: np.ndarray,
                positions: np.ndarray | None = None) -> Forward:
        """Logits and activations; `positions` [batch, seq]: the position ids RoPE sees (None: 0..seq-1)."""
        if positions is None:
            return self.session.forward(params, tokens)
        return self.session.forward(params, tokens, positions)

    def close(self) -> None:
        self.session.close()
