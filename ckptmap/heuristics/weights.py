"""Every number the candidate scoring uses, in one frozen object, each with the reason it has that value.

The solver maximises the sum of candidate scores (heuristics.candidates.score_parts): a candidate's score is
`base + name * NAME + layout * LAYOUT - cost * COST + prior * PRIOR + ...`, its parts in `Candidate.parts`.
`ckptmap/benchmarks/calibrate_weights.py` checks these values on a split of the benchmark cases: it tunes nothing by
itself, it reports the accuracy on the cases held out from whoever changes a weight, so a change that only helps
the cases it was tried on shows.

How they were chosen (2026-11 and 2026-12 sessions): by hand, from the failure classes on the fixture families
(names first, layouts second, chain cost as a tie-break), then checked against the held-out split; none was fitted
to one case.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ScoreWeights:
    # ---- candidate score (heuristics.candidates) ----------------------------------------------------------
    base: float = 1.0
    """Every shape-compatible candidate starts positive, so a lone candidate is taken over leaving a target empty."""
    name: float = 3.0
    """Name similarity (0..1) dominates: names are the strongest evidence across frameworks."""
    layout: float = 0.6
    """Layout prior (-1..1.5): torch [out, in] vs flax [in, out]; decides square matrices names cannot."""
    cost: float = 0.25
    """Per unit of chain cost: simpler chains win ties, never over a better name."""
    prior: float = 1.0
    """An LLM hint's edge bonus (0..1): one name's worth at most a third of the name weight."""
    ordinal: float = 0.8
    """Numbered siblings that agree in order (w1/w2/w3 vs wi_0/wi_1/wo)."""
    expert_stack: float = 0.3
    """Per-expert tensors offered stacked as one operand: a small bonus for keeping the expert axis whole."""
    code: float = 1.5
    """Per edge: the chain cuts a fused axis as the model's code does (+) or not (-); code beats names."""
    unnamed_split: float = 0.5
    """Per edge: a split whose fused name does not name its parts is weaker evidence than a named one."""
    min_part_similarity: float = 0.3
    """A part of a fused split must look at least this much like its target, else the split is not offered."""
    named_split_bonus: float = 0.1
    """A fused tensor whose name names its parts (qkv, gate_up), split into those parts: over the same parts
    taken one by one, so the fused reading wins a tie."""
    ordinal_per_number: float = 0.1
    """Each further number two names agree on, read from the end, strengthens the ordinal term by this share."""
    raw_overlap: float = 0.5
    """Literal-token overlap added to concept similarity when ranking split partners."""

    sibling_storage: float = 0.6
    """A pair whose shapes allow several layouts (a square q_proj into a heads-first kernel) read as its module's
    non-square siblings are stored (heuristics.storage): +/- this, a layout prior's worth, below a name."""

    module_coherence: float = 1.0
    """A bias or scale read from the source module its module's kernel is read from (heuristics.coherence): one
    module, one source; worth a third of a full name match, enough to beat a bias name that only looks closer."""

    # ---- name similarity (heuristics.names) -------------------------------------------------------------
    name_jaccard: float = 0.6
    """Concept-set overlap; with `name_fuzzy` it sums to 1 so the similarity stays in 0..1."""
    name_fuzzy: float = 0.4
    """Fuzzy token-set ratio of the concept words: catches spellings the concept table lacks."""
    exclusive_penalty: float = 0.35
    """Concepts that exclude each other (query vs key, wi_0 vs wo, pre vs post) on the two sides."""
    norm_mismatch_penalty: float = 0.25
    """One side is a norm and the other is not."""
    equivalence_discount: float = 0.9
    """A match through equivalent concepts (attn_norm ~ pre-attention norm) ranks a little below an exact one."""

    # ---- layout prior (heuristics.layout) ----------------------------------------------------------------
    conv_canonical: float = 1.5
    """A conv kernel moved by the one canonical torch <-> flax permutation: stronger than any matrix evidence."""
    vector_keep: float = 0.5
    """1-d tensors and embedding tables keep their layout (+) rather than being transposed (-)."""
    same_layout: float = 0.5
    """Both sides store matrices alike: no transpose (+), a transpose (-)."""
    cross_layout: float = 1.0
    """torch vs flax weights/kernels: a transpose (+), none (-)."""

    # ---- alignment (heuristics.align) --------------------------------------------------------------------
    align_multiset: float = 0.5
    """Layer-signature distance: share of differing parameter sizes, beside the relative size gap."""
    align_name: float = 0.2
    """Stack names that agree pull two stacks together, a little (structure decides first)."""
    align_max_cost: float = 1.5
    """Stacks further apart than this are not aligned at all."""

    # ---- solver (solver.solve) ---------------------------------------------------------------------------
    shared_source_min_name: float = 0.3
    """A target left uncovered may share a source (tied embeddings) only when the names agree this much."""
    fill_min_covered: float = 0.75
    """A layer template's targets the sources explain before its unexplained norms are filled with ones."""

    def reasons(self) -> dict[str, str]:
        """field -> its one-line reason (the docstring under it)."""

        tree = ast.parse(inspect.getsource(type(self)))
        body = tree.body[0].body
        out = {}
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                out[a.target.id] = " ".join(str(b.value.value).split())
        return out

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


WEIGHTS = ScoreWeights()
