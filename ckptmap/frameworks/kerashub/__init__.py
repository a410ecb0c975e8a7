"""KerasHub (Keras 3, JAX backend by default): `keras:CLASS_OR_FAMILY [key=value ...]`, `keras:PRESET_DIR`,
`keras:CONFIG.json` (a KerasHub preset config, or an HF config converted by KerasHub's own converter),
`keras:FAMILY hf=CONFIG.json`. See `models` for the forms, `tree` for the reader.

Storage convention: Keras keeps matrices as [in, out] (`Dense` kernels) and attention projections as EinsumDense
kernels with the heads split out (query [hidden, heads, head_dim], output [heads, head_dim, hidden]); that is
the "flax" layout. keras and keras_hub are imported only when a `keras:` SPEC is used.
"""

from __future__ import annotations

from ckptmap.frameworks import register
from ckptmap.frameworks.base import Adapter
from ckptmap.trees.spec import TreeSpec


def parse(prefix: str, target: str, rest: list[str], raw: tuple, parsed: dict, text: str) -> TreeSpec:
    return TreeSpec("keras", target, raw, parsed, text)


def describe(spec: TreeSpec):
    from ckptmap.frameworks.kerashub.models import describe as _describe

    return _describe(spec.target, spec.overrides, spec.text)


def read_tree(spec: TreeSpec, layout: str = "saved"):
    """The model's variable paths, shapes and dtypes, built abstract (no weight memory)."""
    from ckptmap.frameworks.kerashub.models import build
    from ckptmap.frameworks.kerashub.tree import tree_of

    model = describe(spec)
    return tree_of(model, build(model, abstract=True), spec.text)


ADAPTER = register(Adapter(name="keras", prefixes=("keras",), kinds=("keras",), parse=parse, read_tree=read_tree,
                           storage="flax", naming="/"))
