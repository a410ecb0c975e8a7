"""MaxText: `maxtext:MODEL_NAME [k=v ...]`, through the MaxText worker (Python >= 3.12)."""

from __future__ import annotations

# lazy imports: read_tree registers every adapter, so an adapter imports its framework's machinery (the
# readers, which import this package back; verify's runner; code reading; export) only when asked for it:
# readers never load verify or export, and registering costs nothing.

from ckptmap.errors import TreeError
from ckptmap.frameworks import register
from ckptmap.frameworks.base import Adapter
from ckptmap.trees.spec import TreeSpec


def parse(prefix: str, target: str, rest: list[str], raw: tuple, parsed: dict, text: str) -> TreeSpec:
    return TreeSpec("maxtext", target, raw, parsed, text)


def spec_args(spec: TreeSpec) -> tuple[list[str], bool | None]:
    """(overrides without scan_layers, scan_layers or None) of a `maxtext:MODEL key=value ...` spec."""
    overrides = [tok for tok in spec.raw_overrides if not tok.startswith("scan_layers=")]
    scan = spec.overrides.get("scan_layers")
    if isinstance(scan, str):
        scan = scan.lower() in ("1", "true", "yes")
    return overrides, None if scan is None else bool(scan)


def read_tree(spec: TreeSpec, layout: str = "saved"):
    try:
        from ckptmap.maxtext import read_maxtext_tree
    except ImportError as e:
        raise TreeError(f"the MaxText reader is not available ({e})", file=spec.text) from None
    return read_maxtext_tree(spec.target, *spec_args(spec))


def runner(spec: TreeSpec, device: str, layout: str):
    from ckptmap.verify.maxtext_runner import MaxTextRunner

    return MaxTextRunner(spec.target, list(spec.raw_overrides), device=device)


def checkpoint_model(spec: TreeSpec, path: str, device: str, options: dict):
    """The Orbax checkpoint at `path` restored by MaxText's own loader into the model the SPEC names."""
    from ckptmap.verify.checkpoint_models import MaxTextCheckpointModel

    return MaxTextCheckpointModel(spec.target, list(spec.raw_overrides), path, device, step=options.get("step"))


def code_layouts(spec: TreeSpec, tree, notes: list[str]) -> dict:
    from ckptmap.code_reading import maxtext_layouts

    return {n: v for n, v in maxtext_layouts(spec.target, *spec_args(spec)).items() if n in tree}


def export(*args, **kwargs):
    from ckptmap.export import export_maxtext_module

    return export_maxtext_module(*args, **kwargs)


# MaxText's own spellings (heuristics.names reads them): its token table, final norm and output head.
NAME_PRIORS = {"token_embedder": ("embed",), "decoder_norm": ("final", "norm"), "logits_dense": ("logits",)}

ADAPTER = register(Adapter(name="maxtext", prefixes=("maxtext",), kinds=("maxtext",), parse=parse,
                           read_tree=read_tree, runner=runner, code_layouts=code_layouts,
                           checkpoint_model=checkpoint_model, storage="flax",
                           naming="-", export=export, name_priors=NAME_PRIORS))
