"""MaxText `key=value` overrides: parsing, merging, and the flags a float32 CPU build needs.

Pure functions over lists of strings; nothing here imports MaxText.
"""

from __future__ import annotations

from ckptmap.maxtext.errors import MaxTextError

# What a tiny model needs to build and run exactly on a CPU: float32 everywhere, the plain dot-product attention,
# no distributed runtime, no checkpoint directory, and the dense (non-megablox) MoE path with no token dropping.
# A caller's own value for any of these keys wins.
CPU_OVERRIDES: tuple[str, ...] = (
    "override_model_config=true",
    "hardware=cpu",
    "dtype=float32",
    "weight_dtype=float32",
    "matmul_precision=highest",
    "attention=dot_product",
    "skip_jax_distributed_system=true",
    "enable_checkpointing=false",
    "megablox=false",
    "sparse_matmul=false",
    "capacity_factor=-1",
)


def split_override(item: str, *, origin: str | None = None) -> tuple[str, str]:
    """`"base_emb_dim=64"` -> `("base_emb_dim", "64")`; raises MaxTextError on anything without a key."""
    key, sep, value = str(item).partition("=")
    key = key.strip()
    if not sep or not key or any(c.isspace() for c in key):
        raise MaxTextError(f"a MaxText override must be key=value, got {item!r}", file=origin)
    return key, value.strip()


def merge_overrides(base: tuple[str, ...] | list[str], user: tuple[str, ...] | list[str],
                    *, origin: str | None = None) -> tuple[str, ...]:
    """Base overrides then the user's, one entry per key, the user's value winning; order is first appearance."""
    merged: dict[str, str] = {}
    for item in list(base) + list(user):
        key, value = split_override(item, origin=origin)
        merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())


def with_scan_layers(overrides: tuple[str, ...] | list[str], scan_layers: bool | None) -> tuple[str, ...]:
    """The overrides with `scan_layers` set to the given value (unchanged when None)."""
    if scan_layers is None:
        return tuple(overrides)
    return merge_overrides(tuple(overrides), (f"scan_layers={'true' if scan_layers else 'false'}",))
