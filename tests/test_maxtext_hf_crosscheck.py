"""The MaxText forward pass computes what HF computes, given MaxText's own HF -> MaxText conversion.

Random HF llama weights go through MaxText's PARAM_MAPPING / HOOK_FNS tables (in the worker), then through
`session.forward`; the logits must match HF's to float32 rounding. A planted bug (RoPE layout left in HF's
half-split order) must show up clearly, so the check is not vacuous.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ckptmap import maxtext

pytestmark = pytest.mark.maxtext

DATA = Path(__file__).parent / "data" / "maxtext_tiny"
HF_META_KEYS = ("model_type", "transformers_version", "architectures", "_name_or_path", "layer_types")


def random_hf_llama(hf_config: dict, seed: int = 0):
    """A tiny HF llama with every tensor random (norms around 1), its state dict and its logits on `tokens`."""
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(
        hf_config["model_type"], **{k: v for k, v in hf_config.items() if k not in HF_META_KEYS})
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                          dtype=torch.float32).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                value = 1.0 + 0.2 * rng.standard_normal(p.shape)
            elif "embed" in name:
                value = 0.5 * rng.standard_normal(p.shape)
            else:
                value = rng.standard_normal(p.shape) / np.sqrt(p.shape[-1])
            p.copy_(torch.tensor(value, dtype=torch.float32))
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return model, state


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_per_token(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    p, q = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(p) * (p - q)).sum(-1)


def test_maxtext_forward_matches_hf_llama_through_maxtexts_own_conversion():
    import torch

    cfg = json.loads((DATA / "llama3.1" / "config.json").read_text())
    assert maxtext.available(), "MaxText is not reachable: build .venv-maxtext (make setup) or set CKPTMAP_MAXTEXT_PYTHON"
    hf_model, hf_state = random_hf_llama(cfg["hf_config"])
    tokens = ((np.arange(64) * 37 + 11) % 256).astype(np.int32)[None]
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()

    session = maxtext.session(cfg["maxtext_model_name"], cfg["maxtext_overrides"] + ["scan_layers=false"])
    converted = session.reference_convert(hf_state, cfg["hf_config"])
    assert sorted(converted) == sorted(session.abstract_tree().names())
    out = session.forward(converted, tokens)

    kl = kl_per_token(hf_logits, out.logits)
    assert kl.max() < 1e-10, kl.max()
    assert (hf_logits.argmax(-1) == out.logits.argmax(-1)).all()
    assert np.abs(hf_logits - out.logits).max() < 1e-4

    # Planted bug: q and k kernels left in HF's half-split RoPE order instead of MaxText's interleaved one.
    broken = dict(converted)
    for key in [k for k in broken if k.endswith(("self_attention-query-kernel", "self_attention-key-kernel"))]:
        broken[key] = np.concatenate([broken[key][..., ::2], broken[key][..., 1::2]], axis=-1)
    assert kl_per_token(hf_logits, session.forward(broken, tokens).logits).max() > 1e-3
