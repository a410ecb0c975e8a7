"""`ckptmap trees SPEC [--out FILE] [--json]`: print a parameter tree compactly, or write it as JSON.

SPEC may be several words (`maxtext:llama3.1-8b base_emb_dim=64 ...`, `hf:llama num_hidden_layers=2`); they
are joined back into one spec string.
"""

from __future__ import annotations

# lazy imports: a subcommand imports its own work when it runs, so that `ckptmap --help` and `ckptmap trees`
# start without the solver (OR-Tools), verify (torch on use) or the benchmarks.

import argparse
import json
import os
import shlex
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "trees", help="read a parameter tree (names, shapes, dtypes) and print or save it",
        description="Read a parameter tree without loading weights. SPEC: a .json tree, hf:CONFIG.json, "
                    "hf:MODEL_TYPE [key=value ...], a .safetensors file or directory, "
                    "maxtext:MODEL_NAME [key=value ...], orbax:DIR.")
    parser.add_argument("spec", nargs="+", metavar="SPEC", help="what to read, plus key=value overrides")
    parser.add_argument("--out", metavar="FILE", help="write the tree as JSON (read back by `ckptmap trees FILE`)")
    parser.add_argument("--json", action="store_true", help="print the tree JSON instead of the compact view")
    parser.add_argument("--hf-layout", choices=("saved", "memory"), default="saved",
                        help="HF names as save_pretrained writes them (default) or as the torch module holds them")
    parser.set_defaults(func=run)
    return parser


def spec_text(words: list[str]) -> str:
    """Join argv words into one SPEC, quoting any word that needs it so the spec parser splits it back.
    One word that is not an existing path is already a whole SPEC (`"maxtext:llama3.1-8b scan_layers=false"`)."""
    if len(words) == 1 and not os.path.exists(words[0]):
        return words[0]
    return shlex.join(words)


def run(args) -> int:
    from ckptmap.trees import read_tree, write_tree
    from ckptmap.trees.json_tree import tree_document
    from ckptmap.trees.summary import format_summary

    tree = read_tree(spec_text(args.spec), hf_layout=args.hf_layout)
    if args.out:
        write_tree(tree, args.out)
    text = json.dumps(tree_document(tree), indent=1) if args.json else format_summary(tree)
    if args.out and not args.json:
        text += f"\nwrote {args.out}"
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `ckptmap trees ... | head`: the reader left; not an error, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
