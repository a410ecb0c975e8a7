"""Safe evaluation of config expressions like `1/sqrt(head_dim)` or `bfloat16(sqrt(hidden))` over dims.

Only numbers, dims names, + - * / **, unary minus and the functions in FUNCTIONS are allowed; nothing is eval'd.
"""

from __future__ import annotations

import ast
import math
import operator
import re

import numpy as np

from ckptmap.transforms.base import TransformError


def np_dtype(name: str) -> np.dtype:
    """numpy dtype from a name; `bfloat16` and the float8 types come from ml_dtypes."""
    try:
        import ml_dtypes  # noqa: F401 - registers bfloat16 & co with numpy
    except ImportError:  # pragma: no cover - ml_dtypes ships with jax
        pass
    try:
        return np.dtype(name)
    except TypeError:
        raise TransformError(f"unknown dtype {name!r}") from None


def round_to(value: float, dtype: str) -> float:
    """`value` rounded to `dtype` (e.g. bfloat16) and read back as a Python float."""
    return float(np_dtype(dtype).type(value))


FUNCTIONS = {
    "sqrt": math.sqrt,
    "bfloat16": lambda v: round_to(v, "bfloat16"),
    "float16": lambda v: round_to(v, "float16"),
    "float32": lambda v: round_to(v, "float32"),
}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}


def eval_expr(expr: str, dims: dict[str, int] | None = None) -> float:
    """The value of `expr` with names taken from `dims`; TransformError on anything else."""
    dims = dims or {}
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise TransformError(f"cannot parse the expression {expr!r}") from None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in dims:
                raise TransformError(f"expression {expr!r}: unknown name {node.id!r} (known: {sorted(dims)})")
            return float(dims[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            try:
                return float(_BINARY[type(node.op)](ev(node.left), ev(node.right)))
            except (ZeroDivisionError, OverflowError) as e:
                raise TransformError(f"expression {expr!r}: {e}") from None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                and len(node.args) == 1 and not node.keywords):
            try:
                return float(FUNCTIONS[node.func.id](ev(node.args[0])))
            except ValueError as e:
                raise TransformError(f"expression {expr!r}: {e}") from None
        raise TransformError(f"expression {expr!r}: {ast.dump(node)[:40]} is not allowed")

    return ev(tree.body)


_ATOM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(\(.*\))?|[0-9.]+)$")


def reciprocal_expr(expr: str) -> str:
    """Text of 1/expr, simplified when expr is already a reciprocal: `1/sqrt(d)` <-> `sqrt(d)`."""
    expr = expr.strip()
    if expr.startswith("1/"):
        inner = expr[2:].strip()
        if _ATOM.match(inner) and _balanced(inner):
            return inner
        if inner.startswith("(") and inner.endswith(")") and _balanced(inner[1:-1]):
            return inner[1:-1]
    if _ATOM.match(expr) and _balanced(expr):
        return f"1/{expr}"
    return f"1/({expr})"


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
    return depth == 0
