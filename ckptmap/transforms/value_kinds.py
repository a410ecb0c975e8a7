"""Value-op kinds, registered once: the changes of values no shape reveals, each with the text the LLM prompt shows
for it, the tensor roles it may apply to, and the ops verify tries for it.

Read by `llm_hints.prompt` (the kinds' names and text), `verify.candidates` (the options per target) and
`verify.search` (which option an LLM hint picks). A kind with no `slot` is a structural choice shapes cannot make
(an interleaved split, a square transpose): the prompt names it, and verify covers it through the solver's
alternatives and its transposed variants, not through a value op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ckptmap.transforms.base import Op, TransformError
from ckptmap.transforms.combinators import Chain
from ckptmap.transforms.structural import Reshape, Transpose
from ckptmap.transforms.value import ROPE_MODES, Offset, RopePermute, Scale

# The value-op slots of a target's finishing chain, in the order they are applied (RoPE layout before any scale or
# offset); each is the `value_slot` of one value-op class.
VALUE_SLOTS = (RopePermute.value_slot, Scale.value_slot, Offset.value_slot)


@dataclass(frozen=True)
class ValueOption:
    """One value op for one target of a rule: `kind` is the slot it fills ("rope", "scale" or "offset"); `key`
    groups equal choices across rules (the same RoPE mode on q and k, the same norm offset everywhere)."""

    kind: str
    op: Op
    label: str
    key: str


Shape = tuple[int, ...]


@dataclass(frozen=True)
class ValueKind:
    """One kind of value change, as the LLM is asked about it and as verify searches it.

    `name` is the kind's word in the prompt and the hints cache; `roles` the tensor roles it applies to ("query",
    "key", "norm", "embedding"), decided by verify from names and ranks; `options(cell_shape, dims)` the value ops
    to try on a target of that shape; `hinted` the key of the option a hint picks (None: one try per variant, the
    second field of the options' keys `slot:variant:...`, as for a RoPE mode a hint cannot name).
    """

    name: str
    description: str
    slot: str | None = None
    roles: frozenset[str] = frozenset()
    options: Callable[[Shape, dict], list[ValueOption]] | None = None
    hinted: str | None = None


VALUE_KINDS: dict[str, ValueKind] = {}


def register_value_kind(kind: ValueKind) -> ValueKind:
    """Add `kind` to VALUE_KINDS (its order is the prompt's order)."""
    if kind.name in VALUE_KINDS and VALUE_KINDS[kind.name] != kind:
        raise TransformError(f"two value kinds registered as {kind.name!r}")
    if kind.slot is not None and kind.slot not in VALUE_SLOTS:
        raise TransformError(f"value kind {kind.name!r}: slot must be one of {VALUE_SLOTS}, got {kind.slot!r}")
    VALUE_KINDS[kind.name] = kind
    return kind


def rope_on_axis(shape: Shape, axis: int, head_dim: int, mode: str) -> Op:
    """An op permuting the RoPE layout inside each head_dim block of `axis` of a `shape` array."""
    n = shape[axis] // head_dim
    if axis == len(shape) - 1 and n == 1:
        return RopePermute(mode)
    split = shape[:axis] + (n, head_dim) + shape[axis + 1:]
    d_axis = axis + 1
    perm = tuple(i for i in range(len(split)) if i != d_axis) + (d_axis,)
    inv = tuple(int(i) for i in np.argsort(perm))
    ops: list[Op] = [Reshape(tuple(shape), split)] if split != shape else []
    ops += [Transpose(perm), RopePermute(mode), Transpose(inv)]
    if split != shape:
        ops.append(Reshape(split, tuple(shape)))
    return Chain(tuple(ops))


def _rope_axes(shape: Shape, dims: dict) -> list[int]:
    hd = dims.get("head_dim")
    if not hd or hd % 2:
        return []
    exact = [a for a, d in enumerate(shape) if d == hd]
    if exact:
        return exact[-1:]
    heads = {dims.get("heads"), dims.get("kv_heads")} - {None}
    return [a for a, d in enumerate(shape) if any(d == h * hd for h in heads)]


def _scale(expr: str, dims: dict, round_dtype: str | None = None) -> Scale | None:
    try:
        return Scale.from_expr(expr, dims, round_dtype)
    except TransformError:
        return None


def _rope_options(shape: Shape, dims: dict) -> list[ValueOption]:
    if len(shape) < 2:
        return []
    return [ValueOption("rope", rope_on_axis(shape, axis, dims["head_dim"], mode), f"rope {mode} on axis {axis}",
                        f"rope:{mode}:{axis}")
            for axis in _rope_axes(shape, dims) for mode in ROPE_MODES]


def _query_scale_options(shape: Shape, dims: dict) -> list[ValueOption]:
    if len(shape) < 2:
        return []
    exprs = ["1/sqrt(head_dim)", "sqrt(head_dim)"]
    qpas = dims.get("query_pre_attn_scalar")
    if qpas and qpas != dims.get("head_dim"):
        exprs += ["1/sqrt(query_pre_attn_scalar)", "sqrt(query_pre_attn_scalar)"]
    return [ValueOption("scale", op, f"scale {e}", f"scale:{e}") for e in exprs if (op := _scale(e, dims))]


def _norm_offset_options(shape: Shape, dims: dict) -> list[ValueOption]:
    return [ValueOption("offset", Offset(v), f"offset {v:+g}", f"offset:{v:+g}") for v in (1.0, -1.0)]


def _embed_scale_options(shape: Shape, dims: dict) -> list[ValueOption]:
    if len(shape) != 2:
        return []
    out = []
    for expr in ("sqrt(hidden)", "1/sqrt(hidden)"):
        for rd in (None, "bfloat16"):
            op = _scale(expr, dims, rd)
            if op is not None:
                out.append(ValueOption("scale", op, f"scale {expr}" + (" (bf16)" if rd else ""),
                                       f"scale:{expr}:{rd}"))
    return out


# The prompt lists these in this order; the texts are part of the prompt, hence of the hints cache key.
register_value_kind(ValueKind(
    "rope_permute",
    "query/key rows reordered between the half-split (rotate_half) and the interleaved (pairwise) rotary layouts",
    slot="rope", roles=frozenset({"query", "key"}), options=_rope_options))
register_value_kind(ValueKind(
    "scale_query",
    "the query projection multiplied by a constant, e.g. 1/sqrt(head_dim) folded into the weights",
    slot="scale", roles=frozenset({"query"}), options=_query_scale_options, hinted="scale:1/sqrt(head_dim)"))
register_value_kind(ValueKind(
    "norm_offset",
    "a norm scale stored with a +1 offset on one side (the layer computes x * (1 + w))",
    slot="offset", roles=frozenset({"norm"}), options=_norm_offset_options, hinted="offset:+1"))
register_value_kind(ValueKind(
    "embed_scale",
    "the embedding table multiplied by a constant, e.g. sqrt(hidden)",
    slot="scale", roles=frozenset({"embedding"}), options=_embed_scale_options, hinted="scale:sqrt(hidden):None"))
register_value_kind(ValueKind(
    "split_interleaved",
    "a fused tensor split in interleaved order (per head or per row pair) rather than in contiguous blocks"))
register_value_kind(ValueKind(
    "transpose_square",
    "a square matrix whose transpose has the same shape, so shapes cannot tell its layout"))


def value_options_for_roles(roles: set[str], cell_shape: Shape, dims: dict) -> dict[str, list[ValueOption]]:
    """Slot -> the value options (besides none) of every registered kind whose roles meet `roles`, for a target of
    `cell_shape`; a later kind of the same slot replaces an earlier one (an embedding's scale over a query's)."""
    out: dict[str, list[ValueOption]] = {}
    for kind in VALUE_KINDS.values():
        if kind.options is None or not (kind.roles & roles):
            continue
        opts = kind.options(tuple(cell_shape), dims)
        if opts:
            out[kind.slot] = opts
    return out
