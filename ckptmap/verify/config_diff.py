"""What the HF config and the MaxText config say about the function the two models compute, and where they disagree.

A mapping moves weights; it cannot make two models compute the same function when their configs disagree on
something outside the weights: the RoPE type, base (theta) and scaling, the rotary fraction, norm epsilon, soft-caps,
the query scale, sliding windows, the MLP activation, tied embeddings. When verify fails (or passes while such a
setting differs, e.g. one only long contexts reach), the report names each disagreement:

    rope scaling (all layers): HF default, MaxText llama3 (factor 8, low 1, high 4, original 8192) -- applied by
    model name llama3.1

Pure functions over plain dicts: `hf_settings(hf_config_dict)` (verify.config_hf), `maxtext_settings(maxtext_config)`
(verify.config_maxtext; the values `MaxTextSession.function_config()` reads off MaxText's pyconfig) and
`diff_configs(hf, maxtext)`. How MaxText
decides follows its own code (MaxText 0.2.5, `layers/attentions.py` `init_rotary_embedding` and the decoder
layers): llama3.1 RoPE scaling by model name (`model_name` starting with `llama3.1`, or rope_type `llama3.1`; the
factors are fixed in `LLaMARotaryEmbedding`: 8, 1, 4, 8192; `rope_use_scale` turns it off), YaRN by `rope_type`,
`local_rope_max_timescale` for sliding layers of plain RoPE only, gemma3's linear factor on global layers only,
gemma4's per-kind timescales and proportions, gemma's hard-coded norm epsilon, and where the query scale lives
(folded into the query kernel by MaxText's own conversion, or applied at run time by a few decoders).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ckptmap.verify.config_hf import _hf_layer_kinds, _text_config, hf_settings
from ckptmap.verify.config_maxtext import maxtext_settings, reconcile_activation
from ckptmap.verify.config_settings import Setting, _g, _num, _same, _where

# the two sides' readings live in config_hf / config_maxtext; these names are part of config_diff's interface
__all__ = ["Disagreement", "Setting", "diff_configs", "diff_runners", "hf_runner_config_dict", "hf_settings",
           "implementation_hazards", "maxtext_settings", "reconcile_activation"]

@dataclass(frozen=True)
class Disagreement:
    """A setting the two configs give different values; `matters` is False where it cannot change these runs'
    outputs (a sliding window longer than every sequence verify runs)."""

    setting: str
    hf: str
    maxtext: str
    why: str = ""
    matters: bool = True

    def describe(self) -> str:
        text = f"{self.setting}: HF {self.hf}, MaxText {self.maxtext}"
        if self.why:
            text += f" -- {self.why}"
        if not self.matters:
            text += " (no effect at the lengths verify runs)"
        return text

    def to_json(self) -> dict:
        return asdict(self)


# ---- the diff ----------------------------------------------------------------------------------------------------
def diff_configs(hf_config: dict, maxtext_config: dict, *, seq_len: int | None = None) -> list[Disagreement]:
    """Every setting the HF config and the MaxText config values give differently, in a fixed order, then the
    known implementation differences these configs reach (`implementation_hazards`).

    `seq_len`: the longest sequence verify runs (a sliding window at least that long cannot change its outputs)."""
    hf = hf_settings(hf_config)
    mt = maxtext_settings(maxtext_config)
    kinds = _hf_layer_kinds(_text_config(hf_config))
    out: list[Disagreement] = []
    for what in ("rope scaling", "rope theta", "rotary fraction"):
        found = []
        for kind in kinds:
            where = _where(kind, kinds)
            a, b = hf.get(f"{what} ({where})"), mt.get(f"{what} ({kind})")
            if a is not None and b is not None and not _same(a.value, b.value):
                found.append(Disagreement(f"{what} ({where})", a.text, b.text, b.why))
        if len(kinds) > 1 and len(found) == len(kinds) and len({(d.hf, d.maxtext, d.why) for d in found}) == 1:
            found = [Disagreement(f"{what} (all layers)", found[0].hf, found[0].maxtext, found[0].why)]
        out.extend(found)
    for what in ("norm epsilon", "final logit soft-cap", "attention logit soft-cap", "query scale",
                 "sliding window", "mlp activation", "tied embeddings"):
        a, b = hf.get(what), mt.get(what)
        if a is None or b is None or _same(a.value, b.value):
            continue
        matters = True
        if what == "sliding window" and seq_len:
            # a window at least as long as the sequence masks nothing
            matters = min(x for x in (a.value or math.inf, b.value or math.inf)) < seq_len
        why = b.why
        if what in ("query scale", "mlp activation"):
            why = f"HF: {a.why}; MaxText: {b.why}"
        out.append(Disagreement(what, a.text, b.text, why, matters))
    return out + implementation_hazards(_text_config(hf_config), maxtext_config, seq_len=seq_len)


# Below this many indexer heads, DeepSeek-V3.2's indexer scores (a sum of ReLUs over heads) are often exactly 0
# for several keys at random weights (each key with probability 2^-heads).
INDEXER_TIE_HEADS = 8


def implementation_hazards(hf: dict, mt: dict, *, seq_len: int | None = None) -> list[Disagreement]:
    """Settings on which the configs agree but the two implementations differ, where these configs reach it.

    - DeepSeek-V3.2's sparse-attention indexer: HF's torch.topk and MaxText's exact top-k
      (`indexer_mask_exact_topk`: the first k of equal scores) break ties differently; with few indexer heads many
      keys score exactly 0 (ReLU), so at a top-k below the sequence length the two models attend to different
      keys. (The indexer top-k itself is compared too.)"""
    out: list[Disagreement] = []
    hf_topk, mt_topk = _num(hf.get("index_topk")), _num(mt.get("indexer_topk"))
    if hf_topk is None or mt_topk is None or mt.get("use_indexer") is False:
        return out
    if hf_topk != mt_topk:
        out.append(Disagreement("indexer top-k", _g(hf_topk), _g(mt_topk), "indexer_topk"))
    heads = _num(hf.get("index_n_heads")) or _num(mt.get("indexer_n_heads"))
    shortest = min(hf_topk, mt_topk)
    if heads is not None and heads < INDEXER_TIE_HEADS and (seq_len is None or shortest < seq_len):
        out.append(Disagreement(
            "indexer ties", "torch.topk (ties in any order)",
            "the first k of equal scores" if mt.get("indexer_mask_exact_topk", True) else "every tied score",
            f"{_g(heads)} indexer heads: keys whose every head's ReLU is 0 score exactly 0, and the two pick "
            f"different ones among them at top-{_g(shortest)}"))
    return out


def diff_runners(src_runner, tgt_runner, *, seq_len: int | None = None) -> list[Disagreement]:
    """diff_configs for a pair of runners where one is an HF runner (`.config`) and the other a MaxText runner
    (`.function_config()`); [] for any other pair (or when a side cannot say)."""
    hf = mt = None
    for runner in (src_runner, tgt_runner):
        if getattr(runner, "framework", "") == "hf" and getattr(runner, "config", None) is not None:
            hf = runner
        elif getattr(runner, "framework", "") == "maxtext" and callable(getattr(runner, "function_config", None)):
            mt = runner
    if hf is None or mt is None:
        return []
    try:
        mt_values = mt.function_config()
    except Exception:  # noqa: BLE001 - a diagnosis must not break verify
        return []
    if not mt_values:
        return []
    return diff_configs(hf_runner_config_dict(hf), mt_values, seq_len=seq_len)


def hf_runner_config_dict(runner) -> dict:
    """The HF config the runner built, as a dict (its text part for a composite)."""
    config = getattr(runner, "text_config", None) or runner.config
    try:
        return config.to_dict()
    except Exception:  # noqa: BLE001
        return dict(getattr(config, "__dict__", {}))
