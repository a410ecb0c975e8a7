"""KerasHub (Keras 3, JAX backend by default): `keras:CLASS_OR_FAMILY [key=value ...]`, `keras:PRESET_DIR`,
`keras:CONFIG.json` (a KerasHub preset config, or an HF config converted by KerasHub's own converter),
`keras:FAMILY hf=CONFIG.json`. See `models` for the forms, `tree` for the reader.

Storage convention: Keras keeps matrices as [in, out] (`Dense` kernels) and attention projections as EinsumDense
kernels with the heads split out (query [hidden, heads, head_dim], output [heads, head_dim, hidden]); that is
the "flax" layout. keras and keras_hub are imported only when a `keras:` SPEC is used.
"""

from __future__ import annotations

import os
import shlex

from ckptmap.frameworks import register
from ckptmap.frameworks.base import Adapter
from ckptmap.trees.spec import TreeSpec

# lazy imports: the registry imports every adapter to parse any SPEC; this adapter's own modules load on the first
# keras: SPEC (preset pulls in convert and its pipeline, models and runner reach keras_hub and TensorFlow, which
# must load after OR-Tools).


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


def runner(spec: TreeSpec, device: str, layout: str):
    """verify's runner: the model built concretely, logits of its CausalLM or MaskedLM (see runner)."""
    from ckptmap.frameworks.kerashub.runner import KerasRunner

    return KerasRunner(describe(spec), device=device)


def complete(spec: TreeSpec, partner: TreeSpec) -> str | None:
    """`keras:FAMILY` (or a class) with no sizes, paired with an `hf:CONFIG` SPEC: `keras:FAMILY hf=CONFIG.json`, so
    KerasHub's own converter derives the sizes from the HF config. None when the SPEC needs nothing."""
    from ckptmap.frameworks.kerashub.models import RESERVED_KEYS

    sized = any(k not in RESERVED_KEYS for k in spec.overrides) or "hf" in spec.overrides
    if sized or spec.target.endswith(".json") or os.path.isdir(spec.target) or partner.kind != "hf_config":
        return None
    from ckptmap.trees.hf_config import config_path

    return f"{spec.text} hf={shlex.quote(config_path(partner.target))}"


def write_output(*args, **kwargs):
    """`ckptmap convert --output keras:DIR` (a preset from_preset reads) or `keras:FILE.weights.h5` (see preset)."""
    from ckptmap.frameworks.kerashub.preset import write_output as _write

    return _write(*args, **kwargs)


# KerasHub's own spellings (heuristics.names reads them): the untied output head is the token embedding's
# `reverse_embeddings`, the final norm is the backbone's `sequence_output_layernorm` (or `final_normalization`).
NAME_PRIORS = {"reverse_embeddings": ("logits",), "sequence_output_layernorm": ("final", "norm"),
               "final_normalization": ("final", "norm")}

ADAPTER = register(Adapter(name="keras", prefixes=("keras",), kinds=("keras",), parse=parse, read_tree=read_tree,
                           runner=runner, storage="flax", naming="/",
                           complete=complete, write_output=write_output, name_priors=NAME_PRIORS))
