"""The MaxText side of ckptmap: parameter trees, init and forward passes of real MaxText models.

    from ckptmap import maxtext
    s = maxtext.session("llama3.1-8b", ["base_emb_dim=64", ..., "scan_layers=false"])
    tree = s.abstract_tree()            # ParamTree, framework "maxtext"
    params = s.init(seed=0)             # name -> np.ndarray
    out = s.forward(params, tokens)     # ckptmap.runner.Forward(logits, activations)

MaxText runs in-process where it imports (Python >= 3.12), else in a kept-alive worker
(`.venv-maxtext/bin/python -m ckptmap.maxtext.worker`, or $CKPTMAP_MAXTEXT_PYTHON).

Names resolve lazily, so that the worker process (`-m ckptmap.maxtext.worker`) imports none of the client side.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MaxTextError": "ckptmap.maxtext.errors",
    "CPU_OVERRIDES": "ckptmap.maxtext.overrides",
    "merge_overrides": "ckptmap.maxtext.overrides",
    "MaxTextSession": "ckptmap.maxtext.sessions",
    "available": "ckptmap.maxtext.sessions",
    "close_all": "ckptmap.maxtext.sessions",
    "read_maxtext_tree": "ckptmap.maxtext.sessions",
    "session": "ckptmap.maxtext.sessions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ckptmap.maxtext' has no attribute {name!r}")
