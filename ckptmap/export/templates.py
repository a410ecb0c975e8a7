"""Name templates for the MaxText-module exporter: loops and f-strings recovered from concrete tensor names.

A rule names one tensor per cell of its grid (`model.layers.3.mlp.experts.5.w1.weight`). `fit_template` finds the
affine index expressions behind the numbers in those names (`model.layers.{i}.mlp.experts.{e}.w1.weight`,
`model.layers.{i + 1}...`, `model.layers.{2 * i + 1}...`), so that the exported module loops instead of listing
names. `count_expression` finds how a loop length is written in the HF config (`config["num_hidden_layers"]`,
`config["num_hidden_layers"] - config["first_k_dense_replace"]`), so that no layer count is hard-coded.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ckptmap.trees.model import name_tokens

_NUMBER = re.compile(r"(\d+)")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z_]*?)_*$")

LAYER, EXPERT = "layer", "expert"

# Config keys that name a count of layers / experts, by how much they are worth as the answer (a prior on naming
# conventions, not a per-model table: any key containing the word still qualifies, with a lower score).
_KNOWN_KEYS = {
    LAYER: {"num_hidden_layers": 6, "num_layers": 5, "n_layers": 5, "n_layer": 5, "first_k_dense_replace": 4,
            "num_dense_layers": 4, "sliding_window_pattern": 2, "layer_types": 0},
    EXPERT: {"num_local_experts": 6, "num_experts": 6, "n_routed_experts": 6},
}
_KIND_WORDS = {LAYER: ("layer", "block"), EXPERT: ("expert",)}


@dataclass(frozen=True)
class Field:
    """A number inside a name: `offset + sum(coeff * var)`; `offset_expr` spells the offset from the config."""

    offset: int
    coeffs: tuple[tuple[str, int], ...] = ()
    word: str = ""  # the word the number follows: 'layers' in 'model.layers.3', 'layers' in 'layers_3'
    offset_expr: str | None = None

    def value(self, env: dict[str, int]) -> int:
        return self.offset + sum(c * env[v] for v, c in self.coeffs)

    def render(self) -> str:
        ordered = sorted((vc for vc in self.coeffs if vc[1]), key=lambda vc: -abs(vc[1]))
        terms = [v if c == 1 else f"{c} * {v}" for v, c in ordered]
        if self.offset_expr is not None and self.offset:
            terms.append(self.offset_expr)
        elif self.offset or not terms:
            terms.append(str(self.offset))
        return " + ".join(terms)


Template = tuple  # of str (literal text) and Field


def split_name(name: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """('model.layers.', '.mlp.experts.', '.w1.weight'), (3, 5) for 'model.layers.3.mlp.experts.5.w1.weight'."""
    parts = _NUMBER.split(name)
    return tuple(parts[0::2]), tuple(int(p) for p in parts[1::2])


def word_before(text: str) -> str:
    """The word a number follows: 'model.layers.' -> 'layers', 'params-decoder-layers_' -> 'layers'."""
    tail = name_tokens(text)[-1] if text else ""
    m = _WORD_BEFORE.search(tail)
    if m and tail.endswith(m.group(0)):
        return m.group(1)
    prev = name_tokens(text.rstrip(".-/"))
    return prev[-1] if prev else ""


def word_kind(word: str) -> str | None:
    w = word.lower()
    for kind, needles in _KIND_WORDS.items():
        if any(n in w for n in needles):
            return kind
    return LAYER if w in ("h", "resblocks") else None


def fit_template(name_at: Callable[[dict[str, int]], str], dims: Sequence[tuple[str, Sequence[int]]],
                 *, check_limit: int = 20000) -> Template | None:
    """The template that gives `name_at(env)` for every env over `dims` ((var, the values it takes) pairs), or None.

    Each number is fitted as `offset + sum(coeff * var)` from the first values and one step of each var, then
    checked on every combination (up to `check_limit`, a spread sample beyond). A var with one value gets
    coefficient 0 here; `claim_unit_dims` decides what it indexes.
    """
    first = {v: vals[0] for v, vals in dims}
    texts, base = split_name(name_at(first))
    coeffs: list[dict[str, int]] = [dict() for _ in base]
    for var, vals in dims:
        if len(vals) < 2:
            continue
        step = vals[1] - vals[0]
        t, after = split_name(name_at({**first, var: vals[1]}))
        if t != texts or step == 0:
            return None
        for k, (v0, v1) in enumerate(zip(base, after)):
            if (v1 - v0) % step:
                return None
            if v1 != v0:
                coeffs[k][var] = (v1 - v0) // step
    fields = []
    for k, (b, c) in enumerate(zip(base, coeffs)):
        offset = b - sum(c.get(v, 0) * first[v] for v, _ in dims)
        fields.append(Field(offset=offset, coeffs=tuple((v, c[v]) for v, _ in dims if c.get(v)),
                            word=word_before(texts[k])))
    for env in _combinations(dims, check_limit):
        t, vals = split_name(name_at(env))
        if t != texts or any(f.value(env) != v for f, v in zip(fields, vals)):
            return None
    out: list = []
    for k, text in enumerate(texts):
        if text:
            out.append(text)
        if k < len(fields):
            out.append(fields[k])
    return tuple(out)


def _combinations(dims: Sequence[tuple[str, Sequence[int]]], limit: int):
    total = 1
    for _, vals in dims:
        total *= len(vals)
    names = [v for v, _ in dims]
    if total <= limit:
        for combo in itertools.product(*(vals for _, vals in dims)):
            yield dict(zip(names, combo))
        return
    step = max(1, total // limit)
    for flat in range(0, total, step):
        env, rest = {}, flat
        for v, vals in reversed(dims):
            env[v], rest = vals[rest % len(vals)], rest // len(vals)
        yield env
    yield {v: vals[-1] for v, vals in dims}


def number_sequences(names: Sequence[str]) -> list[list[int]]:
    """For names that share a skeleton, each number position's values in order: candidate index sequences for
    a loop that skips some layers (`layers.0, 1, 2, 4, 5, 6`)."""
    splits = [split_name(n) for n in names]
    if len({t for t, _ in splits}) != 1:
        return []
    out = []
    for k in range(len(splits[0][1])):
        seq = [nums[k] for _, nums in splits]
        if all(b > a for a, b in zip(seq, seq[1:])) and seq not in out:
            out.append(seq)
    return out


def fields_of(template: Template) -> list[Field]:
    return [p for p in template if isinstance(p, Field)]


def varying_kinds(templates: Sequence[Template]) -> dict[str, str]:
    """var -> LAYER/EXPERT, from the words that the numbers varying with it follow."""
    kinds: dict[str, str] = {}
    for t in templates:
        for f in fields_of(t):
            kind = word_kind(f.word)
            for v, c in f.coeffs:
                if c and kind and v not in kinds:
                    kinds[v] = kind
    return kinds


def claim_unit_dims(templates: list[Template], unit_vars: Sequence[tuple[str, int]], kinds: dict[str, str],
                    claimed_kinds: Sequence[str] = ()) -> list[Template]:
    """Give each one-valued var ((var, its value) pairs) the index it most likely stands for: in every template,
    the first constant number following a layer word (else an expert word) gets coefficient 1 for it. Without
    this a one-layer stack (`model.layers.0...` for a 1-long grid) would be written as a constant name."""
    taken = set(claimed_kinds) | set(kinds.values())
    for var, value in unit_vars:
        for kind in (LAYER, EXPERT):
            if kind in taken:
                continue
            hits = [any(not f.coeffs and word_kind(f.word) == kind for f in fields_of(t)) for t in templates]
            if any(hits):
                templates = [_claim(t, var, value, kind) for t in templates]
                kinds[var] = kind
                taken.add(kind)
                break
    return templates


def _claim(template: Template, var: str, value: int, kind: str) -> Template:
    out, done = [], False
    for p in template:
        if not done and isinstance(p, Field) and not p.coeffs and word_kind(p.word) == kind:
            p = Field(offset=p.offset - value, coeffs=((var, 1),), word=p.word)
            done = True
        out.append(p)
    return tuple(out)


def render_template(template: Template) -> str:
    """Python source: a plain string literal, or an f-string when the name depends on loop variables."""
    if not any(isinstance(p, Field) and (p.coeffs or p.offset_expr) for p in template):
        return json.dumps("".join(p if isinstance(p, str) else str(p.offset) for p in template))
    body = []
    for p in template:
        if isinstance(p, str):
            body.append(p.replace("{", "{{").replace("}", "}}").replace("\\", "\\\\").replace('"', '\\"'))
        elif p.coeffs or p.offset_expr:
            body.append("{" + p.render().replace('"', "'") + "}")
        else:
            body.append(str(p.offset))
    return 'f"' + "".join(body) + '"'


def skeleton(name: str) -> str:
    """The name with its numbers masked: names that may share one template have the same skeleton."""
    return _NUMBER.sub("#", name)


# ------------------------------------------------------------------------------------------ config expressions

def config_ints(config: dict, prefix: str = "config", depth: int = 3) -> dict[str, int]:
    """Source expression -> int for every integer in the HF config, nested dicts included (`text_config`,
    `thinker_config.text_config`), shallowest first."""
    out: dict[str, int] = {}
    nested = []
    for k, v in config.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            out[f'{prefix}["{k}"]'] = v
        elif isinstance(v, dict) and depth > 1:
            nested.append((k, v))
    for k, v in nested:
        for expr, value in config_ints(v, f'{prefix}["{k}"]', depth - 1).items():
            out.setdefault(expr, value)
    return out


def _key_score(expr: str, kind: str | None) -> int:
    if kind is None:
        return -1
    key = expr.rsplit('["', 1)[-1].rstrip('"]')
    known = _KNOWN_KEYS.get(kind, {})
    if key in known:
        return known[key]
    return 1 if any(w in key.lower() for w in _KIND_WORDS[kind]) and not key.startswith("_") else -1


def count_expression(value: int, kind: str | None, ints: dict[str, int], *, compound: bool = True) -> str | None:
    """A config expression equal to `value` for a loop over `kind` (LAYER/EXPERT) items, best named first:
    `config[k]`, then (with `compound`) `config[a] - config[b]`, `config[a] // config[b]`,
    `config[a] % config[b]`, `config[a] // m`; every key must name the same kind of thing. None when nothing
    fits (the caller writes the number)."""
    scored = {e: _key_score(e, kind) for e in ints}
    relevant = {e: s for e, s in scored.items() if s >= 0 and ints[e] > 0}
    best: list[tuple[float, str]] = []
    for e, s in relevant.items():
        if ints[e] == value:
            best.append((10 + s, e))
    if compound and value > 0:
        for a, sa in relevant.items():
            va = ints[a]
            for b, sb in relevant.items():
                if a == b:
                    continue
                vb = ints[b]
                if va - vb == value:
                    best.append((5 + (sa + sb) / 2, f"{a} - {b}"))
                if vb > 1 and va // vb == value and va % vb == 0:
                    best.append((4 + (sa + sb) / 2, f"{a} // {b}"))
                if vb > 1 and va % vb == value and va >= vb:
                    best.append((3 + (sa + sb) / 2, f"{a} % {b}"))
            for m in range(2, 9):
                if va % m == 0 and va // m == value:
                    best.append((2 + sa / 2 - m / 100, f"{a} // {m}"))
    if not best:
        return None
    best.sort(key=lambda t: (-t[0], len(t[1]), t[1]))
    return best[0][1]


def offset_expression(value: int, kind: str | None, ints: dict[str, int], known: dict[int, str]) -> str | None:
    """How a constant index offset is spelt: a count already in use (the dense layers before the MoE layers), or
    a config key of the same kind with that value; None keeps the number."""
    if value <= 0 or kind != LAYER:
        return None
    if value in known:
        return known[value]
    candidates = [(s, e) for e in ints if ints[e] == value and (s := _key_score(e, kind)) >= 3]
    return max(candidates)[1] if candidates else None


def sequence_expression(values: Sequence[int], config: dict) -> str | None:
    """A config expression listing exactly `values` (the layers a rule covers when it skips some): the indices
    of one value in a per-layer list such as `layer_types`. None when no list gives them."""
    lists: list[tuple[str, list]] = []

    def collect(node: dict, prefix: str, depth: int) -> None:
        for k, v in node.items():
            if isinstance(v, list):
                lists.append((f'{prefix}["{k}"]', v))
            elif isinstance(v, dict) and depth > 1:
                collect(v, f'{prefix}["{k}"]', depth - 1)

    collect(config, "config", 3)
    want = list(values)
    for expr, items in lists:
        try:
            kinds = list(dict.fromkeys(items))
        except TypeError:  # unhashable entries: not a per-layer kind list
            continue
        for kind in kinds:
            if [i for i, x in enumerate(items) if x == kind] == want:
                return f"[i for i, t in enumerate({expr}) if t == {json.dumps(kind)}]"
    return None
