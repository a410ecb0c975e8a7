"""Name similarity between parameter names of two frameworks.

Names are reduced to *concepts*: each token is split into sub-words (`pre_self_attention_layer_norm` ->
pre, self, attention, layer, norm), sub-words are mapped through general synonym priors (q_proj ~ query,
gate_proj ~ wi_0, input_layernorm ~ pre-attention norm, weight ~ kernel ~ scale, ...), and filler words
(self, proj, layer, ...) are dropped. Similarity combines concept overlap with a rapidfuzz ratio over the
concept strings, so names in conventions not listed here still score by spelling.

These tables are priors about how frameworks *name* things. They never say which tensor maps to which.
"""

from __future__ import annotations

import re
from functools import lru_cache

from rapidfuzz import fuzz
from ckptmap import frameworks
from ckptmap.heuristics.weights import WEIGHTS
from ckptmap.trees.model import name_tokens

# Whole-token synonyms: a token (lower case) -> the concepts it stands for. Checked before sub-word splitting.
WHOLE_TOKEN = {
    "q_proj": ("query",), "k_proj": ("key",), "v_proj": ("value",), "o_proj": ("out",),
    "wq": ("query",), "wk": ("key",), "wv": ("value",), "wo": ("wo",),
    "query_proj": ("query",), "key_proj": ("key",), "value_proj": ("value",), "out_proj": ("out",),
    "c_attn": ("qkv", "query", "key", "value"), "c_proj": ("out",),
    "qkv_proj": ("qkv", "query", "key", "value"), "query_key_value": ("qkv", "query", "key", "value"),
    "wqkv": ("qkv", "query", "key", "value"), "qkv": ("qkv", "query", "key", "value"),
    "kv_proj": ("kv", "key", "value"), "wkv": ("kv", "key", "value"),
    "gate_proj": ("wi_0",), "up_proj": ("wi_1",), "down_proj": ("wo",),
    "gate_up_proj": ("wi_0", "wi_1"), "gate_up": ("wi_0", "wi_1"), "w13": ("wi_0", "wi_1"),
    "w1": ("wi_0",), "w3": ("wi_1",), "w2": ("wo",),
    "fc1": ("wi",), "fc2": ("wo",), "c_fc": ("wi",), "dense_h_to_4h": ("wi",), "dense_4h_to_h": ("wo",),
    "linear_1": ("wi",), "linear_2": ("wo",), "linear_fc1": ("wi",), "linear_fc2": ("wo",),
    "wi_0": ("wi_0",), "wi_1": ("wi_1",), "wi": ("wi",),
    "gate_up_proj_bias": ("wi_0", "wi_1", "bias"), "down_proj_bias": ("wo", "bias"),
    "wi_0_bias": ("wi_0", "bias"), "wi_1_bias": ("wi_1", "bias"), "wo_bias": ("wo", "bias"),
    "embed_tokens": ("embed",), "wte": ("embed",), "word_embeddings": ("embed",), "tok_embeddings": ("embed",),
    "embedding": ("weight",), "embeddings": ("embed",), "embed": ("embed",),
    "wpe": ("pos_embed",), "position_embeddings": ("pos_embed",), "pos_embedding": ("pos_embed",),
    # a learned additive position term is an (absolute) position embedding, whatever it is called
    "ape": ("pos_embed",), "position_bias": ("pos_embed",), "pos_bias": ("pos_embed",),
    "lm_head": ("logits",), "output": ("logits",), "unembed": ("logits",),
    "input_layernorm": ("pre", "attention", "norm"), "ln_1": ("pre", "attention", "norm"),
    "attention_norm": ("pre", "attention", "norm"), "ln_attn": ("pre", "attention", "norm"),
    "attn_norm": ("pre", "attention", "norm"),
    "post_attention_layernorm": ("post", "attention", "norm"), "ln_2": ("pre", "ffn", "norm"),
    "ffn_norm": ("pre", "ffn", "norm"),
    "norm": ("norm",), "final_layernorm": ("final", "norm"), "ln_f": ("final", "norm"),
    "final_norm": ("final", "norm"), "norm_f": ("final", "norm"),
    "weight": ("weight",), "kernel": ("weight",), "scale": ("weight",), "w": ("weight",), "gamma": ("weight",),
    "bias": ("bias",), "beta": ("bias",), "b": ("bias",),
    "router": ("router",), "gate": ("router",),
    "self_attn": ("attention",), "self_attention": ("attention",), "attn": ("attention",),
    "attention": ("attention",), "mlp": ("mlp",), "feed_forward": ("mlp",), "ffn": ("mlp",),
    "proj": ("out",), "mlp_out": ("ffn", "wo"), "mlp_in": ("ffn", "wi"),
    "self_attn_layer_norm": ("pre", "attention", "norm"),
    "layers": (), "layer": (), "model": (), "params": (), "decoder": (), "transformer": (),
    "language_model": (), "text_model": (),
}

