"""Roles read in context: what a projection's name means beside its siblings in one layer.

A word alone can be ambiguous across conventions. `intermediate` (BERT's `intermediate.dense`, KerasHub's
`feedforward_intermediate_dense`) and `fc1` name the MLP's input projection: the only one in a plain MLP, the
*up* projection in a gated MLP, where a sibling is the gate. Two siblings named alike but numbered
(`ffw_gating`, `ffw_gating_2`) are the two input projections of a gated MLP in their packing order (gate
first, as names.PART_ORDER has wi_0 before wi_1). These readings depend on the siblings, so they are made here
over one layer's operand names, never per model.
"""

from __future__ import annotations

from ckptmap.heuristics.names import concepts

GATE_WORDS = frozenset({"wi_0", "gate"})
ROLE_WORDS = frozenset({"wi_0", "wi_1", "wi", "wo", "gate"})
LEAF_WORDS = frozenset({"weight", "bias"})


def _context(cs: tuple[str, ...]) -> frozenset[str]:
    """What a name says besides its MLP role and its leaf: siblings of one module share it."""
    return frozenset(c for c in cs if c not in ROLE_WORDS and c not in LEAF_WORDS)


def _numbers(name: str) -> tuple[int, ...]:
    from ckptmap.heuristics.candidates import numbers  # lazy: candidates imports this module (a cycle)

    return numbers(name)


def refine_roles(names: list[str]) -> dict[str, tuple[str, ...]]:
    """name -> its concepts (names.concepts) with MLP roles read beside its siblings in `names`:

    - an unsplit input projection (`wi`) beside a gate of the same module, with no `up` there, is the up
      projection (`wi_1`): gate -> intermediate must score below up -> intermediate;
    - two names with the same concepts holding a gate role, told apart only by their numbers, are the gate
      (`wi_0`, lower number) and the up projection (`wi_1`).
    Names whose reading does not change keep names.concepts(name).
    """
    base = {n: concepts(n) for n in names}
    out = dict(base)
    modules: dict[frozenset[str], list[str]] = {}
    for n, cs in base.items():
        if set(cs) & ROLE_WORDS:
            modules.setdefault(_context(cs), []).append(n)
    for members in modules.values():
        held = {c for n in members for c in base[n]}
        if held & GATE_WORDS and "wi_1" not in held:
            plain = [n for n in members if "wi" in base[n] and not set(base[n]) & {"wi_0", "wi_1", "gate"}]
            for n in plain:
                out[n] = tuple("wi_1" if c == "wi" else c for c in base[n])
        twins: dict[tuple[str, ...], list[str]] = {}
        for n in members:
            if set(base[n]) & GATE_WORDS:
                twins.setdefault(base[n], []).append(n)
        for group in twins.values():
            numbered = sorted((_numbers(n), n) for n in group)
            if len(group) != 2 or numbered[0][0] == numbered[1][0]:
                continue
            for role, (_, n) in zip(("wi_0", "wi_1"), numbered):
                out[n] = tuple(role if c in GATE_WORDS else c for c in base[n])
    return out
