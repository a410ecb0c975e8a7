"""The towers of a multimodal model (vision, audio) shrunk with its text model, on both sides.

A composite HF config (Qwen3-VL, Weaver: `text_config` + `vision_config`; Qwen3-Omni: the same under
`thinker_config`, with `audio_config`) keeps its composite form, so that verify's HF runner builds the model MaxText
mirrors: the text part is the tiny text config, each tower gets a tiny width, head count and depth, its feature
width (what it hands the text model) the tiny text width, and its layer-index lists (deepstack taps) cut to the tiny
depth. MaxText names a tower's keys with a suffix (`hidden_size_for_vit`, `d_model_for_audio`); each such key takes
the tiny value of the tower key that held the same real value (the one sharing most name words where several do),
so no model is named here: only which HF sub-config goes with which MaxText suffix.
"""

from __future__ import annotations

import copy

from ckptmap.verify.tiny_keys import _num, _round_to

# HF tower sub-config -> the suffix of MaxText's keys for it
TOWER_SUFFIX = {"vision_config": "_for_vit", "audio_config": "_for_audio"}
TOWER_WIDTH_KEYS = ("hidden_size", "d_model")
TOWER_HEAD_KEYS = ("num_heads", "num_attention_heads", "encoder_attention_heads")
TOWER_DEPTH_KEYS = ("depth", "num_hidden_layers", "encoder_layers")
TOWER_FFN_KEYS = ("intermediate_size", "encoder_ffn_dim")
TOWER_SCALED_KEYS = ("downsample_hidden_size",)  # inner widths that scale with the tower
TOWER_OUT_KEYS = ("out_hidden_size", "output_dim")  # the features handed to the text model: its width
TINY_TOWER_WIDTH = 32
TINY_TOWER_HEADS = 2
TINY_TOWER_DEPTH = 2


def text_holder(hf: dict) -> dict | None:
    """The dict of a composite HF config that holds its `text_config` (the config itself, or one sub-config such as
    Qwen3-Omni's `thinker_config`), or None for a text-only config."""
    def holds(d) -> bool:
        text = d.get("text_config") if isinstance(d, dict) else None
        return isinstance(text, dict) and ("model_type" in text or "hidden_size" in text)

    if holds(hf):
        return hf
    return next((v for v in hf.values() if holds(v)), None)


def text_part(hf: dict) -> dict:
    """The text model's config of an HF config dict (itself when it is text-only)."""
    holder = text_holder(hf)
    return holder["text_config"] if holder is not None else hf


def tiny_tower(real: dict, text_width: int) -> dict:
    """One tower's sub-config (a dict) -> its tiny form: see the module docstring."""
    cfg = copy.deepcopy(real)
    width = next((real[k] for k in TOWER_WIDTH_KEYS if _num(real, k)), None)
    scale = TINY_TOWER_WIDTH / width if width else 1.0
    depth = next((int(real[k]) for k in TOWER_DEPTH_KEYS if _num(real, k)), None)
    for k in TOWER_WIDTH_KEYS:
        if _num(real, k):
            cfg[k] = TINY_TOWER_WIDTH
    for k in TOWER_HEAD_KEYS:
        if _num(real, k):
            cfg[k] = TINY_TOWER_HEADS
    for k in TOWER_DEPTH_KEYS:
        if _num(real, k):
            cfg[k] = TINY_TOWER_DEPTH
    for k in TOWER_FFN_KEYS + TOWER_SCALED_KEYS:
        if _num(real, k):
            cfg[k] = _round_to(real[k] * scale, 8, 16)
    for k in TOWER_OUT_KEYS:
        if _num(real, k):
            cfg[k] = text_width
    for k, v in real.items():
        if depth and "index" in k and isinstance(v, list) and v and all(isinstance(i, int) for i in v):
            cfg[k] = list(range(min(len(v), TINY_TOWER_DEPTH)))  # taps on distinct tiny layers
    return cfg


def _words(key: str) -> set[str]:
    return {w for w in key.lower().split("_") if w}


