"""Localisation: which stage of the forward pass first diverges, and which mapping rules feed that stage.

Stages in forward order: `embed`, `layer_0` .. `layer_{n-1}`, `final_norm`, `logits` (names of
ckptmap.runner.Forward). A rule belongs to the layers its cells' tensor names index (`model.layers.3...`,
`...-layers_3-...`), read from whichever side names one tensor per cell; a rule that names no layer is global and
belongs to `embed`, `final_norm` and `logits`.
"""

from __future__ import annotations

import re

import numpy as np

from ckptmap.mapping import Mapping, Rule
from ckptmap.runner import Forward
from ckptmap.trees.model import parse_name
from ckptmap.verify.metrics import relative_error

GLOBAL_STAGES = ("embed", "final_norm", "logits")
_LAYER = re.compile(r"^layer_(\d+)$")


def layer_count(fwd: Forward) -> int:
    """How many `layer_{i}` activations a forward pass recorded."""
    return sum(1 for k in fwd.activations if _LAYER.match(k))


def stage_names(n_layers: int) -> list[str]:
    return ["embed", *(f"layer_{i}" for i in range(n_layers)), "final_norm", "logits"]


def layer_alignment(n_ref: int, n_other: int) -> dict[str, str]:
    """Reference stage -> the other pass's stage holding the same activation.

    Equal counts pair layer i with layer i. When one side groups k layers into one block (MaxText's Gemma2 runs a
    local and a global layer as one), block j's output is the output of reference layer (j+1)*k-1."""
    pairs = {"embed": "embed", "final_norm": "final_norm"}
    if n_ref == n_other:
        pairs.update({f"layer_{i}": f"layer_{i}" for i in range(n_ref)})
    elif n_other and n_ref % n_other == 0:
        k = n_ref // n_other
        pairs.update({f"layer_{(j + 1) * k - 1}": f"layer_{j}" for j in range(n_other)})
    elif n_ref and n_other % n_ref == 0:
        k = n_other // n_ref
        pairs.update({f"layer_{i}": f"layer_{(i + 1) * k - 1}" for i in range(n_ref)})
    return pairs


def stage_errors(reference: Forward, other: Forward) -> dict[str, float]:
    """Relative RMS error of every stage both passes recorded, in forward order (logits over the common vocab),
    named by the reference's stages."""
    out: dict[str, float] = {}
    pairs = layer_alignment(layer_count(reference), layer_count(other))
    for name in stage_names(layer_count(reference)):
        if name == "logits":
            v = min(reference.logits.shape[-1], other.logits.shape[-1])
            out[name] = relative_error(reference.logits[..., :v], other.logits[..., :v])
        elif name in pairs and name in reference.activations and pairs[name] in other.activations:
            out[name] = relative_error(reference.activations[name], other.activations[pairs[name]])
    return out


def first_divergence(errors: dict[str, float], tolerance: float) -> str | None:
    """The first stage whose relative error exceeds `tolerance` (None when every stage is within it)."""
    for name, err in errors.items():
        if not np.isfinite(err) or err > tolerance:
            return name
    return None


def rule_layers(rule: Rule) -> set[int] | None:
    """Global layer indices the rule's cells touch, read from the first side that names one tensor per cell
    (fully per-cell slots before mixed ones); set() for a rule stacked over all layers; None for a global rule."""
    slots = (*rule.sources, *rule.targets)
    for slot in sorted((s for s in slots if s.is_per_cell), key=lambda s: len(s.axes)):
        found = {parse_name(slot.name_at(cell)).layer_index for cell in rule.cells()}
        if None not in found:
            return found
    names = [n for s in slots for n in s.names()]
    if any(parse_name(n).layer_index is not None for n in names):
        return set()
    if rule.grid and any(w in ("layers", "layer", "h", "blocks") for n in names for w in parse_name(n).words):
        return set()
    return None


def _stage_layers(stage: str, compared: list[str] | None) -> set[int]:
    """The layers whose rules feed a compared layer stage first: its own, plus any uncompared layers since the
    previous compared one (a runner that runs k layers as one block reports only every k-th)."""
    j = int(_LAYER.match(stage).group(1))
    if not compared:
        return {j}
    before = [int(m.group(1)) for c in compared if (m := _LAYER.match(c)) and int(m.group(1)) < j]
    return set(range(max(before) + 1 if before else 0, j + 1))


def rules_in_stage(mapping: Mapping, stage: str, compared: list[str] | None = None) -> list[int]:
    """Indices of the rules that can change `stage`'s activation first: layer i's rules for `layer_i`, the global
    rules for `embed` / `final_norm` / `logits`. Grid rules whose layers cannot be read are in every layer.
    `compared`: the stages that were compared (see _stage_layers)."""
    m = _LAYER.match(stage)
    wanted = _stage_layers(stage, compared) if m else set()
    out = []
    for i, rule in enumerate(mapping.rules):
        layers = rule_layers(rule)
        if m:
            if layers is not None and (not layers or layers & wanted):
                out.append(i)
        elif layers is None:
            out.append(i)
    if not out and stage in GLOBAL_STAGES:  # no activations: everything may be at fault
        out = list(range(len(mapping.rules)))
    return out


def stage_targets(mapping: Mapping, stage: str, compared: list[str] | None = None) -> list[str]:
    """Target tensor names of the rules in `stage` (the parameters a divergence there points at)."""
    names: list[str] = []
    for i in rules_in_stage(mapping, stage, compared):
        for n in mapping.rules[i].target_names():
            if n not in names:
                names.append(n)
    return names
