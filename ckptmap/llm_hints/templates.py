"""Hint templates: parameter names with only their layer / expert indices replaced by `{i}`.

A hint names a template, so one hint covers every layer. These templates are finer than
`ParsedName.template`, which replaces every index: MaxText's `mlp-wi_0` (gate) and `mlp-wi_1` (up) must stay
two templates, or no hint could tell gate from up. Only indices of repeated stacks (layers, experts,
encoder blocks) become `{i}`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from ckptmap.trees.model import EXPERT_WORDS, LAYER_WORDS, ParamTree, name_separators, parse_name

PLACEHOLDER = "{i}"
# Placeholders an answer may use for an index: `{i}`, `{layer}`, `<n>`, `*`.
_ANSWER_PLACEHOLDER = re.compile(r"\{[^}]*\}|<[^>]*>|\*")
_STACK_SUFFIXES = ("layers", "experts", "blocks", "encoderblock")


def is_stack_collection(collection: str) -> bool:
    """Whether an index under `collection` counts copies of one repeated module (a layer, an expert)."""
    c = collection.lower()
    return c in LAYER_WORDS or c in EXPERT_WORDS or c.endswith(_STACK_SUFFIXES)


@functools.lru_cache(maxsize=1 << 17)
def hint_template(name: str) -> str:
    """`model.layers.3.mlp.up_proj.weight` -> `model.layers.{i}.mlp.up_proj.weight`;
    `params-decoder-layers_3-mlp-wi_0-kernel` -> `params-decoder-layers_{i}-mlp-wi_0-kernel`.

    Idempotent: a template maps to itself. Placeholders written as `{layer}`, `<n>` or `*` become `{i}`.
    """
    name = _ANSWER_PLACEHOLDER.sub(PLACEHOLDER, name.strip())
    parsed = parse_name(name)
    tokens = list(parsed.tokens)
    for it in parsed.indices:
        if not is_stack_collection(it.collection):
            continue
        tok = tokens[it.pos]
        tokens[it.pos] = PLACEHOLDER if tok.isdigit() else f"{it.collection}_{PLACEHOLDER}"
    seps = name_separators(name)
    out = tokens[0] if tokens else ""
    for sep, tok in zip(seps, tokens[1:]):
        out += sep + tok
    return out


def stack_indices(name: str) -> tuple[int, ...]:
    """The layer / expert indices of a name, outermost first: `layers.3...experts.7...` -> (3, 7)."""
    return tuple(it.index for it in parse_name(name).indices if is_stack_collection(it.collection))


@dataclass(frozen=True)
class TemplateGroup:
    """All parameters of one tree that share a hint template.

    `indices[j]` is the sorted set of values taken by the template's j-th `{i}`; `shapes` maps each distinct
    shape to how many parameters have it; `stacked` is the reader's note of stacked axes (axis -> what).
    """

    template: str
    count: int
    indices: tuple[tuple[int, ...], ...]
    index_names: tuple[str, ...]
    shapes: tuple[tuple[tuple[int, ...], int], ...]
    stacked: tuple[tuple[int, str], ...] = ()


def group_templates(tree: ParamTree) -> list[TemplateGroup]:
    """One TemplateGroup per hint template of `tree`, in the tree's order of first appearance."""
    members: dict[str, list] = {}
    for p in tree:
        members.setdefault(hint_template(p.name), []).append(p)
    groups = []
    for template, params in members.items():
        stack_its = [it for it in parse_name(params[0].name).indices if is_stack_collection(it.collection)]
        index_names = tuple(it.collection for it in stack_its)
        per_position: list[set[int]] = [set() for _ in stack_its]
        shape_counts: dict[tuple[int, ...], int] = {}
        for p in params:
            for j, v in enumerate(stack_indices(p.name)[: len(per_position)]):
                per_position[j].add(v)
            shape_counts[tuple(p.shape)] = shape_counts.get(tuple(p.shape), 0) + 1
        groups.append(TemplateGroup(
            template=template,
            count=len(params),
            indices=tuple(tuple(sorted(s)) for s in per_position),
            index_names=index_names,
            shapes=tuple(shape_counts.items()),
            stacked=tuple(params[0].stacked_axes),
        ))
    return groups


def template_set(tree: ParamTree) -> frozenset[str]:
    return frozenset(hint_template(n) for n in tree.names())


def fingerprint(templates: frozenset[str] | set[str]) -> str:
    """sha256 of the sorted templates: equal for every size of one architecture (tiny or 405B, any depth)."""
    return hashlib.sha256("\n".join(sorted(templates)).encode()).hexdigest()


def compact_ranges(values: tuple[int, ...]) -> str:
    """(0, 1, 2, 4, 5, 7) -> '0-2,4-5,7'."""
    if not values:
        return ""
    parts = []
    start = prev = values[0]
    for v in values[1:]:
        if v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = v
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)
