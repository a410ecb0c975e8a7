"""Priors: what an LLM answer says, as edge bonuses for the solver and an order of value ops for verify.

A prior only reorders or reweighs: the solver's constraints and verify's measurements decide. Both lookups
work on hint templates (see templates.py), so one hint covers every layer. Direction: `src` and `tgt` are the
direction the question was asked in; `reversed()` gives the priors of the other direction.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field

from ckptmap.trees.model import parse_name
from ckptmap.llm_hints.prompt import OP_KINDS
from ckptmap.llm_hints.templates import hint_template

PRIORS_FORMAT = "ckptmap-priors/1"


class HintsWarning(UserWarning):
    """Hints were unusable (malformed answer, cache miss, failed call): the solve goes on without them."""


@dataclass(frozen=True)
class Correspondence:
    """The LLM believes `source` template holds (part of) the values of `target` template."""

    source: str
    target: str
    confidence: float
    why: str = ""


@dataclass(frozen=True)
class ValueOpHint:
    """The LLM believes `target` template needs value op `op` (a key of prompt.OP_KINDS)."""

    target: str
    op: str
    confidence: float
    why: str = ""


def _coarse(template: str) -> str:
    """Every index replaced, as ParsedName.template does: `wi_0` and `wi_{i}` both become `wi_{i}`."""
    return parse_name(template).template


@dataclass
class Priors:
    """Correspondences and value-op hints over hint templates, with where they came from."""

    correspondences: list[Correspondence] = field(default_factory=list)
    value_op_hints: list[ValueOpHint] = field(default_factory=list)
    model: str = ""
    origin: str = ""  # "off", "cache:<path>", "gemini:<model>", "file:<path>"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._edges: dict[tuple[str, str], float] = {}
        self._fallback: dict[tuple[str, str], float] = {}
        for c in self.correspondences:
            key = (c.source, c.target)
            self._edges[key] = max(self._edges.get(key, 0.0), c.confidence)
        self._ops: dict[str, dict[str, float]] = {}
        for h in self.value_op_hints:
            ops = self._ops.setdefault(h.target, {})
            ops[h.op] = max(ops.get(h.op, 0.0), h.confidence)

    @property
    def is_empty(self) -> bool:
        return not self.correspondences and not self.value_op_hints

    def edge_bonus(self, src_name: str, tgt_name: str) -> float:
        """Confidence in [0, 1] that source `src_name` feeds target `tgt_name`; 0 when no hint names the pair.

        Names may be concrete (`model.layers.7.mlp.up_proj.weight`), hint templates, or ParsedName templates
        (`...wi_{i}...`, every index replaced); the last match the most confident hint they cover.
        """
        if not self._edges:
            return 0.0
        s, t = hint_template(src_name), hint_template(tgt_name)
        hit = self._edges.get((s, t))
        if hit is not None:
            return hit
        if not (_is_coarse(s) or _is_coarse(t)):
            return 0.0
        key = (s, t)
        if key not in self._fallback:
            self._fallback[key] = max((c.confidence for c in self.correspondences
                                       if _covers(s, c.source) and _covers(t, c.target)), default=0.0)
        return self._fallback[key]

    def value_ops(self, tgt_name: str) -> list[tuple[str, float]]:
        """[(op kind, confidence)] hinted for target `tgt_name`, most likely first; [] when none."""
        ops = self._ops.get(hint_template(tgt_name))
        query = hint_template(tgt_name)
        if ops is None and _is_coarse(query):
            merged: dict[str, float] = {}
            for t, o in self._ops.items():
                if _covers(query, t):
                    for k, v in o.items():
                        merged[k] = max(merged.get(k, 0.0), v)
            ops = merged
        return sorted((ops or {}).items(), key=lambda kv: (-kv[1], kv[0]))

    def sources_for(self, tgt_name: str) -> list[tuple[str, float]]:
        """[(source template, confidence)] hinted for target `tgt_name`, most likely first (LLM-only baseline)."""
        t = hint_template(tgt_name)
        found = {c.source: self._edges[(c.source, c.target)] for c in self.correspondences if c.target == t}
        return sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))

    def reversed(self) -> "Priors":
        """The priors of the other direction: sources and targets swapped.

        A value op hinted on a target moves to the templates that feed it (an op is undone on the other side),
        with the confidence of both hints multiplied.
        """
        corr = [Correspondence(c.target, c.source, c.confidence, c.why) for c in self.correspondences]
        moved: dict[tuple[str, str], ValueOpHint] = {}
        for h in self.value_op_hints:
            for c in self.correspondences:
                if c.target != h.target:
                    continue
                conf = h.confidence * c.confidence
                key = (c.source, h.op)
                if key not in moved or moved[key].confidence < conf:
                    moved[key] = ValueOpHint(c.source, h.op, conf, h.why)
        return Priors(corr, list(moved.values()), model=self.model, origin=self.origin + " (reversed)",
                      notes=list(self.notes))

    def to_json(self) -> dict:
        return {
            "format": PRIORS_FORMAT,
            "model": self.model,
            "origin": self.origin,
            "notes": list(self.notes),
            "correspondences": [_drop_empty(vars(c)) for c in self.correspondences],
            "value_ops": [_drop_empty(vars(h)) for h in self.value_op_hints],
        }

    @classmethod
    def from_json(cls, d: dict) -> "Priors":
        """Inverse of to_json. Raises ValueError on a malformed dict (see parse_answer for LLM answers)."""
        if not isinstance(d, dict) or d.get("format") != PRIORS_FORMAT:
            raise ValueError(f"not a {PRIORS_FORMAT} object")
        return cls(
            correspondences=[Correspondence(c["source"], c["target"], float(c["confidence"]), c.get("why", ""))
                             for c in d.get("correspondences", [])],
            value_op_hints=[ValueOpHint(h["target"], h["op"], float(h["confidence"]), h.get("why", ""))
                            for h in d.get("value_ops", [])],
            model=d.get("model", ""), origin=d.get("origin", ""), notes=list(d.get("notes", [])),
        )


def _drop_empty(d: dict) -> dict:
    return {k: v for k, v in d.items() if v != ""}


def _is_coarse(template: str) -> bool:
    """Whether a template has every index replaced (ParsedName.template style), so it may stand for several
    hint templates (`wi_{i}` for `wi_0` and `wi_1`)."""
    return "{i}" in template and _coarse(template) == template


def _covers(query: str, hinted: str) -> bool:
    """A query template matches a hinted one: equal, or the query is coarse and the hint coarsens to it."""
    return query == hinted or (_is_coarse(query) and _coarse(hinted) == query)


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def _confidence(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return min(1.0, max(0.0, float(x)))


def decode_answer(text: str | None, *, origin: str = "hints") -> dict | None:
    """An LLM answer's text -> its JSON object, or None with a HintsWarning when it is empty, not JSON, or
    not an object holding 'correspondences' / 'value_ops' lists. A ```json fence around it is accepted."""
    if text is None or not str(text).strip():
        warnings.warn(f"{origin}: empty answer; going on without hints", HintsWarning, stacklevel=3)
        return None
    raw = str(text)
    m = _FENCE.match(raw)
    if m:
        raw = m.group(1)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        warnings.warn(f"{origin}: answer is not JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                      "going on without hints", HintsWarning, stacklevel=3)
        return None
    if not is_answer_shaped(obj):
        warnings.warn(f"{origin}: answer has no 'correspondences'/'value_ops' lists; going on without hints",
                      HintsWarning, stacklevel=3)
        return None
    return obj


def is_answer_shaped(obj) -> bool:
    return (isinstance(obj, dict) and ("correspondences" in obj or "value_ops" in obj)
            and isinstance(obj.get("correspondences", []), list) and isinstance(obj.get("value_ops", []), list))


def parse_answer(text: str | None, *, src_templates=None, tgt_templates=None, model: str = "",
                 origin: str = "") -> Priors:
    """An LLM answer (JSON text in RESPONSE_SCHEMA's form) -> Priors.

    Never raises: malformed JSON or a wrong top-level shape gives a HintsWarning and empty priors. Single
    items that are malformed, name an unknown op kind, or (when the template sets are given) name a template
    absent from its tree are dropped and counted in `notes`.
    """
    obj = decode_answer(text, origin=origin or "hints")
    if obj is None:
        return Priors(model=model, origin=origin)
    return priors_from_answer(obj, src_templates=src_templates, tgt_templates=tgt_templates, model=model,
                              origin=origin)


def priors_from_answer(obj, *, src_templates=None, tgt_templates=None, model: str = "",
                       origin: str = "") -> Priors:
    """An already-decoded answer object -> Priors, with the checks of parse_answer."""
    if not is_answer_shaped(obj):
        warnings.warn(f"{origin or 'hints'}: answer has no 'correspondences'/'value_ops' lists; "
                      "going on without hints", HintsWarning, stacklevel=3)
        return Priors(model=model, origin=origin)
    dropped = {"malformed": 0, "unknown source": 0, "unknown target": 0, "unknown op": 0}
    corr: list[Correspondence] = []
    for item in obj.get("correspondences", []):
        c = _item(item, ("source", "target"))
        if c is None:
            dropped["malformed"] += 1
            continue
        src, tgt, conf, why = hint_template(c[0]), hint_template(c[1]), c[2], c[3]
        if src_templates is not None and src not in src_templates:
            dropped["unknown source"] += 1
            continue
        if tgt_templates is not None and tgt not in tgt_templates:
            dropped["unknown target"] += 1
            continue
        corr.append(Correspondence(src, tgt, conf, why))
    ops: list[ValueOpHint] = []
    for item in obj.get("value_ops", []):
        h = _item(item, ("target", "op"))
        if h is None:
            dropped["malformed"] += 1
            continue
        tgt, op, conf, why = hint_template(h[0]), h[1].strip(), h[2], h[3]
        if op not in OP_KINDS:
            dropped["unknown op"] += 1
            continue
        if tgt_templates is not None and tgt not in tgt_templates:
            dropped["unknown target"] += 1
            continue
        ops.append(ValueOpHint(tgt, op, conf, why))
    notes = [f"dropped {n} {what} item(s)" for what, n in dropped.items() if n]
    if notes and not corr and not ops:
        warnings.warn(f"{origin or 'hints'}: no usable item in the answer ({'; '.join(notes)}); "
                      "going on without hints", HintsWarning, stacklevel=3)
    return Priors(corr, ops, model=model, origin=origin, notes=notes)


def _item(item, keys: tuple[str, str]) -> tuple[str, str, float, str] | None:
    if not isinstance(item, dict):
        return None
    a, b = item.get(keys[0]), item.get(keys[1])
    conf = _confidence(item.get("confidence"))
    if not isinstance(a, str) or not isinstance(b, str) or not a.strip() or not b.strip() or conf is None:
        return None
    why = item.get("why", "")
    return a, b, conf, why if isinstance(why, str) else ""
