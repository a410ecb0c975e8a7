"""Seeded random parameters for verification: every tensor random, norms and biases included, at scales that keep
activations of a tiny random model in a sane range (so that a wrong value op shows up as a large KL, and a right
one as round-off only).

`random_params(shapes, seed)` -> name -> float32 array; the same name, shape and seed give the same array in every
process (ckptmap.runner.seeded_tensor underneath, rescaled).
"""

from __future__ import annotations

import numpy as np

from ckptmap.runner import seeded_tensor
from ckptmap.verify.tied_cast import round_to_bf16
from ckptmap.trees.model import parse_name

_NORM_WORDS = ("norm", "layernorm", "ln", "rms", "ln_f", "ln_1", "ln_2")
# A per-layer gain (Gemma 4's `layer_scalar` [1], which multiplies the layer's output; init 1.0) is drawn near 1 as a
# norm scale is: drawn as a bias (~0.1 N, either sign) it shrinks the residual stream ~10x per layer toward the norms'
# eps, and the tiny gemma4-e2b then amplifies float32 round-off to a max KL of 0.125 against its own float64 run.
_GAIN_WORDS = ("scalar",)
_EMBED_WORDS = ("embed", "embedding", "embeddings", "wte", "tok_embeddings", "token_embedder", "embed_tokens")


def _words(name: str) -> set[str]:
    out = set()
    for w in parse_name(name).words:
        out.add(w.lower())
        out.update(part for part in w.lower().split("_") if part)
    return out


def tensor_role(name: str, shape: tuple[int, ...]) -> str:
    """'norm' (a per-channel scale), 'gain' (a per-layer multiplier), 'vector' (a bias or other 1-D), 'embedding'
    or 'matrix', from name and rank."""
    words = _words(name)
    if len(shape) <= 1:
        if words & set(_NORM_WORDS):
            return "norm"
        return "gain" if words & set(_GAIN_WORDS) else "vector"
    if words & set(_EMBED_WORDS):
        return "embedding"
    return "matrix"


def random_tensor(name: str, shape: tuple[int, ...], seed: int = 0, scale: float | None = None) -> np.ndarray:
    """One seeded tensor, scaled by its role.

    norms and gains ~ 1 + 0.25 N (non-constant, positive on average, whether the model adds 1 or not); biases ~ 0.1 N;
    matrices ~ N(0, 1/fan_in) with fan_in the smaller of the last two dims (torch [out, in] and fused-expert
    [experts, out, in] layouts alike; an embedding [vocab, hidden] gets 1/hidden, so that tied logits stay ~1 and
    a bf16 cast on the logits path costs a KL near 1e-6, not near the threshold). `scale`, when given (the std of
    the framework's own init of this tensor), replaces the fan-in rule for matrices: flax kernels [in, ..., out]
    and scanned stacks do not follow torch's layout.
    """
    shape = tuple(int(d) for d in shape)
    unit = seeded_tensor(name, shape, seed) / np.float32(0.02)  # ~ N(0, 1)
    role = tensor_role(name, shape)
    if role in ("norm", "gain"):
        return (1.0 + 0.25 * unit).astype(np.float32)
    if role == "vector":
        return (0.1 * unit).astype(np.float32)
    if scale:
        return (unit * np.float32(scale)).astype(np.float32)
    fan_in = max(min(shape[-2:]), 8)
    return (unit / np.sqrt(fan_in)).astype(np.float32)


def random_index_table(name: str, shape: tuple[int, ...], high: int, seed: int = 0) -> np.ndarray:
    """A seeded integer index table (int64): each row along the last axis holds distinct values in [0, high) (a
    seeded choice without replacement; with repeats only where the row is longer than `high`). DeepSeek-V4's
    hash routing `tid2eid` [vocab, top_k] maps each token to top_k distinct experts this way."""
    shape = tuple(int(d) for d in shape)
    if not shape:
        return np.zeros((), dtype=np.int64)
    digest = sum(ord(c) * (i + 1) for i, c in enumerate(name)) % (2 ** 31)
    rng = np.random.default_rng([seed, digest, high, *shape])
    k = shape[-1]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    high = max(1, int(high))
    if k <= high:
        out = np.stack([rng.permutation(high)[:k] for _ in range(rows)])
    else:
        out = rng.integers(0, high, size=(rows, k))
    return out.reshape(shape).astype(np.int64)


def random_params(shapes: dict[str, tuple[int, ...]], seed: int = 0, aliases: dict[str, str] | None = None,
                  scales: dict[str, float] | None = None, bf16_names=(),
                  integer: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """name -> seeded random float32 array for every name in `shapes`; each alias (a tied name) gets the very
    array of the name it is tied to. `scales`: name -> std to use for matrices (see random_tensor).
    `bf16_names`: tensors drawn from bfloat16-representable values (a tied table MaxText casts to bf16 on the
    logits path: the cast of such a table is exact; see ckptmap.verify.tied_cast).
    `integer`: name -> the range [0, high) of an integer index table: valid indices, distinct along each row
    (random_index_table), not random floats."""
    scales = scales or {}
    integer = integer or {}
    params = {name: (random_index_table(name, shape, integer[name], seed) if name in integer
                     else random_tensor(name, shape, seed, scales.get(name))) for name, shape in shapes.items()}
    if bf16_names:
        for name in bf16_names:
            if name in params:
                params[name] = round_to_bf16(params[name])
    for alias, canonical in (aliases or {}).items():
        if canonical in params:
            params[alias] = params[canonical]
    return params


def random_tokens(vocab: int, seq_len: int = 64, batch: int = 1, seed: int = 0) -> np.ndarray:
    """[batch, seq_len] int32 token ids in [0, vocab), seeded."""
    rng = np.random.default_rng([seed, vocab, seq_len, batch])
    return rng.integers(0, vocab, size=(batch, seq_len)).astype(np.int32)
