"""Frameworks as adapters: each framework ckptmap speaks is one module that registers one `Adapter`.

An adapter supplies its SPEC prefix (`hf:`, `maxtext:`) and the SPEC kinds it owns, its tree reader, its runner
for verify, its code-layout tracer, its storage convention, and (where it has one) an exporter. The core asks
the registry, never "which framework is this?":

    adapter = frameworks.for_kind(spec.kind)      # the kinds parse_spec gives
    tree = adapter.read_tree(spec, layout)
    runner = adapter.runner(spec, device, layout)  # verify
    layouts = adapter.code_layouts(spec, tree, notes)

Adding a framework: write `ckptmap/frameworks/<name>.py` with an `Adapter(...)` and add its module name to
`ADAPTER_MODULES` below (ARCHITECTURE.md, "Adding a framework").
"""

from __future__ import annotations

# lazy imports: read_tree registers every adapter, so an adapter imports its framework's machinery (the
# readers, which import this package back; verify's runner; code reading; export) only when asked for it:
# readers never load verify or export, and registering costs nothing.

import importlib

from ckptmap.frameworks.base import Adapter, NoRunner

__all__ = ["Adapter", "NoRunner", "register", "adapters", "for_kind", "for_prefix", "complete_pair",
           "ADAPTER_MODULES"]

# The one registry line per framework (imported lazily: an adapter's heavy imports happen only when it is used).
ADAPTER_MODULES = ("ckptmap.frameworks.hf", "ckptmap.frameworks.maxtext", "ckptmap.frameworks.files",
                   "ckptmap.frameworks.kerashub")

_REGISTRY: dict[str, Adapter] = {}
_loaded = False


def register(adapter: Adapter) -> Adapter:
    """Add an adapter (its module calls this at import); a second adapter with the same name or prefix is an error."""
    for other in _REGISTRY.values():
        if other.name == adapter.name:
            raise ValueError(f"a framework adapter named {adapter.name!r} is registered already")
        clash = set(other.prefixes) & set(adapter.prefixes) or set(other.kinds) & set(adapter.kinds)
        if clash:
            raise ValueError(f"adapters {other.name!r} and {adapter.name!r} both claim {sorted(clash)}")
    _REGISTRY[adapter.name] = adapter
    return adapter


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in ADAPTER_MODULES:
            importlib.import_module(module)


def adapters() -> list[Adapter]:
    _load()
    return list(_REGISTRY.values())


def for_prefix(prefix: str) -> Adapter | None:
    """The adapter whose SPEC prefix is `prefix` (`hf`, `maxtext`, `orbax`), or None."""
    return next((a for a in adapters() if prefix in a.prefixes), None)


def for_kind(kind: str) -> Adapter:
    """The adapter that owns a parsed SPEC's kind (KeyError when none does)."""
    for a in adapters():
        if kind in a.kinds:
            return a
    raise KeyError(f"no framework adapter reads SPEC kind {kind!r}")


def complete_pair(src: str, tgt: str) -> tuple[str, str]:
    """(source SPEC, target SPEC), each made whole from the other where its adapter can (Adapter.complete: a
    `keras:FAMILY` target with no sizes takes them from an `hf:CONFIG` source); SPECs that need nothing are kept."""
    from ckptmap.trees.spec import parse_spec

    specs = [parse_spec(src), parse_spec(tgt)]
    out = [src, tgt]
    for i, (mine, other) in enumerate(((specs[0], specs[1]), (specs[1], specs[0]))):
        try:
            adapter = for_kind(mine.kind)
        except KeyError:
            continue
        if adapter.complete is not None:
            out[i] = adapter.complete(mine, other) or out[i]
    return out[0], out[1]
