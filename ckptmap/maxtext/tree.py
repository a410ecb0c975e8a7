"""Turn the worker's description of a MaxText model into a ParamTree (framework "maxtext").

A description is plain JSON: `params` (a list of {name, shape, dtype, axes}: `axes` holds MaxText's logical
axis name per dimension, or null) and `config` (selected MaxText config values, JSON scalars). `params` lists
every variable MaxText's init creates: the `params-...` collection and, where a model has them, the other
collections MaxText's conversion fills too (deepseek3's router bias is `MoEBiasVar-decoder-...-gate-bias`).
Pure functions; nothing here imports MaxText.
"""

from __future__ import annotations

from ckptmap.trees.model import ParamInfo, ParamTree

# Logical axis names MaxText gives a stacked expert dimension.
EXPERT_AXIS_NAMES = frozenset({"exp", "experts", "num_experts", "exp_with_fsdp", "expert"})
# Scan collections whose stacked axis is a layer axis when the logical names are missing.
SCANNED_COLLECTIONS = frozenset({"layers", "dense_layers", "moe_layers", "scanned_blocks", "local_layers"})


def is_layer_axis_name(name: str | None) -> bool:
    """MaxText names a scanned axis after the scanned collection: `layers`, `dense_layers`, `moe_layers`, ..."""
    return bool(name) and (name.endswith("layers") or name in ("scanned_blocks", "blocks"))


def stacked_axes_of(name: str, shape: tuple[int, ...], axes: list | None, config: dict) -> tuple[tuple[int, str], ...]:
    """Which axes of one MaxText parameter stack layers or experts, as ((axis, "layers" | "experts"), ...).

    MaxText's logical axis names say it directly; without them a scanned model's `param_scan_axis` is taken for
    parameters that live under an unindexed scan collection (`...-layers-...`).
    """
    out: list[tuple[int, str]] = []
    if axes and len(axes) == len(shape):
        for i, axis_name in enumerate(axes):
            if is_layer_axis_name(axis_name):
                out.append((i, "layers"))
            elif axis_name in EXPERT_AXIS_NAMES:
                out.append((i, "experts"))
        return tuple(out)
    scan_axis = config.get("param_scan_axis")
    if config.get("scan_layers") and isinstance(scan_axis, int) and len(shape) > scan_axis:
        if any(tok in SCANNED_COLLECTIONS for tok in name.split("-")):
            out.append((scan_axis, "layers"))
    return tuple(out)


def dims_from_config(config: dict) -> dict[str, int]:
    """Canonical dims (ARCHITECTURE.md "Dims") from MaxText config values; only numbers that mean something.

    `head_dim` is left out for MLA attention, where MaxText's `head_dim` is unused and the per-part sizes
    (`qk_nope_head_dim`, `qk_rope_head_dim`, `v_head_dim`) are the real ones.
    """

    def num(key: str) -> int | None:
        v = config.get(key)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    dims: dict[str, int] = {}

    def put(canonical: str, key: str, *, positive: bool = True) -> None:
        v = num(key)
        if v is not None and (v > 0 or not positive):
            dims[canonical] = v

    is_mla = str(config.get("attention_type", "")).lower().endswith("mla")
    experts = num("num_experts") or 1
    put("hidden", "emb_dim")
    put("heads", "num_query_heads")
    put("kv_heads", "num_kv_heads")
    if not is_mla:
        put("head_dim", "head_dim")
    put("mlp", "mlp_dim")
    put("layers", "num_decoder_layers")
    put("vocab", "vocab_size")
    if experts > 1:
        put("experts", "num_experts")
        put("moe_mlp", "moe_mlp_dim")
        put("experts_per_tok", "num_experts_per_tok")
        put("shared_experts", "shared_experts")
        put("first_dense_layers", "first_num_dense_layers")
    if is_mla:
        for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            put(key, key)
    cycle = num("inhomogeneous_layer_cycle_interval")
    if cycle is not None and cycle > 1:
        dims["layer_cycle"] = cycle
    return dims


def tree_from_description(desc: dict, *, origin: str) -> ParamTree:
    """ParamTree of a MaxText model's parameters, in MaxText's flattening order, with dims and config in meta."""
    config = dict(desc.get("config", {}))
    tied = bool(config.get("logits_via_embedding"))
    items = []
    for p in desc["params"]:
        shape = tuple(int(d) for d in p["shape"])
        tags: tuple[str, ...] = ()
        if tied and p["name"].endswith("token_embedder-embedding"):
            # The LM head reads this table too (logits_via_embedding); MaxText casts it to bf16 for that use.
            tags = ("tied",)
        items.append(ParamInfo(name=p["name"], shape=shape, dtype=str(p.get("dtype", "float32")),
                               stacked_axes=stacked_axes_of(p["name"], shape, p.get("axes"), config), tags=tags))
    meta = {"dims": dims_from_config(config), "config": config, "model_name": desc.get("model_name", ""),
            "overrides": list(desc.get("overrides", []))}
    return ParamTree.from_items(items, origin=origin, framework="maxtext", meta=meta)
