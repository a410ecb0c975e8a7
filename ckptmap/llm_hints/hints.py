"""get_priors: the one entry point the solver, verify and the benchmarks call for LLM hints.

Modes: "off" builds nothing; "cache" reads recorded answers only (never the network); "gemini" reads the
cache and asks Gemini on a miss, recording the answer. Whatever happens to the hints, the solve goes on:
only an explicit request that cannot be made (no key, rejected request, unknown mode) raises.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable

from ckptmap.trees.model import ParamTree
from ckptmap.llm_hints.cache import CacheEntry, HintCache, cache_key, default_dirs
from ckptmap.llm_hints.gemini import DEFAULT_MODEL, HintsError, RetryPolicy, ask, make_client
from ckptmap.llm_hints.priors import (HintsWarning, Priors, decode_answer, is_answer_shaped,
                                      priors_from_answer)
from ckptmap.llm_hints.prompt import PROMPT_VERSION, build_prompt
from ckptmap.llm_hints.templates import fingerprint, template_set

MODES = ("off", "cache", "gemini")
MODEL_ENV = "CKPTMAP_GEMINI_MODEL"


def resolve_model(model: str | None) -> str:
    return model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def _cache(cache_dir: str | os.PathLike | None) -> HintCache:
    return HintCache([cache_dir] if cache_dir else default_dirs())


def _from_entry(entry: CacheEntry, src: frozenset[str], tgt: frozenset[str], swapped: bool) -> Priors:
    origin = f"cache:{entry.path}"
    if swapped:
        return priors_from_answer(entry.answer, src_templates=tgt, tgt_templates=src, model=entry.model,
                                  origin=origin).reversed()
    return priors_from_answer(entry.answer, src_templates=src, tgt_templates=tgt, model=entry.model,
                              origin=origin)


def get_priors(src: ParamTree, tgt: ParamTree, *, dims: dict | None = None, mode: str = "off",
               cache_dir: str | os.PathLike | None = None, client=None, model: str | None = None,
               sleep: Callable[[float], None] = time.sleep, policy: RetryPolicy = RetryPolicy()) -> Priors:
    """Priors for mapping `src` onto `tgt` (edge bonuses over src -> tgt templates, value ops on tgt).

    `cache_dir` replaces the default lookup (user dir over the packaged ckptmap/llm_hints/cache/) with that one
    directory. In "cache" mode an exact (prompt, model) hit is used first, then the entry recorded for the
    most similar two template sets in either direction (cache.MIN_SIMILARITY); a miss gives empty priors
    and a HintsWarning.
    `client` (google-genai or a fake with the same surface) and `sleep` are for tests.
    """
    if mode not in MODES:
        raise HintsError(f"unknown hints mode {mode!r}; expected one of {', '.join(MODES)}", key="--hints")
    if mode == "off":
        return Priors(origin="off")
    model = resolve_model(model)
    prompt = build_prompt(src, tgt, dims)
    key = cache_key(prompt, model)
    src_t, tgt_t = template_set(src), template_set(tgt)
    cache = _cache(cache_dir)

    entry = cache.get(key)
    if entry is not None:
        return _from_entry(entry, src_t, tgt_t, swapped=False)
    if mode == "cache":
        match = cache.find_similar(src_t, tgt_t, model)
        if match is not None:
            priors = _from_entry(match.entry, src_t, tgt_t, swapped=match.swapped)
            if match.similarity < 1.0:
                priors.notes.append(f"recorded for similar trees (template overlap {match.similarity:.2f})")
            return priors
        where = ", ".join(str(d) for d in cache.dirs)
        warnings.warn(f"hints cache: no recorded answer for this pair of trees in {where}; going on without "
                      "hints (run once with --hints gemini to record one)", HintsWarning, stacklevel=2)
        return Priors(model=model, origin="cache")

    client = make_client() if client is None else client
    origin = f"gemini:{model}"
    text = ask(client, model, prompt, policy=policy, sleep=sleep)
    if text is None:  # ask() has warned
        return Priors(model=model, origin=origin)
    answer = decode_answer(text, origin=origin)
    if answer is None:
        return Priors(model=model, origin=origin)
    try:
        entry = record_answer(src, tgt, answer, dims=dims, model=model, recorded_by=f"{model} via google-genai",
                              cache_dir=cache.dirs[0], prompt=prompt)
    except OSError as e:
        warnings.warn(f"{cache.dirs[0]}: could not record the answer ({e.strerror}); using it uncached",
                      HintsWarning, stacklevel=2)
        return priors_from_answer(answer, src_templates=src_t, tgt_templates=tgt_t, model=model, origin=origin)
    return _from_entry(entry, src_t, tgt_t, swapped=False)


def record_answer(src: ParamTree, tgt: ParamTree, answer: dict, *, dims: dict | None = None,
                  model: str | None = None, recorded_by: str, cache_dir: str | os.PathLike,
                  prompt: str | None = None, extra: dict | None = None,
                  filename: str | None = None) -> CacheEntry:
    """Write `answer` (a decoded answer object) as the cache entry for this pair into `cache_dir`.

    `recorded_by` says who wrote the answer: the model, or a person for a hand-written one.
    """
    if not is_answer_shaped(answer):
        raise HintsError("an answer must be an object with 'correspondences' and 'value_ops' lists",
                         file=str(cache_dir))
    model = resolve_model(model)
    prompt = build_prompt(src, tgt, dims) if prompt is None else prompt
    src_t, tgt_t = template_set(src), template_set(tgt)
    entry = CacheEntry(
        key=cache_key(prompt, model), model=model, prompt=prompt, answer=answer,
        source_fingerprint=fingerprint(src_t), target_fingerprint=fingerprint(tgt_t),
        source_templates=sorted(src_t), target_templates=sorted(tgt_t),
        recorded_by=recorded_by, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        extra={"prompt_version": PROMPT_VERSION, **(extra or {})},
    )
    HintCache([cache_dir]).put(entry, filename)
    return entry


def load_priors_file(path: str | os.PathLike) -> Priors:
    """Priors from one file: a hints cache entry (its answer, unchecked against any tree) or a Priors JSON.

    For tests and ablations that feed chosen hints (right or deliberately wrong) to the solver.
    Raises HintsError naming the file when it is missing or is neither form.
    """
    p = Path(path)
    try:
        with open(p) as f:
            obj = json.load(f)
    except OSError as e:
        raise HintsError(f"cannot read hints file: {e.strerror}", file=str(p)) from None
    except json.JSONDecodeError as e:
        raise HintsError(f"hints file is not JSON ({e.msg} at line {e.lineno})", file=str(p)) from None
    if isinstance(obj, dict) and obj.get("format") == "ckptmap-hints-cache/1":
        try:
            entry = CacheEntry.from_json(obj, path=str(p))
        except ValueError as e:
            raise HintsError(f"malformed hints cache entry ({e})", file=str(p)) from None
        return priors_from_answer(entry.answer, model=entry.model, origin=f"file:{p}")
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("ckptmap-priors/"):
        try:
            return Priors.from_json(obj)
        except (KeyError, TypeError, ValueError) as e:
            raise HintsError(f"malformed priors ({e})", file=str(p)) from None
    if is_answer_shaped(obj):
        return priors_from_answer(obj, origin=f"file:{p}")
    raise HintsError("expected a hints cache entry, a priors object or an answer with 'correspondences' and "
                     "'value_ops'", file=str(p))
