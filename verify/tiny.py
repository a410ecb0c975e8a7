"""Tiny configs derived from a model's real ones: an HF config dict and MaxText overrides that build small,
fast models with the structure that matters for mapping.

What is kept (issue 5): kv_heads != heads when the real model groups queries (same group size, capped at 4);
heads*head_dim vs hidden at the real ratio; at least 2 layers and at least one full cycle of inhomogeneous layers
(the period of `layer_types`, dense-then-MoE layers); >= 4 experts; a vocab padded on the MaxText side when the
real MaxText vocab is padded; a sliding window shorter than the verify sequence, so local and global layers differ;
a rotary fraction and multimodal RoPE sections (`partial_rotary_factor`, `mrope_section`) that fit the tiny head_dim
(the real fraction where it leaves a whole number of frequencies, at least one per section; the sections rescaled).

The HF config is derived first (from the real HF config's keys); each MaxText size key then takes the tiny value
of the HF key that held the same real value (or the real MaxText/HF ratio applied to it), so no per-model answer
is written down here: only which config keys name which quantity.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from dataclasses import dataclass, field

from ckptmap.errors import CkptmapError

HEAD_DIM = 16
VOCAB = 256
VOCAB_PADDING = 16
SLIDING_WINDOW = 16  # < the verify sequence length (64)
# DeepSeek-V3.2's sparse-attention indexer: a top-k below the verify sequence (so that it selects), and enough heads
# that no two keys tie. Its score sums ReLUs over heads: with 2 heads many keys score exactly 0, and torch.topk and
# MaxText (first k) break such ties differently; with 16 a key scores 0 with probability 2^-16.
INDEX_TOPK = 16
INDEX_HEADS = 16
MAX_GROUP = 4  # query heads per kv head, at most

# MaxText key -> HF keys that may hold the same quantity, most likely first.
MAXTEXT_TO_HF_KEYS: dict[str, tuple[str, ...]] = {
    "base_emb_dim": ("hidden_size",),
    "base_num_query_heads": ("num_attention_heads",),
    "base_num_kv_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "global_head_dim": ("global_head_dim",),
    "base_mlp_dim": ("intermediate_size_mlp", "intermediate_size", "shared_expert_intermediate_size",
                     "moe_intermediate_size"),
    "base_moe_mlp_dim": ("moe_intermediate_size", "intermediate_size"),
    "base_num_decoder_layers": ("num_hidden_layers",),
    "first_num_dense_layers": ("first_k_dense_replace",),
    "num_experts": ("num_local_experts", "n_routed_experts", "num_experts"),
    "num_experts_per_tok": ("num_experts_per_tok", "top_k_experts", "experts_per_token"),
    "shared_experts": ("n_shared_experts",),
    "n_routing_groups": ("n_group",),
    "topk_routing_group": ("topk_group",),
    "q_lora_rank": ("q_lora_rank",),
    "kv_lora_rank": ("kv_lora_rank",),
    "qk_nope_head_dim": ("qk_nope_head_dim",),
    "qk_rope_head_dim": ("qk_rope_head_dim",),
    "v_head_dim": ("v_head_dim",),
    "gdn_conv_kernel_dim": ("linear_conv_kernel_dim",),
    "gdn_key_head_dim": ("linear_key_head_dim",),
    "gdn_value_head_dim": ("linear_value_head_dim",),
    "gdn_num_key_heads": ("linear_num_key_heads",),
    "gdn_num_value_heads": ("linear_num_value_heads",),
    "sliding_window_size": ("sliding_window",),
    "chunk_attn_window_size": ("attention_chunk_size",),
    "num_global_kv_heads": ("num_global_key_value_heads",),
    "first_num_hash_layers": ("num_hash_layers",),
    "o_lora_rank": ("o_lora_rank",),
    "o_groups": ("o_groups",),
    "indexer_topk": ("index_topk",),
    "indexer_n_heads": ("index_n_heads",),
    "indexer_head_dim": ("index_head_dim",),
}

# MaxText list keys -> HF keys holding the same per-layer list (cut to the tiny layers alike).
MAXTEXT_TO_HF_LISTS: dict[str, tuple[str, ...]] = {
    "compress_ratios": ("compress_ratios",),
}

# HF keys counting leading layers of another kind (dense before MoE, hash-routed before learned routing).
PREFIX_COUNT_KEYS = ("first_k_dense_replace", "num_hash_layers")


class TinyConfigError(CkptmapError):
    """Tiny configs could not be derived."""


@dataclass
class TinyPair:
    """A tiny HF config (a dict with `model_type`) and the MaxText overrides ("key=value") for one model."""

    maxtext_model: str
    hf_config: dict
    maxtext_overrides: list[str]
    notes: list[str] = field(default_factory=list)

    def overrides_dict(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.maxtext_overrides)


def _round_to(x: float, step: int, minimum: int) -> int:
    return max(minimum, int(round(x / step)) * step)


def _period(types: list) -> int:
    """The smallest p with types[i] == types[i % p] for all i (1 for a homogeneous stack)."""
    n = len(types)
    for p in range(1, n + 1):
        if all(types[i] == types[i % p] for i in range(n)):
            return p
    return n


def _num(d: dict, key: str):
    v = d.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def tiny_hf_config(real_hf: dict, real_maxtext: dict | None = None) -> tuple[dict, list[str]]:
    """Real HF config dict -> (tiny HF config dict, notes). Multimodal configs give their text model only."""
    notes: list[str] = []
    cfg = copy.deepcopy(real_hf)  # nested dicts (RoPE) are edited below; the real config stays as it is
    if isinstance(cfg.get("text_config"), dict) and "model_type" in cfg["text_config"]:
        notes.append(f"text model only ({cfg['text_config']['model_type']} of {cfg.get('model_type')})")
        cfg = copy.deepcopy(cfg["text_config"])
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
        ratio_vk = max(1, real.get("linear_num_value_heads", real["linear_num_key_heads"]) // real["linear_num_key_heads"])
        cfg["linear_num_key_heads"] = 2
        if "linear_num_value_heads" in real:
            cfg["linear_num_value_heads"] = 2 * min(ratio_vk, MAX_GROUP)
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
    if n_real and (per_layer or _num(real, "num_hash_layers")):
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
    sigs = [tuple(repr(lists[k][i]) for k in sorted(lists)) + tuple(i < counts[k] for k in sorted(counts))
            + tuple(i in index_lists[k] for k in sorted(index_lists)) for i in range(n_real)]
    p0, p = _eventual_period(sigs)
    keep = [i for i in range(p0) if i == 0 or sigs[i] != sigs[i - 1]]
    keep += [i for i in range(p0, min(n_real, p0 + 2 * p))]
    for k, v in lists.items():
        cfg[k] = [v[i] for i in keep]
    for k, c in counts.items():
        cfg[k] = sum(1 for i in keep if i < c)
    for k, members in index_lists.items():
        cfg[k] = [new for new, old in enumerate(keep) if old in members]
    cfg["num_hidden_layers"] = len(keep)
    notes.append(f"{len(keep)} layers (real layers {keep}: a lead of {p0} collapsed to "
                 f"{sum(1 for i in keep if i < p0)}, then two cycles of {p})")
    return len(keep)


def _flat_numbers(d: dict) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tiny_maxtext_overrides(real_maxtext: dict, real_hf: dict, tiny_hf: dict) -> list[str]:
    """MaxText size keys of the model yml -> tiny values, through the HF key that held the same real value."""
    hf_text = real_hf.get("text_config") if isinstance(real_hf.get("text_config"), dict) else real_hf
    real_nums, tiny_nums = _flat_numbers(hf_text), _flat_numbers(tiny_hf)
    if "head_dim" not in real_nums and "kv_lora_rank" not in real_nums:  # implicit hidden / heads
        real_nums["head_dim"] = real_nums["hidden_size"] // real_nums["num_attention_heads"]
    out: dict[str, int] = {}
    for mt_key, hf_keys in MAXTEXT_TO_HF_KEYS.items():
        real_v = _num(real_maxtext, mt_key)
        present = [k for k in hf_keys if k in tiny_hf and (k in real_nums or tiny_hf.get(k) is not None)]
        if real_v is None:
            continue
        if real_v <= 0:  # disabled in MaxText (q_lora_rank 0, no groups): stays disabled
            continue
        same = [k for k in present if real_nums.get(k) == real_v and isinstance(tiny_nums.get(k), (int, float))]
        if same:
            out[mt_key] = int(tiny_nums[same[0]])
            continue
        ratio_src = [k for k in present if real_nums.get(k) and isinstance(tiny_nums.get(k), (int, float))]
        if ratio_src:
            k = ratio_src[0]
            out[mt_key] = max(1, int(round(tiny_nums[k] * real_v / real_nums[k])))
    mt_vocab = _num(real_maxtext, "vocab_size")
    if mt_vocab is not None:
        out["vocab_size"] = VOCAB
    lists: dict[str, str] = {}
    for mt_key, hf_keys in MAXTEXT_TO_HF_LISTS.items():
        real_v = real_maxtext.get(mt_key)
        same = [k for k in hf_keys if isinstance(real_v, list) and hf_text.get(k) == real_v
                and isinstance(tiny_hf.get(k), list)]
        if same:
            lists[mt_key] = "[" + ",".join(str(x) for x in tiny_hf[same[0]]) + "]"
    return [f"{k}={v}" for k, v in out.items()] + [f"{k}={v}" for k, v in lists.items()]


def reconcile_rope(tiny_hf: dict, real_maxtext: dict) -> list[str]:
    """Make the HF config's RoPE bases those MaxText runs with (its yml is what its model uses; the paired HF
    config can disagree, e.g. a global-layer theta): `rope_max_timescale` is the (global) theta,
    `local_rope_max_timescale` the sliding layers' one. Changes tiny_hf in place; returns notes."""
    notes = []
    theta, local = _num(real_maxtext, "rope_max_timescale"), _num(real_maxtext, "local_rope_max_timescale")
    rp = tiny_hf.get("rope_parameters")
    if not isinstance(rp, dict) or theta is None:
        return notes
    per_type = {k: v for k, v in rp.items() if isinstance(v, dict)}
    targets = []
    if per_type:
        for layer_type, params in per_type.items():
            want = local if ("sliding" in layer_type or "local" in layer_type) and local is not None else theta
            targets.append((params, want, layer_type))
    else:
        targets.append((rp, theta, "all layers"))
    for params, want, where in targets:
        if "rope_theta" in params and params["rope_theta"] != want:
            notes.append(f"rope_theta of {where}: {params['rope_theta']:g} -> {want:g} (MaxText's)")
            params["rope_theta"] = float(want)
    if str(real_maxtext.get("rope_type", "")).lower() == "default":
        # MaxText's yml says plain RoPE: the HF side drops its YaRN scaling too (DeepSeek-V4's compressed layers)
        for params, _, where in targets:
            kind = params.get("rope_type", params.get("type", "default"))
            if kind == "yarn":
                for key in [k for k in params if k not in ("rope_theta", "partial_rotary_factor")]:
                    params.pop(key)
                params["rope_type"] = "default"
                notes.append(f"RoPE of {where}: YaRN dropped (MaxText's yml: rope_type default)")
    if str(real_maxtext.get("rope_type", "")).lower() == "yarn":
        # MaxText applies its YaRN to every layer; give the HF side the same where it has plain RoPE.
        yarn = {"rope_type": "yarn", "factor": float(real_maxtext.get("rope_factor", 1.0))}
        for mt_key, hf_key in (("original_max_position_embeddings", "original_max_position_embeddings"),
                               ("beta_fast", "beta_fast"), ("beta_slow", "beta_slow")):
            if _num(real_maxtext, mt_key) is not None:
                yarn[hf_key] = real_maxtext[mt_key]
        if real_maxtext.get("rope_attention_scaling") is False:
            yarn["attention_factor"] = 1.0
        if "rope_truncate" in real_maxtext:
            yarn["truncate"] = bool(real_maxtext["rope_truncate"])
        for params, _, where in targets:
            if params.get("rope_type", "default") == "default":
                params.update(yarn)
                notes.append(f"RoPE of {where}: YaRN x{yarn['factor']:g} (MaxText's)")
    return notes


