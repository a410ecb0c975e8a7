"""Record an answer into a hints cache: `python -m ckptmap.llm_hints.record`.

    python -m ckptmap.llm_hints.record --source SRC.json --target TGT.json --answer ANSWER.json \\
        --recorded-by "who wrote it" [--dims hidden=64 heads=4 ...] [--model M] [--cache-dir DIR] [--filename F]

The answer is a JSON object in RESPONSE_SCHEMA's form. This is how the committed ckptmap/llm_hints/cache/ entries
were made, and how an answer obtained elsewhere (another model, a person) is added for offline use.
"""

from __future__ import annotations

import argparse
import json
import sys

from ckptmap.errors import CkptmapError
from ckptmap.trees import read_tree
from ckptmap.trees.model import ParamTree
from ckptmap.llm_hints.cache import PACKAGED_DIR
from ckptmap.llm_hints.hints import record_answer


def read_spec(spec: str) -> ParamTree:
    """The tree a SPEC names (ckptmap.trees.read_tree: a tree JSON, an HF config, a checkpoint, ...)."""
    return read_tree(spec)


def parse_dims(pairs: list[str]) -> dict[str, int]:
    dims = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not v.lstrip("-").isdigit():
            raise CkptmapError(f"expected NAME=INT, got {pair!r}", key="--dims")
        dims[k] = int(v)
    return dims


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ckptmap.llm_hints.record", description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--answer", required=True, help="JSON answer object (correspondences, value_ops)")
    ap.add_argument("--recorded-by", required=True)
    ap.add_argument("--dims", nargs="*", default=[])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache-dir", default=str(PACKAGED_DIR))
    ap.add_argument("--filename", default=None)
    ap.add_argument("--note", default="", help="free text stored with the entry")
    args = ap.parse_args(argv)
    try:
        src, tgt = read_spec(args.source), read_spec(args.target)
        try:
            with open(args.answer) as f:
                answer = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CkptmapError(f"cannot read the answer ({e})", file=args.answer) from None
        extra = {"pair": {"source": args.source, "target": args.target}}
        if args.note:
            extra["note"] = args.note
        entry = record_answer(src, tgt, answer, dims=parse_dims(args.dims), model=args.model,
                              recorded_by=args.recorded_by, cache_dir=args.cache_dir, extra=extra,
                              filename=args.filename)
    except CkptmapError as e:
        print(f"record: error: {e.one_line()}", file=sys.stderr)
        return 2
    print(entry.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