def tower_overrides(real_tower: dict, tiny: dict, real_maxtext: dict, suffix: str) -> dict[str, str]:
    """MaxText's `*{suffix}` keys -> their tiny values, through the tower key that held the same real value."""
    out: dict[str, str] = {}
    for mt_key, real_v in real_maxtext.items():
        if not mt_key.endswith(suffix):
            continue
        if mt_key[: -len(suffix)] in TOWER_OUT_KEYS:
            # the features handed to the text model have its width, whatever the paired config says (Qwen3-Omni's
            # says 3584 for MaxText's 2048)
            width = next((tiny[k] for k in TOWER_OUT_KEYS if k in tiny), None)
            if width is not None:
                out[mt_key] = str(width)
            continue
        same = [k for k, v in real_tower.items() if v == real_v and k in tiny and not isinstance(v, bool)]
        if not same:
            continue
        words = _words(mt_key[: -len(suffix)])
        best = max(same, key=lambda k: (len(words & _words(k)), k == same[0]))
        value = tiny[best]
        if value == real_v:
            continue
        out[mt_key] = "[" + ",".join(str(x) for x in value) + "]" if isinstance(value, list) else str(value)
    return out


def tiny_composite(real_hf: dict, tiny_text: dict, real_maxtext: dict) -> tuple[dict, list[str], list[str]]:
    """(the composite tiny HF config, MaxText overrides for its towers, notes), or (tiny_text, [], []) where the
    real config is text-only or MaxText's yml builds no tower (`use_multimodal` not set: Gemma 3's yml describes a
    vision tower MaxText leaves out)."""
    if text_holder(real_hf) is None or real_maxtext.get("use_multimodal") is not True:
        return tiny_text, [], []
    out = copy.deepcopy(real_hf)
    holder = text_holder(out)
    holder["text_config"] = tiny_text
    for d in (out, holder):  # the composite ties its head as its text part does
        if "tie_word_embeddings" in d and "tie_word_embeddings" in tiny_text:
            d["tie_word_embeddings"] = tiny_text["tie_word_embeddings"]
    overrides: dict[str, str] = {}
    notes = []
    for tower_key, suffix in TOWER_SUFFIX.items():
        real_tower = holder.get(tower_key)
        if not isinstance(real_tower, dict):
            continue
        tiny = tiny_tower(real_tower, int(tiny_text["hidden_size"]))
        holder[tower_key] = tiny
        overrides.update(tower_overrides(real_tower, tiny, real_maxtext, suffix))
        shrunk = {k: (real_tower[k], tiny[k]) for k in tiny if tiny[k] != real_tower.get(k)}
        notes.append(f"{tower_key} shrunk: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in shrunk.items()))
    if holder is not out:
        # the text model and its towers sit in one part of a larger composite (Qwen3-Omni's thinker; its talker and
        # code2wav speak, MaxText has no counterpart): the other parts are switched off where a flag switches them
        for k, v in list(out.items()):
            if k.startswith("enable_") and v is True:
                out[k] = False
                notes.append(f"{k} off (parts of the composite beside its text model's: MaxText mirrors none)")
    if not out.get("model_type"):
        kind = composite_type(tiny_text.get("model_type"))
        if kind:
            out["model_type"] = kind
            notes.append(f"model_type {kind} (the composite whose text part is {tiny_text.get('model_type')})")
    return out, [f"{k}={v}" for k, v in overrides.items()], notes


def composite_type(text_type: str | None) -> str | None:
    """The transformers composite model type whose `text_config` is of type `text_type` (qwen3_vl_text ->
    qwen3_vl), for a composite config that names no model_type of its own."""
    if not text_type:
        return None
    from transformers import CONFIG_MAPPING

    for kind in CONFIG_MAPPING.keys():
        sub = getattr(CONFIG_MAPPING[kind], "sub_configs", None) or {}
        text = sub.get("text_config")
        if text is not None and getattr(text, "model_type", None) == text_type:
            return kind
    return None