def _rope_dicts(cfg: dict) -> list[dict]:
    """The RoPE parameter dicts of an HF config: `rope_parameters` (transformers 5) or `rope_scaling` (older), or
    their per-layer-type sub-dicts ({"full_attention": {...}, "sliding_attention": {...}})."""
    out = []
    for key in ("rope_parameters", "rope_scaling"):
        rp = cfg.get(key)
        if not isinstance(rp, dict):
            continue
        subs = [v for v in rp.values() if isinstance(v, dict)]
        out.extend(subs if subs else [rp])
    return out


def scale_sections(sections: list[int], total: int) -> list[int]:
    """`sections` rescaled to sum to `total` (largest remainders), every non-zero section kept >= 1."""
    nonzero = [i for i, s in enumerate(sections) if s > 0]
    if total < len(nonzero):
        raise TinyConfigError(f"cannot share {total} frequencies among the sections {sections}", key="mrope_section")
    out = [1 if s > 0 else 0 for s in sections]
    rest = total - len(nonzero)  # shared beyond each section's first frequency, proportionally to its real size
    extra = {i: sections[i] - 1 for i in nonzero}
    weight = sum(extra.values())
    if rest and weight:
        share = {i: rest * extra[i] / weight for i in nonzero}
        for i in nonzero:
            out[i] += int(share[i])
        left = rest - sum(int(v) for v in share.values())
        for i in sorted(nonzero, key=lambda i: (int(share[i]) - share[i], i))[:left]:
            out[i] += 1
    elif rest:
        for k in range(rest):
            out[nonzero[k % len(nonzero)]] += 1
    return out


