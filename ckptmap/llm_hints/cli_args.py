"""The `--hints` options, shared by every subcommand that solves (solve, bench).

    add_hint_arguments(parser)                  # --hints, --hints-model, --hints-cache, --hints-file
    priors = priors_from_args(args, src, tgt)   # HintsWarnings printed as one line each on stderr
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ckptmap.trees.model import ParamTree
from ckptmap.llm_hints.gemini import API_KEY_ENV, DEFAULT_MODEL
from ckptmap.llm_hints.hints import MODES, get_priors, load_priors_file
from ckptmap.llm_hints.priors import HintsWarning, Priors


def add_hint_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("LLM hints (priors only: they never override a constraint or a verification)")
    g.add_argument("--hints", choices=MODES, default="off",
                   help=f"off: none; cache: recorded answers only, offline; gemini: ask Gemini on a cache miss "
                        f"(needs ${API_KEY_ENV}) and record the answer. Default: off")
    g.add_argument("--hints-model", default=None, metavar="MODEL",
                   help=f"Gemini model (default: $CKPTMAP_GEMINI_MODEL, else {DEFAULT_MODEL})")
    g.add_argument("--hints-cache", default=None, metavar="DIR",
                   help="use only this cache directory (default: ~/.cache/ckptmap/hints over the packaged one)")
    g.add_argument("--hints-file", default=None, metavar="FILE",
                   help="use the priors in FILE (a cache entry or a priors JSON) instead of --hints")


def priors_from_args(args: argparse.Namespace, src: ParamTree, tgt: ParamTree, dims: dict | None = None,
                     *, stream=None) -> Priors:
    """Priors as the options ask; a HintsWarning is printed as `ckptmap: hints: ...`, never a traceback."""
    stream = sys.stderr if stream is None else stream
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HintsWarning)
        if getattr(args, "hints_file", None):
            priors = load_priors_file(args.hints_file)
        else:
            priors = get_priors(src, tgt, dims=dims, mode=getattr(args, "hints", "off"),
                                cache_dir=getattr(args, "hints_cache", None), model=getattr(args, "hints_model", None))
    for w in caught:
        if issubclass(w.category, HintsWarning):
            print(f"ckptmap: hints: {w.message}", file=stream)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return priors


def describe(priors: Priors) -> str:
    """One line for reports: where the priors came from and how many hints they hold."""
    if priors.is_empty:
        return f"hints: none ({priors.origin or 'off'})"
    return (f"hints: {len(priors.correspondences)} correspondences, {len(priors.value_op_hints)} value ops "
            f"from {priors.origin}" + (f" [{'; '.join(priors.notes)}]" if priors.notes else ""))
