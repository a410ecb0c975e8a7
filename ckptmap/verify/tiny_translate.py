"""The tiny HF config carried to the MaxText side: MaxText's size overrides through the HF keys that held the same
real values, and RoPE made the same on both sides (theta, YaRN, llama3.1 scaling, the rotary fraction and
multimodal sections at the tiny head_dim). Each function edits or reads plain dicts and returns notes."""

from __future__ import annotations

import math

from ckptmap.verify.tiny_towers import text_part
from ckptmap.verify.tiny_keys import (MAXTEXT_LLAMA31_ROPE, MAXTEXT_TO_HF_KEYS, MAXTEXT_TO_HF_LISTS, VOCAB,
                                      TinyConfigError, _num)


def _flat_numbers(d: dict) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tiny_maxtext_overrides(real_maxtext: dict, real_hf: dict, tiny_hf: dict) -> list[str]:
    """MaxText size keys of the model yml -> tiny values, through the HF key that held the same real value."""
    hf_text = text_part(real_hf)
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


# MaxText size keys -> the one HF text-config key for the same attention geometry (see adopt_maxtext_geometry)
GEOMETRY_KEYS = {"base_emb_dim": "hidden_size", "base_num_query_heads": "num_attention_heads",
                 "base_num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
                 "base_num_decoder_layers": "num_hidden_layers", "vocab_size": "vocab_size"}


def adopt_maxtext_geometry(real_hf_text: dict, real_maxtext: dict) -> list[str]:
    """Where the paired HF config's query heads disagree with MaxText's yml (Qwen3-Omni's thinker: 28 heads, vocab
    3584, no head_dim, against MaxText's 32 x 128 and 152064), it describes another model than the one MaxText
    builds: its attention sizes, layer count and vocab are taken from the yml (what MaxText's model uses). MLA
    configs (their head_dim is the rotary part) and agreeing configs are left alone. Changes real_hf_text in place;
    returns notes."""
    heads, mt_heads = _num(real_hf_text, "num_attention_heads"), _num(real_maxtext, "base_num_query_heads")
    if not heads or not mt_heads or heads == mt_heads or _num(real_hf_text, "kv_lora_rank") is not None:
        return []
    changed = []
    for mt_key, hf_key in GEOMETRY_KEYS.items():
        v = _num(real_maxtext, mt_key)
        if v and v > 0 and real_hf_text.get(hf_key) != v and (hf_key in real_hf_text or hf_key == "head_dim"):
            changed.append(f"{hf_key} {real_hf_text.get(hf_key)} -> {v}")
            real_hf_text[hf_key] = v
    return [f"the paired HF config's text part disagrees with MaxText's yml on the query heads: MaxText's sizes "
            f"taken ({', '.join(changed)})"]


def reconcile_tied(tiny_hf_text: dict, real_maxtext: dict) -> list[str]:
    """Give the tiny HF text config the embedding tying MaxText's model has (`logits_via_embedding` in its yml, else
    base.yml's false): a paired config can say otherwise (Qwen3-VL-30B-A3B's text part says tied, its top level and
    MaxText untied), and no mapping of the weights repairs that. Changes tiny_hf_text in place; returns notes."""
    if "tie_word_embeddings" not in tiny_hf_text:
        return []
    want = bool(real_maxtext.get("logits_via_embedding", False))
    if bool(tiny_hf_text["tie_word_embeddings"]) == want:
        return []
    tiny_hf_text["tie_word_embeddings"] = want
    return [f"tie_word_embeddings -> {want} (MaxText's logits_via_embedding)"]