def tiny_rotary(tiny_hf: dict, real_hf_text: dict, real_maxtext: dict) -> tuple[dict[str, str], list[str]]:
    """Make the rotary fraction and the multimodal RoPE sections fit the tiny head_dim, on both sides.

    The rotated part has `int(head_dim * partial_rotary_factor)` channels, i.e. half as many frequencies, and
    `mrope_section` (temporal, height, width) must share exactly those frequencies. At the tiny head_dim the real
    sections no longer add up, and a small rotary fraction may leave fewer frequencies than there are sections.
    So: the tiny frequency count is the real fraction of the tiny head_dim (rounded), raised to the number of
    non-zero sections when it is smaller (the fraction then follows), and the sections are the real ones rescaled
    to that count, each non-zero one >= 1. Nothing changes where the real values already fit. Changes `tiny_hf` in
    place (the fraction where the real config keeps it: the RoPE dict and/or the top level); returns the MaxText
    overrides (`partial_rotary_factor`, `mrope_section`: where MaxText's yml sets them to another value) and notes.
    """
    head_dim = _num(tiny_hf, "head_dim")
    if not head_dim:
        return {}, []
    head_dim = int(head_dim)
    rope_dicts = _rope_dicts(tiny_hf)
    in_dicts = [d for d in rope_dicts if _num(d, "partial_rotary_factor")]
    at_top = _num(tiny_hf, "partial_rotary_factor") is not None
    if in_dicts:
        factor = float(in_dicts[0]["partial_rotary_factor"])
    elif at_top:
        factor = float(tiny_hf["partial_rotary_factor"])
    elif _num(real_maxtext, "partial_rotary_factor"):
        factor = float(real_maxtext["partial_rotary_factor"])
    else:
        factor = 1.0
    sections = next((list(d["mrope_section"]) for d in _rope_dicts(real_hf_text)
                     if isinstance(d.get("mrope_section"), list)), None)
    if sections is None and isinstance(real_maxtext.get("mrope_section"), list):
        sections = list(real_maxtext["mrope_section"])
    sections = [int(x) for x in sections] if sections else None

    freqs = max(1, int(round(head_dim * factor / 2)))
    if sections:
        freqs = max(freqs, len([x for x in sections if x > 0]))
    freqs = min(freqs, head_dim // 2)
    new_factor = factor
    if int(head_dim * factor) != 2 * freqs:
        new_factor = 2 * freqs / head_dim
        while int(head_dim * new_factor) < 2 * freqs:  # float round-off below the exact count
            new_factor = math.nextafter(new_factor, 2.0)

    notes: list[str] = []
    overrides: dict[str, str] = {}
    if new_factor != factor:
        notes.append(f"partial_rotary_factor {factor:g} -> {new_factor:g} ({freqs} rotary frequencies at "
                     f"head_dim {head_dim})")
        for d in in_dicts or ([] if at_top else rope_dicts):
            d["partial_rotary_factor"] = new_factor
        if at_top or not (in_dicts or rope_dicts):
            tiny_hf["partial_rotary_factor"] = new_factor
    mt_factor = _num(real_maxtext, "partial_rotary_factor")
    if mt_factor is not None and new_factor != float(mt_factor):
        overrides["partial_rotary_factor"] = repr(float(new_factor))
    if sections:
        new_sections = scale_sections(sections, freqs)
        if new_sections != sections:
            notes.append(f"mrope_section {sections} -> {new_sections}")
        for d in rope_dicts:
            if "mrope_section" in d:
                d["mrope_section"] = list(new_sections)
        mt_sections = real_maxtext.get("mrope_section")
        if (mt_sections is not None or real_maxtext.get("use_mrope")) and new_sections != mt_sections:
            overrides["mrope_section"] = "[" + ",".join(str(x) for x in new_sections) + "]"
    return overrides, notes


# ---------------------------------------------------------------------------------------------------------------
# MaxText models that ship without a paired HF config (mistral-7b, llama2/llama3, llama4, gemma-7b, kimi-k2, ...):
# the HF config is derived from MaxText's own yml. The HF model type comes from MaxText's `decoder_block`: the HF
# config of the sibling MaxText model with the same decoder block whose yml agrees best (llama2-7b -> llama3.1-8b's
# LlamaConfig, kimi-k2 -> deepseek3's DeepseekV3Config), else the transformers model type spelled like the block
# (`mistral`, `gemma`, `llama4`). Its values are then those MaxText runs with: the yml over base.yml, written
# through the key tables below (which keys name which quantity), and the RoPE MaxText's attention picks.

# MaxText keys -> HF keys, for quantities that are not sizes (read from the yml over base.yml).
MAXTEXT_TO_HF_SETTINGS: dict[str, tuple[str, ...]] = {
    "normalization_layer_epsilon": ("rms_norm_eps", "layer_norm_eps", "norm_eps"),
    "logits_via_embedding": ("tie_word_embeddings",),
    "nope_layer_interval": ("no_rope_layer_interval",),
    "temperature_tuning": ("attn_temperature_tuning",),
    "use_qk_norm": ("use_qk_norm",),
    "interleave_moe_layer_step": ("interleave_moe_layer_step",),
    "routed_scaling_factor": ("routed_scaling_factor",),
    "vocab_size": ("vocab_size",),
    "compressed_rope_max_timescale": ("compress_rope_theta",),
}
# Windows MaxText turns off with 0 (base.yml): off there means None on the HF side.
MAXTEXT_WINDOWS: dict[str, str] = {"sliding_window_size": "sliding_window", "chunk_attn_window_size":
                                   "attention_chunk_size"}
# MaxText's YaRN keys -> the HF rope dict's keys.
MAXTEXT_TO_HF_YARN: dict[str, tuple[str, ...]] = {
    "rope_factor": ("factor",),
    "original_max_position_embeddings": ("original_max_position_embeddings",),
    "beta_fast": ("beta_fast",),
    "beta_slow": ("beta_slow",),
    "mscale": ("mscale", "mscale_all_dim"),
}
# MaxText's llama3.1 RoPE scaling is fixed in its code (`LLaMARotaryEmbedding._apply_scaling_factor`): these are
# its constants, written as transformers' `llama3` rope parameters.
MAXTEXT_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}


