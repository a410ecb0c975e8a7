"""Framework layout priors: how each framework stores a weight, as a score on a chain.

torch's nn.Linear stores `.weight` as [out, in]; flax/MaxText kernels are [in, out] (with the out or in axis
often split into heads x head_dim). So a torch `.weight` of rank >= 2 that is not an embedding table
usually needs a transpose on its way to a flax kernel, and the same across two torch models usually does not.
Raw parameters (no `.weight` leaf: fused expert tensors, sinks, A_log) carry no such convention.
"""

from __future__ import annotations

from ckptmap import frameworks
from ckptmap.heuristics.names import concepts
from ckptmap.transforms import Chain, Op
from ckptmap.heuristics.weights import WEIGHTS


def guess_layout(names: list[str]) -> str:
    """"torch" when leaves are mostly weight/bias, "flax" when mostly kernel/scale/embedding, else "unknown"."""
    torch_like = flax_like = 0
    for n in names:
        leaf = n.replace("/", ".").replace("-", ".").split(".")[-1]
        if leaf == "weight":
            torch_like += 1
        elif leaf in ("kernel", "scale", "embedding"):
            flax_like += 1
    if torch_like > 2 * flax_like:
        return "torch"
    if flax_like > 2 * torch_like:
        return "flax"
    return "unknown"


def tree_layout(tree) -> str:
    """How `tree` stores its matrices: the storage its framework's adapter declares (ckptmap.frameworks: "torch"
    for hf, "flax" for maxtext and keras), else guessed from its leaf names (guess_layout). The solver still
    checks it against what the shapes force (solver.solve._calibrate_layout: GPT-2's Conv1D is [in, out])."""
    adapter = next((a for a in frameworks.adapters() if a.name == tree.framework), None) if tree.framework else None
    declared = getattr(adapter, "storage", "") if adapter is not None else ""
    return declared if declared in ("torch", "flax") else guess_layout(tree.names())


def has_transpose(chain: Op) -> bool:
    """Whether any step of `chain`, nested chains and parallel branches included, permutes axes."""
    return chain.axis_perm is not None or any(has_transpose(o) for o in chain.sub_ops)


def _transposes(chain: Op) -> list[tuple[int, ...]] | None:
    """The permutations of a chain made only of transposes (None if it holds any other op)."""
    steps = chain.ops if isinstance(chain, Chain) else (chain,)
    perms = [op.axis_perm for op in steps]
    return None if any(p is None for p in perms) else [tuple(p) for p in perms]


def layout_score(chain, src_name: str, src_shape: tuple[int, ...], src_layout: str, tgt_layout: str) -> float:
    """+1 when the chain's use of a transpose agrees with the layouts, -1 when it goes against them, 0 when
    the layouts say nothing about this tensor."""
    leaf = src_name.replace("/", ".").replace("-", ".").split(".")[-1]
    cs = set(concepts(src_name))
    if len(src_shape) >= 3 and leaf in ("weight", "kernel") and {src_layout, tgt_layout} == {"torch", "flax"}:
        # Convolutions: torch [out, in, *spatial] <-> flax [*spatial, in, out] by one canonical transpose.
        n = len(src_shape)
        canonical = tuple(range(2, n)) + (1, 0) if src_layout == "torch" else (n - 1, n - 2) + tuple(range(n - 2))
        if _transposes(chain) == [canonical]:
            return WEIGHTS.conv_canonical
    if len(src_shape) < 2 or (len(src_shape) == 2 and ("embed" in cs or "pos_embed" in cs)):
        return WEIGHTS.vector_keep if not has_transpose(chain) else -WEIGHTS.vector_keep
    transposes = has_transpose(chain)
    if src_layout == tgt_layout:
        return -WEIGHTS.same_layout if transposes else WEIGHTS.same_layout
    if leaf in ("weight", "kernel") and {src_layout, tgt_layout} == {"torch", "flax"}:
        return WEIGHTS.cross_layout if transposes else -WEIGHTS.cross_layout
    return 0.0
