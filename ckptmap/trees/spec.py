"""Parse a tree SPEC string into what to read and with which overrides.

SPEC forms (tokens split like a shell line, so quoted values may hold spaces):
    x.json                          a JSON tree (or a config / safetensors index, detected from its content)
    hf:CONFIG.json [key=value ...]  an HF config.json path (or a directory holding one)
    hf:MODEL_TYPE [key=value ...]   an HF model_type, its default config plus overrides
    x.safetensors | DIR             one safetensors file, or a directory of (sharded) safetensors
    maxtext:MODEL_NAME [key=value]  a MaxText model through the MaxText worker
    orbax:DIR                       an Orbax checkpoint directory
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from ckptmap import storage
from ckptmap.errors import TreeError


@dataclass(frozen=True)
class TreeSpec:
    """A parsed SPEC: `kind` in {json, hf_config, hf_type, safetensors, maxtext, orbax}, its `target` (a path,
    model_type or model name) and the `key=value` overrides, kept both raw and parsed."""

    kind: str
    target: str
    raw_overrides: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    text: str = ""


def parse_value(text: str) -> Any:
    """`2` -> 2, `false` -> False, `[1,2]` -> [1, 2], `null` -> None; anything that is not JSON stays a string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def parse_overrides(tokens: list[str], spec: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    """`["a=1", "b.c=x"]` -> raw tokens and {"a": 1, "b.c": "x"} (dotted keys are nested later by the reader)."""
    parsed: dict[str, Any] = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if not sep or not key:
            raise TreeError(f"expected key=value after the model, got {tok!r}", file=spec)
        if key in parsed:
            raise TreeError("override given twice", file=spec, key=key)
        parsed[key] = parse_value(value)
    return tuple(tokens), parsed


def _path_kind(path: str) -> str:
    """Which reader a bare path needs, from its name and (for directories) what it holds. A remote URL (gs://,
    s3://, any fsspec URL: ckptmap.storage) is read for its safetensors headers only, with ranged reads."""
    if storage.is_remote(path):
        if path.endswith((".safetensors", ".safetensors.index.json")):
            return "safetensors"
        if storage.isdir(path) and any(n.endswith(".safetensors") for n in storage.listdir(path)):
            return "safetensors"
        raise TreeError("a remote SPEC is read as a .safetensors file or a directory of them (no safetensors "
                        "found here; an Orbax checkpoint is converted from a remote location by `convert`)",
                        file=path)
    if os.path.isdir(path):
        names = set(os.listdir(path))
        if "_METADATA" in names or "items" in names or "_CHECKPOINT_METADATA" in names:
            return "orbax"
        if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
            return "safetensors"
        if "config.json" in names:
            return "hf_config"
        if any(n.isdigit() and os.path.isdir(os.path.join(path, n)) for n in names):
            return "orbax"
        raise TreeError("directory holds no safetensors, Orbax checkpoint or config.json", file=path)
    if path.endswith(".safetensors"):
        return "safetensors"
    if path.endswith(".json"):
        return "json"
    if not os.path.exists(path):
        raise TreeError("no such file", file=path)
    raise TreeError("unrecognised SPEC: expected a .json or .safetensors path, a directory, hf:..., "
                    "maxtext:... or orbax:...", file=path)


def parse_spec(spec: str) -> TreeSpec:
    """Split SPEC into a TreeSpec; raises TreeError naming the spec when it cannot be understood."""
    text = spec.strip()
    if not text:
        raise TreeError("empty SPEC")
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise TreeError(f"cannot split SPEC: {e}", file=spec) from None
    head, rest = tokens[0], tokens[1:]
    raw, parsed = parse_overrides(rest, spec)
    prefix, colon, target = head.partition(":")
    adapter = _adapter_for_prefix(prefix) if colon else None
    if adapter is not None:
        if not target:
            raise TreeError(f"nothing after '{prefix}:'", file=spec)
        return adapter.parse(prefix, target, rest, raw, parsed, text)
    kind = _path_kind(head)
    if rest and kind not in ("hf_config", "json"):
        raise TreeError(f"key=value overrides only apply to configs (hf:, maxtext:), not a {kind} path", file=spec)
    return TreeSpec(kind, head, raw, parsed, text)


def _adapter_for_prefix(prefix: str):
    """The framework adapter owning a SPEC prefix (ckptmap.frameworks; imported here because the adapters import
    this module's TreeSpec)."""
    from ckptmap import frameworks  # lazy: the adapters import this module's TreeSpec (a cycle)

    return frameworks.for_prefix(prefix)