def maxtext_catalog() -> dict:
    """{"base": base.yml, "models": {name: model yml}, "hf_models": [names with a paired HF config]} of the
    installed MaxText (in-process when MaxText imports, else through the MaxText venv; cached per process)."""
    import json

    return json.loads(_catalog_json())


@functools.lru_cache(maxsize=1)
def _catalog_json() -> str:
    import json

    try:
        import maxtext  # noqa: F401
        return json.dumps(_read_catalog())
    except ImportError:
        pass
    from ckptmap.verify.real_configs import last_line_in_maxtext_venv

    return last_line_in_maxtext_venv(["ckptmap.verify.tiny", "catalog"], "reading MaxText's model configs")


def _read_catalog() -> dict:
    import importlib.resources

    import yaml
    from maxtext.checkpoint_conversion.utils.hf_model_configs import HF_MODEL_CONFIGS

    from ckptmap.verify.real_configs import _json_safe

    root = importlib.resources.files("maxtext") / "configs"
    models = {}
    for f in sorted((root / "models").iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yml"):
            models[f.name[:-4]] = _json_safe(yaml.safe_load(f.read_text()) or {})
    return {"base": _json_safe(yaml.safe_load((root / "base.yml").read_text()) or {}), "models": models,
            "hf_models": sorted(k for k in HF_MODEL_CONFIGS if k in models)}


def _yaml_value(v):
    """A yml scalar as MaxText reads it: YAML 1.1 leaves `1e-05` (no dot) a string; MaxText's config makes it a
    number."""
    if isinstance(v, str):
        try:
            return int(v) if v.strip().lstrip("-").isdigit() else float(v)
        except ValueError:
            return v
    return v


def _agreement(a: dict, b: dict) -> int:
    """How well two model ymls agree: keys with equal values, less keys only one of them sets."""
    return sum(1 for k in a if k in b and a[k] == b[k]) - len(set(a) ^ set(b))


def hf_template(model_name: str, catalog: dict) -> tuple[dict, str]:
    """(an HF config dict to start from, where it came from) for a MaxText model without a paired HF config."""
    yml = catalog["models"][model_name]
    block = yml.get("decoder_block")
    siblings = [m for m in catalog["hf_models"] if catalog["models"][m].get("decoder_block") == block]
    if siblings:
        best = max(siblings, key=lambda m: (_agreement(yml, catalog["models"][m]), m))
        from ckptmap.verify.real_configs import real_configs

        hf = real_configs(best)["hf"]
        return hf, f"HF config of {best} (same decoder block {block!r})"
    from transformers import CONFIG_MAPPING

    if not isinstance(block, str) or block not in CONFIG_MAPPING:
        raise TinyConfigError(f"{model_name}: MaxText pairs no HF config with it and its decoder block {block!r} is "
                              "no transformers model type", key=model_name)
    return CONFIG_MAPPING[block]().to_dict(), f"transformers' {block} config (MaxText's decoder block)"


def maxtext_rope(model_name: str, merged: dict, template_rope: dict | None) -> dict:
    """The HF rope parameters of the RoPE MaxText's attention uses for this model (`attentions.py`: llama3.1
    scaling by model name or rope_type, YaRN, else plain), at its theta."""
    theta = float(merged.get("rope_max_timescale", 10000))
    kind = str(merged.get("rope_type", "default")).lower()
    if model_name.startswith("llama3.1") or kind.startswith("llama3.1"):
        rope = dict(MAXTEXT_LLAMA31_ROPE) if merged.get("rope_use_scale", True) else {"rope_type": "default"}
    elif kind.startswith("yarn"):
        rope = {"rope_type": "yarn"}
        if template_rope and template_rope.get("rope_type", template_rope.get("type")) == "yarn":
            rope = {k: v for k, v in template_rope.items() if k != "type"}
        for mt_key, hf_keys in MAXTEXT_TO_HF_YARN.items():
            if _num(merged, mt_key) is not None:
                for k in hf_keys:
                    rope[k] = merged[mt_key]
    else:
        rope = {"rope_type": "default"}
    if template_rope and _num(template_rope, "partial_rotary_factor"):
        rope["partial_rotary_factor"] = template_rope["partial_rotary_factor"]
    rope["rope_theta"] = theta
    return rope


def hf_config_from_maxtext(model_name: str, catalog: dict | None = None) -> tuple[dict, list[str]]:
    """(full-size HF config dict, notes) for a MaxText model that ships no paired HF config: see above."""
    catalog = catalog or maxtext_catalog()
    if model_name not in catalog["models"]:
        raise TinyConfigError(f"MaxText has no model yml {model_name!r}", key=model_name)
    yml = {k: _yaml_value(v) for k, v in catalog["models"][model_name].items()}
    merged = {**{k: _yaml_value(v) for k, v in catalog["base"].items()}, **yml}
    template, origin = hf_template(model_name, catalog)
    notes = [f"HF config derived from MaxText's yml, starting from the {origin}"]
    if isinstance(template.get("text_config"), dict) and "model_type" in template["text_config"]:
        template = template["text_config"]
    cfg = copy.deepcopy(template)
    for k in ("architectures", "auto_map", "_name_or_path", "transformers_version", "id2label", "label2id",
              "dtype", "torch_dtype", "quantization_config"):
        cfg.pop(k, None)
    n_template = _num(cfg, "num_hidden_layers")
    claimed: set[str] = set()
    for table, source in ((MAXTEXT_TO_HF_KEYS, yml), (MAXTEXT_TO_HF_SETTINGS, merged)):
        for mt_key, hf_keys in table.items():
            v = source.get(mt_key)
            if v is None or isinstance(v, (list, dict)):
                continue
            hf_key = next((k for k in hf_keys if k in cfg and k not in claimed), None)
            if hf_key is None:
                continue
            if table is MAXTEXT_TO_HF_KEYS and (not isinstance(v, (int, float)) or v <= 0):
                continue
            claimed.add(hf_key)
            if cfg.get(hf_key) != v:
                cfg[hf_key] = v
    for k, v in yml.items():
        # a yml key spelled as the HF config spells it (use_qk_norm, norm_topk_prob, ...) names the same quantity
        if k in cfg and k not in claimed and k != "model_type" and isinstance(v, (bool, int, float)) \
                and isinstance(cfg[k], (bool, int, float)) and isinstance(v, bool) == isinstance(cfg[k], bool):
            cfg[k] = v
    for mt_key, hf_key in MAXTEXT_WINDOWS.items():
        if hf_key in cfg and not (_num(merged, mt_key) or 0) > 0:
            cfg[hf_key] = None
    kept_lists = set()
    for mt_key, hf_keys in MAXTEXT_TO_HF_LISTS.items():
        if isinstance(yml.get(mt_key), list):
            for k in hf_keys:
                if k in cfg:
                    cfg[k] = list(yml[mt_key])
                    kept_lists.add(k)
    rope_key = "rope_parameters" if "rope_parameters" in cfg or "rope_scaling" not in cfg else "rope_scaling"
    template_rope = cfg.get(rope_key) if isinstance(cfg.get(rope_key), dict) else None
    if template_rope and any(isinstance(v, dict) for v in template_rope.values()):
        notes.append("per-layer-type RoPE kept from the template")
    else:
        cfg[rope_key] = maxtext_rope(model_name, merged, template_rope)
        cfg.pop("rope_theta", None)
        notes.append(f"RoPE {cfg[rope_key]['rope_type']} at theta {cfg[rope_key]['rope_theta']:g} (MaxText's)")
    # per-layer lists (layer_types, no_rope_layers, moe_layers) are the template's: the config class recomputes
    # them from the counts and intervals just set
    if n_template:
        for k, v in list(cfg.items()):
            if k not in kept_lists and isinstance(v, list) \
                    and (len(v) == n_template or k in _index_lists(template, int(n_template))):
                cfg.pop(k)
    from transformers import AutoConfig

    model_type = cfg.pop("model_type")
    built = AutoConfig.for_model(model_type, **cfg).to_dict()
    for k in ("architectures", "transformers_version", "id2label", "label2id", "_name_or_path", "dtype"):
        built.pop(k, None)
    respelled = {k: v for k, v in cfg.items() if k not in built}
    if respelled:
        # the class re-expressed keys set here in its own spelling (DeepSeek-V4's compress_ratios / num_hash_layers
        # -> layer_types / mlp_layer_types, a flat rope dict -> per-layer-type ones): keep the spelling the paired
        # configs use, as set here
        built = {**cfg, "model_type": model_type}
    return built, notes


# Keys of a per-layer override (transformers' `per_layer_config`) -> the config key naming the same quantity for the
# full-attention (global) layers.
PER_LAYER_TO_GLOBAL = {"head_dim": "global_head_dim", "num_key_value_heads": "num_global_key_value_heads"}


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
    return [f"per_layer_config of the full-attention layers read as {', '.join(PER_LAYER_TO_GLOBAL[k] for k in values[0])}"]


def reconcile_llama31_rope(tiny_hf: dict, real_maxtext: dict, model_name: str) -> list[str]:
    """Give the HF side the llama3.1 RoPE scaling exactly where MaxText's attention applies it (by model name or
    rope_type, unless rope_use_scale is off), and drop a `llama3` scaling MaxText does not apply. MaxText's paired
    HF config can disagree (llama3.1-405b's has plain RoPE); the note names it. Changes tiny_hf in place."""
    key = "rope_parameters" if "rope_parameters" in tiny_hf or "rope_scaling" not in tiny_hf else "rope_scaling"
    rp = tiny_hf.get(key)
    if isinstance(rp, dict) and any(isinstance(v, dict) for v in rp.values()):
        return []  # per-layer-type RoPE: not a llama family
    rp = dict(rp) if isinstance(rp, dict) else {}
    kind = str(real_maxtext.get("rope_type", "default")).lower()
    scaled = (model_name.startswith("llama3.1") or kind.startswith("llama3.1")) \
        and real_maxtext.get("rope_use_scale", True) is not False
    have = rp.get("rope_type", rp.get("type", "default"))
    theta = rp.get("rope_theta", tiny_hf.get("rope_theta", real_maxtext.get("rope_max_timescale", 10000)))
    if scaled and any(rp.get(k) != v for k, v in MAXTEXT_LLAMA31_ROPE.items()):
        tiny_hf[key] = {**{k: v for k, v in rp.items() if k == "partial_rotary_factor"}, **MAXTEXT_LLAMA31_ROPE,
                        "rope_theta": theta}
        return [f"RoPE: MaxText applies its llama3.1 scaling here; the HF config had {have} (set to MaxText's)"]
    if not scaled and have == "llama3" and not kind.startswith("yarn"):
        tiny_hf[key] = {"rope_type": "default", "rope_theta": theta}
        return ["RoPE: MaxText applies no llama3.1 scaling here; the HF config's llama3 scaling dropped"]
    return []


def real_or_derived_configs(model_name: str) -> dict:
    """`real_configs(model_name)`, or for a MaxText model that ships only a yml, the same dict with the HF config
    derived from it (hf_config_from_maxtext; "derived_notes" says how)."""
    from ckptmap.verify.real_configs import ConfigError, real_configs

    try:
        return real_configs(model_name)
    except ConfigError:
        catalog = maxtext_catalog()
        if model_name not in catalog["models"]:
            raise
    hf, notes = hf_config_from_maxtext(model_name, catalog)
    yml = {k: _yaml_value(v) for k, v in catalog["models"][model_name].items()}
    for mt_key, hf_keys in MAXTEXT_TO_HF_KEYS.items():
        # a size the yml leaves at base.yml's value (llama4's head_dim) is still a size the tiny model changes
        base = _num({mt_key: _yaml_value(catalog["base"].get(mt_key))}, mt_key)
        if mt_key not in yml and base and base > 0 and any(hf.get(k) == base for k in hf_keys):
            yml[mt_key] = base
    return {"model_name": model_name, "maxtext": yml, "hf": hf, "derived_notes": notes}


def derive_tiny(maxtext_model: str, real: dict | None = None) -> TinyPair:
    """MaxText model name -> TinyPair, from the real configs (read through the MaxText venv unless given; a model
    MaxText pairs with no HF config gets one derived from its yml, see hf_config_from_maxtext)."""
    if real is None:
        real = real_or_derived_configs(maxtext_model)
    maxtext_model = real.get("model_name") or maxtext_model  # a family name (`qwen3.5`) -> MaxText's name
    real = dict(real, hf=copy.deepcopy(real["hf"]))
    spelled = unspell_per_layer_config(real["hf"].get("text_config") if isinstance(real["hf"].get("text_config"),
                                                                                   dict) else real["hf"])
    hf_cfg, notes = tiny_hf_config(real["hf"], real["maxtext"])
    notes = list(real.get("derived_notes", [])) + spelled + notes
    notes += reconcile_rope(hf_cfg, real["maxtext"])
    from ckptmap.verify.config_diff import reconcile_activation  # the activation MaxText computes (gemma3's gelu)

    notes += reconcile_activation(hf_cfg, real["maxtext"])
    notes += reconcile_llama31_rope(hf_cfg, real["maxtext"], maxtext_model)
    overrides = tiny_maxtext_overrides(real["maxtext"], real["hf"], hf_cfg)
    real_text = real["hf"].get("text_config") if isinstance(real["hf"].get("text_config"), dict) else real["hf"]
    rotary, rotary_notes = tiny_rotary(hf_cfg, real_text, real["maxtext"])
    overrides += [f"{k}={v}" for k, v in rotary.items()]
    notes += rotary_notes
    return TinyPair(maxtext_model=maxtext_model, hf_config=hf_cfg, maxtext_overrides=overrides, notes=notes)


def check_tiny(pair: TinyPair) -> list[str]:
    """What a tiny pair must keep, as a list of violations (empty when fine)."""
    c = pair.hf_config
    bad = []
    if c["num_hidden_layers"] < 2:
        bad.append("fewer than 2 layers")
    for key in ("num_local_experts", "n_routed_experts", "num_experts"):
        if c.get(key) and c[key] < 4:
            bad.append(f"{key} < 4")
    if c.get("sliding_window") and c["sliding_window"] >= 64:
        bad.append("sliding window not shorter than the verify sequence")
    if not math.isfinite(c["hidden_size"]):
        bad.append("hidden size")
    return bad


if __name__ == "__main__":  # in the MaxText venv: `python -m ckptmap.verify.tiny catalog`
    if sys.argv[1:] == ["catalog"]:
        import json

        print(json.dumps(_read_catalog()))
        sys.exit(0)
    print("usage: python -m ckptmap.verify.tiny catalog", file=sys.stderr)
    sys.exit(2)
