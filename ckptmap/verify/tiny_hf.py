"""A real HF config shrunk to a tiny one with the structure that matters for mapping (see verify.tiny): heads and
grouping, widths at the real ratios, one full cycle of inhomogeneous layers (with leading and trailing layers of
another kind kept), >= 4 experts, short attention windows, a small vocab. Real HF config dict -> tiny HF config dict.
"""

from __future__ import annotations

import copy

from ckptmap.verify.tiny_towers import text_holder, text_part
from ckptmap.verify.tiny_keys import (HEAD_DIM, INDEX_HEADS, INDEX_TOPK, MAX_GROUP, PER_LAYER_TO_GLOBAL,
                                      PREFIX_COUNT_KEYS, SLIDING_WINDOW, SUFFIX_COUNT_KEYS, VOCAB, VOCAB_PADDING,
                                      TinyConfigError, _num, _round_to)


def _period(types: list) -> int:
    """The smallest p with types[i] == types[i % p] for all i (1 for a homogeneous stack)."""
    n = len(types)
    for p in range(1, n + 1):
        if all(types[i] == types[i % p] for i in range(n)):
            return p
    return n


def tiny_hf_config(real_hf: dict, real_maxtext: dict | None = None) -> tuple[dict, list[str]]:
    """Real HF config dict -> (tiny HF config dict, notes). Multimodal configs give their text model only."""
    notes: list[str] = []
    cfg = copy.deepcopy(real_hf)  # nested dicts (RoPE) are edited below; the real config stays as it is
    if text_holder(cfg) is not None:
        notes.append(f"text model ({text_part(cfg).get('model_type')} of {cfg.get('model_type')})")
        cfg = copy.deepcopy(text_part(cfg))
    for k in ("architectures", "auto_map", "_name_or_path", "transformers_version", "id2label", "label2id",
              "dtype", "torch_dtype", "quantization_config"):
        cfg.pop(k, None)
    real = dict(cfg)
    hidden, heads = _num(real, "hidden_size"), _num(real, "num_attention_heads")
    if not hidden or not heads:
        raise TinyConfigError("the HF config has no hidden_size / num_attention_heads", key="hidden_size")
    kv = _num(real, "num_key_value_heads") or heads
    mla = _num(real, "kv_lora_rank") is not None
    real_head_dim = _num(real, "head_dim") or hidden // heads

    # Heads: keep grouped-query structure (kv != heads) with the real group size up to MAX_GROUP.
    group = heads // kv if kv and heads % kv == 0 else 1
    if mla or group == 1:
        t_heads, t_kv = 4, 4
    elif kv == 1:
        t_heads, t_kv = min(group, MAX_GROUP), 1
    else:
        t_kv = 2
        t_heads = t_kv * min(group, MAX_GROUP)
    cfg["num_attention_heads"] = t_heads
    if "num_key_value_heads" in real:
        cfg["num_key_value_heads"] = t_kv

    if mla:
        cfg.update(qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, kv_lora_rank=32)
        cfg["q_lora_rank"] = 32 if real.get("q_lora_rank") else real.get("q_lora_rank")
        if "qk_head_dim" in real:
            cfg["qk_head_dim"] = 24
        if "head_dim" in real:  # HF's MLA configs keep head_dim = the rotary part
            cfg["head_dim"] = 8
        t_hidden = 64
    else:
        cfg["head_dim"] = HEAD_DIM
        ratio = heads * real_head_dim / hidden  # attention width over model width
        t_hidden = _round_to(t_heads * HEAD_DIM / ratio, 8, 32)
        if "global_head_dim" in real and _num(real, "global_head_dim"):
            cfg["global_head_dim"] = int(HEAD_DIM * real["global_head_dim"] / real_head_dim)
        if _num(real, "qk_rope_head_dim"):
            # the rotated part of a (non-MLA) head: its real fraction of the tiny head_dim, at least 2 frequencies
            # so that interleaved and half-split rotary layouts still differ
            rope = 2 * round(HEAD_DIM * real["qk_rope_head_dim"] / real_head_dim / 2)
            cfg["qk_rope_head_dim"] = min(HEAD_DIM, max(4, rope))
            notes.append(f"qk_rope_head_dim {real['qk_rope_head_dim']} -> {cfg['qk_rope_head_dim']} "
                         f"(of head_dim {HEAD_DIM})")
    cfg["hidden_size"] = t_hidden
    scale = t_hidden / hidden
    groups = 1
    if _num(real, "o_groups") and real["o_groups"] > 1:
        # head groups of a grouped output projection: keep several, dividing the tiny head count
        groups = cfg["o_groups"] = 2 if t_heads % 2 == 0 else 1
    if not mla:
        # low-rank factors of the projections (q / output LoRA) scale with the model width, kept apart from the
        # other tiny sizes (and a group of ranks from a group's input width) so that shapes tell axes apart
        width = t_heads * cfg["head_dim"]
        taken = {t_hidden, cfg["head_dim"], width, width // groups}
        for key in [k for k in real if k.endswith("_lora_rank")]:
            if _num(real, key):
                rank = _round_to(real[key] * scale, 8, 16)
                while rank in taken or rank * groups in taken:
                    rank += 8
                cfg[key] = rank

    for key in ("intermediate_size", "intermediate_size_mlp", "moe_intermediate_size",
                "shared_expert_intermediate_size"):
        if _num(real, key):
            cfg[key] = _round_to(real[key] * scale, 8, 16)
    if _num(real, "query_pre_attn_scalar"):
        # the real scalar is head_dim (gemma2/3 small) or hidden / heads (gemma3-27b, MaxText: emb_dim // heads)
        qpas = real["query_pre_attn_scalar"]
        cfg["query_pre_attn_scalar"] = (HEAD_DIM if qpas == real_head_dim
                                        else t_hidden // t_heads if qpas == hidden // heads
                                        else _round_to(qpas * scale, 1, 4))
    for key, tiny in (("linear_key_head_dim", HEAD_DIM), ("linear_value_head_dim", HEAD_DIM)):
        if _num(real, key):
            cfg[key] = tiny
    if _num(real, "linear_num_key_heads"):
        n_key = real["linear_num_key_heads"]
        ratio_vk = max(1, real.get("linear_num_value_heads", n_key) // n_key)
        cfg["linear_num_key_heads"] = 2
        if "linear_num_value_heads" in real:
            cfg["linear_num_value_heads"] = 2 * min(ratio_vk, MAX_GROUP)
    if _num(real, "hidden_size_per_layer_input"):
        # per-layer input embeddings (Gemma 4 e2b/e4b): their width scales with the model, apart from other sizes
        ple = _round_to(real["hidden_size_per_layer_input"] * scale, 8, 16)
        while ple in {t_hidden, cfg.get("head_dim"), cfg.get("global_head_dim"), cfg.get("intermediate_size")}:
            ple += 8
        cfg["hidden_size_per_layer_input"] = ple
    if _num(real, "index_topk"):
        cfg.update(index_topk=INDEX_TOPK, index_n_heads=INDEX_HEADS, index_head_dim=HEAD_DIM)
        notes.append(f"indexer: top-{INDEX_TOPK} of {INDEX_HEADS} heads (no exact score ties)")

    # Experts: >= 4 of them, top-k <= 2, groups that divide them.
    for key in ("num_local_experts", "n_routed_experts", "num_experts"):
        if _num(real, key) and real[key] > 1:
            cfg[key] = 4
            if _num(real, "num_experts_per_tok"):
                cfg["num_experts_per_tok"] = min(real["num_experts_per_tok"], 2)
            for k in ("experts_per_token", "top_k_experts"):  # gpt-oss's and Gemma 4's spellings
                if _num(real, k):
                    cfg[k] = min(real[k], 2)
    if _num(real, "n_shared_experts"):
        cfg["n_shared_experts"] = 1
    if _num(real, "n_group") and real["n_group"] > 1:
        # Group-limited routing only where MaxText routes by groups too (its yml leaves it off otherwise).
        if (_num(real_maxtext or {}, "n_routing_groups") or 0) > 1:
            cfg["n_group"], cfg["topk_group"] = 2, 1
            notes.append("expert groups: 2, top-1 group")
        else:
            cfg["n_group"], cfg["topk_group"] = 1, 1
            notes.append("expert groups off (MaxText's yml routes without groups)")

    # Layers: one full inhomogeneous cycle, dense-then-MoE kept, >= 2.
    n_real = int(_num(real, "num_hidden_layers") or 0)
    per_layer = [k for k, v in real.items()
                 if isinstance(v, list) and len(v) == n_real and k not in ("layer_types", "mlp_only_layers")]
    if n_real and (per_layer or _num(real, "num_hash_layers") or any(_num(real, k) for k in SUFFIX_COUNT_KEYS)):
        t_layers = _tiny_layers_by_signature(real, cfg, n_real, notes)
        _tiny_windows(real, cfg)
    else:
        period = 1
        types = real.get("layer_types")
        if isinstance(types, list) and types:
            period = _period(types)
            if period == len(types) and len(types) > 1:  # no repeat: a first-local-then-global style pattern
                period = next((i + 1 for i, t in enumerate(types) if t != types[0]), 1)
        for key in ("full_attention_interval", "sliding_window_pattern", "_sliding_window_pattern"):
            if _num(real, key) and real[key] > 1:
                period = max(period, int(real[key]))
        first_dense = int(_num(real, "first_k_dense_replace") or 0)
        t_dense = min(first_dense, 1)
        t_layers = max(2, period) if not first_dense else t_dense + max(2, period)
        cfg["num_hidden_layers"] = t_layers
        if "first_k_dense_replace" in real:
            cfg["first_k_dense_replace"] = t_dense
        if isinstance(types, list) and types:
            cfg["layer_types"] = [types[(i + (first_dense - t_dense)) % len(types)] for i in range(t_layers)]
        if isinstance(real.get("mlp_only_layers"), list) and real["mlp_only_layers"]:
            cfg["mlp_only_layers"] = [i for i in real["mlp_only_layers"] if i < t_layers]
        for key in _index_lists(real, n_real):
            cfg[key] = [i for i in real[key] if i < t_layers]
        _tiny_windows(real, cfg)
        notes.append(f"{t_layers} layers (cycle {period}, {t_dense} dense first)" if first_dense
                     else f"{t_layers} layers (cycle {period})")

    # Vocab: padded on the MaxText side when the real MaxText vocab is padded.
    t_vocab = VOCAB
    mt_vocab = _num(real_maxtext or {}, "vocab_size")
    if mt_vocab and mt_vocab > real.get("vocab_size", mt_vocab):
        t_vocab = VOCAB - VOCAB_PADDING
        notes.append(f"vocab {t_vocab} (MaxText pads to {VOCAB})")
    cfg["vocab_size"] = t_vocab
    if _num(real, "vocab_size_per_layer_input"):
        cfg["vocab_size_per_layer_input"] = t_vocab
    for key, v in list(cfg.items()):
        if key.endswith("_token_id") or key.endswith("_token_index"):
            if isinstance(v, int) and not 0 <= v < t_vocab:
                cfg[key] = None
            elif isinstance(v, list):
                kept = [i for i in v if isinstance(i, int) and 0 <= i < t_vocab]
                cfg[key] = kept or None
    cfg["max_position_embeddings"] = max(int(_num(real, "max_position_embeddings") or 0), 512)
    return cfg, notes


def _eventual_period(sigs: list) -> tuple[int, int]:
    """(p0, p): a lead p0 and a cycle p, with sigs[i] == sigs[i + p] for every i >= p0 and the cycle seen at least
    twice; the shortest p0 + p (then the shortest cycle)."""
    n = len(sigs)
    for total in range(1, n + 1):
        for p in range(1, total + 1):
            p0 = total - p
            if n - p0 >= 2 * p and all(sigs[i] == sigs[i + p] for i in range(p0, n - p)):
                return p0, p
    return n, 1


def _tiny_windows(real: dict, cfg: dict) -> None:
    """Attention windows (sliding, chunked) shorter than the verify sequence, so that windowed and global layers
    differ in the tiny model."""
    for key in ("sliding_window", "attention_chunk_size"):
        if _num(real, key):
            cfg[key] = SLIDING_WINDOW


def _index_lists(real: dict, n_real: int) -> list[str]:
    """Keys naming layers that hold a list of layer indices (llama4's `moe_layers`): strictly increasing ints below
    the layer count (a per-layer 0/1 flag list is not increasing). `mlp_only_layers` keeps its own handling."""
    out = []
    for k, v in real.items():
        if k == "mlp_only_layers" or "layer" not in k or not isinstance(v, list) or len(v) < 2 or not n_real:
            continue
        if all(isinstance(i, int) and not isinstance(i, bool) for i in v) and 0 <= v[0] \
                and all(a < b for a, b in zip(v, v[1:])) and v[-1] < n_real:
            out.append(k)
    return out


def _tiny_layers_by_signature(real: dict, cfg: dict, n_real: int, notes: list[str]) -> int:
    """Pick the real layers a tiny model keeps when the config describes layers by per-layer lists (beyond
    `layer_types`) or by counts of leading layers of another kind (`num_hash_layers`, `first_k_dense_replace`).

    Each layer's signature is its entry in every per-layer list plus whether each leading count covers it. The
    signatures are a lead followed by a cycle; the tiny model keeps the lead with runs of equal signatures
    collapsed to one layer, then two cycles (so that a stack scanned over cycles has more than one entry). Every
    per-layer list and leading count of `cfg` is cut to the kept layers. Returns the tiny layer count."""
    index_lists = {k: set(real[k]) for k in _index_lists(real, n_real)}
    lists = {k: v for k, v in real.items() if isinstance(v, list) and len(v) == n_real and k != "mlp_only_layers"
             and k not in index_lists}
    counts = {k: int(real[k]) for k in PREFIX_COUNT_KEYS if _num(real, k)}
    tails = {k: int(real[k]) for k in SUFFIX_COUNT_KEYS if _num(real, k)}
    sigs = [tuple(repr(lists[k][i]) for k in sorted(lists)) + tuple(i < counts[k] for k in sorted(counts))
            + tuple(i >= n_real - tails[k] for k in sorted(tails))
            + tuple(i in index_lists[k] for k in sorted(index_lists)) for i in range(n_real)]
    p0, p = _eventual_period(sigs)
    q = _period(sigs[:p0]) if p0 else 0
    if 0 < q < p0:  # a lead that repeats a cycle of its own (Gemma 4 e2b: 3 unshared cycles): keep one of them
        keep = list(range(q))
    else:
        keep = [i for i in range(p0) if i == 0 or sigs[i] != sigs[i - 1]]
    keep += [i for i in range(p0, min(n_real, p0 + 2 * p))]
    for k, v in lists.items():
        cfg[k] = [v[i] for i in keep]
    for k, c in counts.items():
        cfg[k] = sum(1 for i in keep if i < c)
    for k, c in tails.items():
        cfg[k] = sum(1 for i in keep if i >= n_real - c)
    for k, members in index_lists.items():
        cfg[k] = [new for new, old in enumerate(keep) if old in members]
    cfg["num_hidden_layers"] = len(keep)
    notes.append(f"{len(keep)} layers (real layers {keep}: a lead of {p0} collapsed to "
                 f"{sum(1 for i in keep if i < p0)}, then two cycles of {p})"
                 + "".join(f"; {k} {real[k]} -> {cfg[k]}" for k in tails))
    return len(keep)


def unspell_per_layer_config(hf: dict) -> list[str]:
    """transformers spells Gemma 4's global-layer sizes as `per_layer_config` ({"05": {"head_dim": 512}, ...}, keyed
    by real layer indices); MaxText and the tiny derivation name them `global_head_dim` /
    `num_global_key_value_heads`. Where the overrides are the same on exactly the full-attention layers, put them
    back as those keys (the config class spells them again for the tiny layer count). Changes hf in place."""
    plc = hf.get("per_layer_config")
    if not isinstance(plc, dict) or not plc:
        return []
    try:
        layers = sorted(int(k) for k in plc)
    except (TypeError, ValueError):
        return []
    values = list(plc.values())
    if any(v != values[0] for v in values) or not isinstance(values[0], dict) \
            or any(k not in PER_LAYER_TO_GLOBAL for k in values[0]):
        return []
    types = hf.get("layer_types")
    if isinstance(types, list) and layers != [i for i, t in enumerate(types) if t == "full_attention"]:
        return []
    for k, v in values[0].items():
        hf[PER_LAYER_TO_GLOBAL[k]] = v
    hf.pop("per_layer_config")
    names = ", ".join(PER_LAYER_TO_GLOBAL[k] for k in values[0])
    return [f"per_layer_config of the full-attention layers read as {names}"]
