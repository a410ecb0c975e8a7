"""The one HF model helper: config -> the model class and part transformers builds -> the names a checkpoint holds.

Used by the `hf:` tree reader, verify's HF runner and the code-layout tracer, so that all three agree on which
model a config means and on its saved names (transformers' own conversions applied, tied copies dropped).
"""

from __future__ import annotations

import contextlib
from typing import Any


def config_value(config, key: str, default=None):
    """`config.key`, or `default`. A heterogeneous config (transformers' per-layer configs, e.g. Gemma 4's
    `head_dim` and `num_key_value_heads`) refuses plain reads of its per-layer attributes; this reads the global
    value it was given, as transformers' own serialisation does."""
    raw = getattr(type(config), "_getattr_without_heterogeneous_validation", None)
    if raw is not None:
        return raw(config, key, default)
    return getattr(config, key, default)


def _text_config(config):
    sub = getattr(config, "get_text_config", None)
    return sub() if callable(sub) else config


def causal_lm_config(config):
    """(the config to build the causal LM from, True when that is the text part of a composite config).

    A composite (multimodal) config nests its decoder under `text_config`. Where transformers' causal-LM class for
    the composite is the text model's own (Qwen3.5-MoE: `Qwen3_5MoeForCausalLM`, which reads `vocab_size` and the
    rest off the config it is given), or there is none for the composite but one for the text part, the causal LM is
    built from the text config. Where the composite has a class of its own (Gemma3ForConditionalGeneration), the
    whole model is built."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    text = _text_config(config)
    if text is config:
        return config, False
    whole = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    part = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(text), None)
    if part is not None and (whole is None or whole is part):
        return text, True
    return config, False


def _config_path(config, target) -> list[tuple[str, Any]]:
    """The chain of (key, config) from `config` down to `target` through each config's sub-configs
    (`[("", omni), ("thinker_config", thinker), ("text_config", text)]`); [] when target is not nested in it."""
    if config is target:
        return [("", config)]
    for key in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, key, None)
        if sub is None or not hasattr(sub, "to_dict"):
            continue
        path = _config_path(sub, target)
        if path:
            return [("", config), (key, path[0][1]), *path[1:]]
    return []


def rename_into(names: list[str], known: set[str]) -> dict[str, str] | None:
    """name -> the name `known` gives the same tensor, where `known` nests the same modules one level deeper
    (`model.layers.0...` -> `model.language_model.layers.0...`, `lm_head.weight` stays): per top-level module of
    `names`, the one prefix that puts every name of it into `known` (the module's own name first, then the
    shortest). None when some module has no such prefix."""
    by_top: dict[str, list[str]] = {}
    for n in names:
        by_top.setdefault(n.split(".", 1)[0], []).append(n)
    out: dict[str, str] = {}
    for top, group in by_top.items():
        tail = max(group, key=len)[len(top):]  # the longest name pins the prefix
        prefixes = {k[:len(k) - len(tail)] for k in known if k.endswith(tail)}
        for q in sorted(prefixes, key=lambda q: (q != top, len(q), q)):
            if all(q + n[len(top):] in known for n in group):
                out.update({n: q + n[len(top):] for n in group})
                break
        else:
            return None
    return out if len(set(out.values())) == len(out) else None


@contextlib.contextmanager
def declared_transposes():
    """Apply every transpose a transformers checkpoint conversion declares. `Transpose(check_dims=True)` (Qwen3-VL-MoE's
    fused experts: checkpoints hold [experts, in, out], the modules [experts, out, in]) transposes only when the
    shapes differ, so a square expert tensor (tiny configs: hidden == 2 * moe_intermediate) is loaded untransposed,
    and saving never transposes back. Inside this block the conversion is applied as declared, both ways: the
    runner's checkpoint names and layouts are the ones real checkpoints hold."""
    from transformers import core_model_loading as cml

    original = cml.Transpose.convert

    def convert(self, *args, **kwargs):
        checked, self.check_dims = self.check_dims, False
        try:
            return original(self, *args, **kwargs)
        finally:
            self.check_dims = checked

    cml.Transpose.convert = convert
    try:
        yield
    finally:
        cml.Transpose.convert = original


def checkpoint_names(model, layout: str = "saved") -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({checkpoint name: shape}, {tied alias: the name it is tied to}) of a built model: `layout="saved"` gives
    the names `save_pretrained` writes (transformers' checkpoint conversions reverted, declared transposes
    applied), `"memory"` the module names."""
    from transformers.core_model_loading import revert_weight_conversion

    state = dict(model.state_dict())
    if layout == "saved":
        with declared_transposes():
            state = revert_weight_conversion(model, state)
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    shapes = {n: tuple(int(d) for d in t.shape) for n, t in state.items() if n not in tied}
    aliases = {a: c for a, c in tied.items() if c in shapes}
    return shapes, aliases
