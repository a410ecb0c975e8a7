"""LLM hints: Gemini's guess at the mapping, as priors that shorten the search and never decide it.

`get_priors(src, tgt, mode="off"|"cache"|"gemini")` is the entry point; `Priors.edge_bonus` feeds the
solver's edge scores, `Priors.value_ops` orders verify's value-op search. Answers are cached per
(prompt, model) under ckptmap/llm_hints/cache/ (shipped) and ~/.cache/ckptmap/hints (the user's).
"""

from ckptmap.llm_hints.cache import CacheEntry, HintCache, cache_key, default_dirs
from ckptmap.llm_hints.gemini import DEFAULT_MODEL, HintsError, RetryPolicy
from ckptmap.llm_hints.hints import MODES, get_priors, load_priors_file, record_answer
from ckptmap.llm_hints.priors import Correspondence, HintsWarning, Priors, ValueOpHint, parse_answer
from ckptmap.llm_hints.prompt import OP_KINDS, RESPONSE_SCHEMA, build_prompt
from ckptmap.llm_hints.templates import group_templates, hint_template

__all__ = [
    "CacheEntry", "Correspondence", "DEFAULT_MODEL", "HintCache", "HintsError", "HintsWarning", "MODES",
    "OP_KINDS", "Priors", "RESPONSE_SCHEMA", "RetryPolicy", "ValueOpHint", "build_prompt", "cache_key",
    "default_dirs", "get_priors", "group_templates", "hint_template", "load_priors_file", "parse_answer",
    "record_answer",
]
