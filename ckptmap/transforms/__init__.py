"""ckptmap.transforms: an invertible algebra of array ops (tuple of arrays -> tuple of arrays) and shape search.

Structural ops (exact, invertible): Identity, Transpose, Reshape, ExpandDims, Squeeze, Split, Concat, Stack,
Unstack, Pad, Truncate. Constants: Fill (a target no source explains) and its inverse Discard. Value ops (verify's business): RopePermute, Scale, Offset, Cast. Combinators: Chain,
Parallel. `op_from_json` rebuilds any op; `search_chains` enumerates chains between shapes.
"""

from ckptmap.transforms.base import Op, ShapeMismatch, TransformError
from ckptmap.transforms.codegen import compile_op, function_source
from ckptmap.transforms.combinators import Chain, Parallel, has_value_ops, op_length
from ckptmap.transforms.constant import Discard, Fill
from ckptmap.transforms.expr import eval_expr
from ckptmap.transforms.fusion import Concat, Split, Stack, Unstack
from ckptmap.transforms.registry import OPS, op_from_json
from ckptmap.transforms.search import clear_cache, search_chains
from ckptmap.transforms.structural import ExpandDims, Identity, Pad, Reshape, Squeeze, Transpose, Truncate
from ckptmap.transforms.value import Cast, Offset, RopePermute, Scale

__all__ = [
    "Op", "ShapeMismatch", "TransformError", "OPS", "op_from_json",
    "Identity", "Transpose", "Reshape", "ExpandDims", "Squeeze", "Pad", "Truncate",
    "Split", "Concat", "Stack", "Unstack",
    "RopePermute", "Scale", "Offset", "Cast", "Fill", "Discard",
    "Chain", "Parallel", "has_value_ops", "op_length",
    "search_chains", "clear_cache", "eval_expr", "function_source", "compile_op",
]