# Sub-word synonyms, applied after splitting a token on '_' and camel case.
SUBWORD = {
    "q": "query", "k": "key", "v": "value", "o": "out", "attn": "attention", "ffw": "ffn",
    "feedforward": "ffn", "ff": "ffn", "mlp": "ffn", "input": "pre", "layernorm": "norm", "rmsnorm": "norm",
    "ln": "norm", "kernel": "weight", "scale": "weight", "embedding": "weight", "embeddings": "embed",
    "experts": "expert", "moe": "expert", "block": "", "shared": "shared", "proj": "", "self": "", "layer": "", "the": "", "module": "",
    "linear": "", "dense": "", "params": "", "weight": "weight",
    "mhc": "hc",  # manifold-constrained hyper-connections are hyper-connections
    # Gated-MLP roles as words inside a longer token (`feedforward_gate_dense`, `ffw_gating`, `ffn_up`,
    # `mlp_down`, `feedforward_intermediate_dense`), across conventions. `gate` alone is ambiguous (a gated
    # MLP's gate, or a MoE router): ROLE_ALIASES resolves it against the other name. `intermediate` is the
    # unsplit input projection (BERT's only one); heuristics.roles reads it as `up` beside a gate sibling.
    "gate": "gate", "gating": "gate", "up": "wi_1", "down": "wo", "intermediate": "wi",
    # A masked-LM head across conventions: BERT's `cls.predictions.*`, KerasHub's `mlm_head/*`.
    "mlm": "lm_head", "predictions": "lm_head",
}

# Words naming a packed projection inside a longer token (`in_proj_qkv`, `attn_qkv`, `to_kv`): the packed concept
# and the roles it packs, as the whole-token spellings (qkv_proj, kv_proj) have them.
PACKED_SUBWORDS = {"qkv": ("qkv", "query", "key", "value"), "kv": ("kv", "key", "value")}



def packed_word_only(cs: tuple[str, ...]) -> tuple[str, ...]:
    """`cs` without the roles a packed word in it stands for ((in, qkv, query, key, value) -> (in, qkv)): as the
    part of a larger packed tensor (`in_proj_qkv` inside `in_proj_qkvz`) it plays the packed role, not three."""
    drop = {m for word, members in PACKED_SUBWORDS.items() if word in cs for m in members if m != word}
    return tuple(c for c in cs if c not in drop)


# A role word with several meanings -> its meanings, the first being the one it has in an MLP. Compared with
# another name, it takes the meaning that name holds (gate ~ router against a router, gate ~ wi_0 against
# a gate projection), else its MLP meaning when the other name holds an MLP role, else stays as it is.
ROLE_ALIASES = {"gate": ("wi_0", "router")}
MLP_ROLES = frozenset({"wi_0", "wi_1", "wi", "wo"})

# Concept sets that name the same tensor in pre-norm blocks without sandwich norms: the norm after attention is
# the norm before the feed-forward (MaxText's post_self_attention_layer_norm, HF's ffn_norm). Compared as
# equivalent, a little below an exact match, so that models with both (sandwich norms) keep their exact pairs.
EQUIVALENT_CONCEPTS = ((frozenset({"post", "attention"}), frozenset({"pre", "ffn"})),)
EQUIVALENCE_DISCOUNT = WEIGHTS.equivalence_discount  # heuristics.weights

# Words naming the parts of one packed tensor, in the order implementations pack them: a prior for the order of
# the parts when nothing else says it (a packed tensor whose name does not list its parts; the hyper-connection
# mixes H_pre, H_post, H_res of one projection).
PART_ORDER = (
    ("query", "key", "value"),
    ("wi_0", "wi_1"),
    ("gate", "up"),
    ("pre", "post", "res", "residual", "comb"),
    ("real", "imag"),
)


def part_rank(word: str) -> tuple[int, int] | None:
    """(sequence, position) of `word` in PART_ORDER, or None."""
    for i, seq in enumerate(PART_ORDER):
        if word in seq:
            return (i, seq.index(word))
    return None


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def split_subwords(token: str) -> list[str]:
    """`preSelfAttention_layer_norm` -> [pre, self, attention, layer, norm] (lower case, digits kept apart)."""
    parts: list[str] = []
    for piece in token.split("_"):
        if not piece:
            continue
        for sub in _CAMEL.sub(" ", piece).split():
            parts.append(sub.lower())
    return parts


