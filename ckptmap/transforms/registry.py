"""JSON names of ops -> op classes, and `op_from_json` that rebuilds any op (Chain and Parallel included)."""

from __future__ import annotations

from typing import Callable, TypeVar

from ckptmap.transforms.base import Op, TransformError

OPS: dict[str, type[Op]] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make `cls` readable back from `{"op": name, ...}`."""

    def deco(cls: T) -> T:
        if name in OPS and OPS[name] is not cls:
            raise TransformError(f"two op classes registered as {name!r}")
        cls.op_name = name
        OPS[name] = cls
        return cls

    return deco


def op_from_json(d: dict) -> Op:
    """Rebuild an op from its `to_json()` dict."""
    if not isinstance(d, dict) or "op" not in d:
        raise TransformError(f"an op must be a JSON object with an \"op\" field, got {d!r:.80}")
    cls = OPS.get(d["op"])
    if cls is None:
        raise TransformError(f"unknown op {d['op']!r}; known: {', '.join(sorted(OPS))}")
    return cls.from_json(d)
