"""Baselines ckptmap's solver is measured against. Each takes (HF tree, MaxText tree) and returns a Mapping,
so the same scoring applies; none of them uses the solver or its priors.

- `name_greedy`: per target group, the best rapidfuzz match of normalised name tokens among the source groups
  whose elements fit (equal element count and some chain from `search_chains`, the cheapest one taken);
  matched greedily, best similarity first, each source used once.
- `shapes_only`: names ignored; a minimum-cost linear assignment (scipy) of source groups to target groups,
  where a pair costs its cheapest chain and pairs that cannot fit are forbidden.
- `llm_only`: an LLM (Gemini, when GEMINI_API_KEY is set) pairs target and source templates from their names
  and shapes; chains as above. Without a key it raises MethodSkipped with the reason.

Groups (layers of one template taken together) come from `ckptmap.benchmarks.groups`; both trees' own index
structure is used, never a name match across the two sides, in `shapes_only`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable

import numpy as np
from ckptmap.benchmarks.groups import Group, group_tree, place, tree_dims
from ckptmap.mapping import Mapping, Rule
from ckptmap.trees import ParamTree
from rapidfuzz import fuzz

_FORBIDDEN = 1e9
GEMINI_MODEL = "gemini-2.5-pro"


class MethodSkipped(Exception):
    """A method that cannot run here; the message says why."""


def name_tokens(group: Group) -> str:
    """Lower-case words of the template, split on `_` too, without layer indices and the `params` collection."""
    words = []
    for w in group.words:
        words += [t for t in re.split(r"_+", w.lower()) if t and t != "{i}"]
    return " ".join(w for w in words if w != "params")


def _mapping(rules: list[Rule], src: ParamTree, tgt: ParamTree, method: str) -> Mapping:
    produced = {n for r in rules for n in r.target_names()}
    read = {n for r in rules for n in r.source_names()}
    return Mapping(rules=rules, source=src.origin, target=tgt.origin,
                   unmapped_targets=[n for n in tgt.names() if n not in produced],
                   unused_sources={n: "not matched" for n in src.names() if n not in read},
                   meta={"method": method})


def name_greedy(src: ParamTree, tgt: ParamTree) -> Mapping:
    """Name similarity first, shapes only as a filter."""
    dims = tree_dims(src, tgt)
    src_groups, tgt_groups = group_tree(src), group_tree(tgt)
    src_words = [name_tokens(g) for g in src_groups]
    candidates = []
    for j, t in enumerate(tgt_groups):
        t_words = name_tokens(t)
        for i, s in enumerate(src_groups):
            if s.numel != t.numel:
                continue
            placed = place(s, t, dims)
            if placed is not None:
                similarity = fuzz.token_set_ratio(src_words[i], t_words)
                candidates.append((-similarity, placed[1], j, i, placed[0]))
    candidates.sort(key=lambda c: c[:4])
    used_src, used_tgt, rules = set(), set(), []
    for _, _, j, i, rule in candidates:
        if i in used_src or j in used_tgt:
            continue
        used_src.add(i)
        used_tgt.add(j)
        rules.append(rule)
    return _mapping(rules, src, tgt, "name-greedy")


def shapes_only(src: ParamTree, tgt: ParamTree) -> Mapping:
    """Names ignored: the assignment of least total chain cost among pairs that fit."""
    from scipy.optimize import linear_sum_assignment

    dims = tree_dims(src, tgt)
    src_groups, tgt_groups = group_tree(src), group_tree(tgt)
    cost = np.full((len(tgt_groups), len(src_groups)), _FORBIDDEN)
    rules: dict[tuple[int, int], Rule] = {}
    for j, t in enumerate(tgt_groups):
        for i, s in enumerate(src_groups):
            if s.numel != t.numel:
                continue
            placed = place(s, t, dims)
            if placed is not None:
                rules[(j, i)], cost[j, i] = placed[0], placed[1]
    chosen = []
    if rules:
        rows, cols = linear_sum_assignment(cost)
        chosen = [rules[(j, i)] for j, i in zip(rows, cols) if (j, i) in rules]
    return _mapping(chosen, src, tgt, "shapes-only")


def _llm_prompt(src_groups: list[Group], tgt_groups: list[Group]) -> str:
    def lines(groups: list[Group]) -> str:
        return "\n".join(f"- {g.template}  grid={list(g.grid)} shape={list(g.shape)}" for g in groups)
    return (
        "Map a Hugging Face checkpoint onto a MaxText checkpoint. Each line is a tensor template; grid is how many "
        "copies (layers, experts) it has, shape is one copy's shape.\n\nMaxText targets:\n" + lines(tgt_groups) +
        "\n\nHugging Face sources:\n" + lines(src_groups) +
        "\n\nAnswer with one JSON object: each MaxText target template -> the Hugging Face source template it is "
        "converted from, or null when none fits. Use the templates exactly as written.")


def llm_only(src: ParamTree, tgt: ParamTree) -> Mapping:
    """Gemini pairs the templates; needs GEMINI_API_KEY (and network)."""
    key = os.environ.get("GEMINI_API_KEY")
    if not key:
        raise MethodSkipped("GEMINI_API_KEY is not set")
    try:
        from google import genai
    except ImportError as e:
        raise MethodSkipped(f"google-genai is not installed ({e})") from None
    dims = tree_dims(src, tgt)
    src_groups, tgt_groups = group_tree(src), group_tree(tgt)
    client = genai.Client(api_key=key)
    try:
        response = client.models.generate_content(model=GEMINI_MODEL, contents=_llm_prompt(src_groups, tgt_groups),
                                                  config={"response_mime_type": "application/json"})
        answer = json.loads(response.text or "{}")
    except Exception as e:  # network, quota or a non-JSON answer: the method did not run
        raise MethodSkipped(f"Gemini call failed: {type(e).__name__}: {str(e)[:200]}") from None
    by_template = {g.template: g for g in src_groups}
    rules = []
    for t in tgt_groups:
        s = by_template.get(answer.get(t.template) or "") if isinstance(answer, dict) else None
        placed = place(s, t, dims) if s is not None else None
        if placed is not None:
            rules.append(placed[0])
    return _mapping(rules, src, tgt, "llm-only")


BASELINES: dict[str, Callable[[ParamTree, ParamTree], Mapping]] = {
    "name-greedy": name_greedy,
    "shapes-only": shapes_only,
    "llm-only": llm_only,
}