@lru_cache(maxsize=1)
def framework_priors() -> dict[str, tuple[str, ...]]:
    """Whole-token spellings the framework adapters declare as their own convention (Adapter.name_priors), merged:
    a framework's names are read the same way whichever side of a mapping they are on."""
    out: dict[str, tuple[str, ...]] = {}
    for adapter in frameworks.adapters():
        for token, meaning in getattr(adapter, "name_priors", {}).items():
            out.setdefault(token.lower(), tuple(meaning))
    return out


def _whole_token(token: str) -> tuple[str, ...] | None:
    found = WHOLE_TOKEN.get(token)
    return found if found is not None else framework_priors().get(token)


@lru_cache(maxsize=200_000)
def concepts(local_name: str) -> tuple[str, ...]:
    """The concept words of a (slot-relative) name, in order, fillers removed.

    `self_attn.q_proj.weight` -> (attention, query, weight);
    `self_attention-query-kernel` -> (attention, query, weight).
    """
    out: list[str] = []
    for tok in name_tokens(local_name):
        if not tok or tok.isdigit() or tok == "{i}":
            continue
        low = tok.lower()
        base = re.sub(r"_\d+$", "", low) if not low.startswith("wi_") else low
        whole = _whole_token(low)
        if whole is None:
            whole = _whole_token(base)
        if whole is not None:
            out.extend(whole)
            continue
        for sub in split_subwords(base):
            if sub.isdigit():
                continue
            sub = sub.rstrip("0123456789") or sub
            if sub in PACKED_SUBWORDS:
                out.extend(PACKED_SUBWORDS[sub])
                continue
            mapped = SUBWORD.get(sub, sub)
            if mapped:
                out.append(mapped)
    # "wi" (an unsplit input projection) is compatible with both wi_0 and wi_1 at concept level.
    return tuple(out)


def _norm_kind(cs: tuple[str, ...]) -> bool:
    return "norm" in cs


@lru_cache(maxsize=400_000)
def name_similarity(a: str, b: str) -> float:
    """Similarity in [0, 1] of two slot-relative names from (possibly) different frameworks."""
    return concept_similarity(concepts(a), concepts(b))


def resolve_aliases(ca: tuple[str, ...], cb: tuple[str, ...]) -> tuple[str, ...]:
    """`ca` with each ambiguous role word (ROLE_ALIASES) read in the sense `cb` gives it."""
    sb = set(cb)
    out = []
    for c in ca:
        meanings = ROLE_ALIASES.get(c)
        if meanings:
            held = [m for m in meanings if m in sb]
            c = held[0] if held else (meanings[0] if sb & MLP_ROLES else c)
        out.append(c)
    return tuple(out)


@lru_cache(maxsize=400_000)
def concept_similarity(ca: tuple[str, ...], cb: tuple[str, ...]) -> float:
    """name_similarity on concept tuples (names.concepts, or heuristics.roles' reading in context)."""
    ca, cb = resolve_aliases(ca, cb), resolve_aliases(cb, ca)
    if not ca or not cb:
        return 0.0
    direct = _similarity(ca, cb)
    for x, y in EQUIVALENT_CONCEPTS:
        for p, q in ((x, y), (y, x)):
            if p <= set(ca) and q <= set(cb) and not (q <= set(ca)) and not (p <= set(cb)):
                swapped = tuple(c for c in ca if c not in p) + tuple(sorted(q))
                direct = max(direct, EQUIVALENCE_DISCOUNT * _similarity(swapped, cb))
    return direct


def _similarity(ca: tuple[str, ...], cb: tuple[str, ...]) -> float:
    sa, sb = set(ca), set(cb)
    # Leaf concepts (weight / bias) must agree: a bias never maps onto a weight.
    la = {"bias"} & sa or {"weight"}
    lb = {"bias"} & sb or {"weight"}
    if la != lb:
        return 0.0
    inter = len(sa & sb)
    union = len(sa | sb)
    jaccard = inter / union if union else 0.0
    # Concepts that are strong evidence when they disagree.
    exclusive = [("query", "key", "value", "out", "qkv"), ("wi_0", "wi_1", "wo", "wi"), ("pre", "post")]
    penalty = 0.0
    for group in exclusive:
        ga, gb = sa & set(group), sb & set(group)
        if ga and gb and not (ga & gb) and not ({"wi"} & (ga | gb) and {"wi_0", "wi_1"} & (ga | gb)) \
                and not ({"qkv"} & (ga | gb)):
            penalty += WEIGHTS.exclusive_penalty
    if _norm_kind(ca) != _norm_kind(cb):
        penalty += WEIGHTS.norm_mismatch_penalty
    fuzzy = fuzz.token_set_ratio(" ".join(ca), " ".join(cb)) / 100.0
    score = WEIGHTS.name_jaccard * jaccard + WEIGHTS.name_fuzzy * fuzzy - penalty
    return max(0.0, min(1.0, score))
