"""Helpers that write ops as numpy source: expression pieces, and whole functions for the exporter.

Every expression uses only `np` and the argument names it is given, so it can be pasted into a module or eval'd.
"""

from __future__ import annotations

import re

import numpy as np

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CLOSE = {"(": ")", "[": "]"}


def _is_primary(expr: str) -> bool:
    """name, then only `.attr`, `[...]` and `(...)` suffixes: binds tighter than any operator."""
    m = _NAME.match(expr)
    if not m or expr.startswith("lambda"):
        return False
    i = m.end()
    while i < len(expr):
        ch = expr[i]
        if ch == ".":
            m = _NAME.match(expr, i + 1)
            if not m:
                return False
            i = m.end()
        elif ch in _CLOSE:
            depth, j = 0, i
            while j < len(expr):
                depth += expr[j] in "([{"
                depth -= expr[j] in ")]}"
                if depth == 0:
                    break
                j += 1
            if depth != 0 or expr[j] != _CLOSE[ch]:
                return False
            i = j + 1
        else:
            return False
    return True


def paren(expr: str) -> str:
    """`expr` safe to put before `.method()` or `[...]`: wrapped in parentheses unless already a primary."""
    return expr if _is_primary(expr) else f"({expr})"


def axis_slice(axis: int, spec: str) -> str:
    """A subscript applying slice text `spec` on `axis`: `[:, 0:4]` for axis 1, `[..., 1::2]` for axis -1."""
    if axis >= 0:
        return "[" + ":, " * axis + spec + "]"
    return "[..., " + spec + ", :" * (-axis - 1) + "]"


def shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def function_source(op, name: str, args: list[str]) -> str:
    """`def name(args): return (...)` computing `op` with numpy; the exported MaxText module is made of these."""
    outs = op.to_code(list(args))
    body = outs[0] + "," if len(outs) == 1 else ", ".join(outs)
    doc = op.describe().replace('"""', "'''")
    return (f"def {name}({', '.join(args)}):\n"
            f"    \"\"\"{doc}\"\"\"\n"
            f"    return ({body})\n")


def compile_op(op, args: list[str] | None = None):
    """A Python function (positional arrays -> tuple) built from `op.to_code`; used by tests and the exporter."""
    n = op.n_in or 1
    args = args or [f"x{i}" for i in range(n)]
    namespace: dict = {"np": np}
    exec(function_source(op, "_f", args), namespace)  # noqa: S102 - our own generated text
    return namespace["_f"]
