"""Record an answer into a hints cache: `python -m ckptmap.llm_hints.record`.

    python -m ckptmap.llm_hints.record --source SRC.json --target TGT.json --answer ANSWER.json \\
        --recorded-by "who wrote it" [--dims hidden=64 heads=4 ...] [--model M] [--cache-dir DIR] [--filename F]

The answer is a JSON object in RESPONSE_SCHEMA's form. This is how the committed llm_hints/cache/ entries
were made, and how an answer obtained elsewhere (another model, a person) is added for offline use.
"""

from __future__ import annotations

import argparse
import json
import sys

from ckptmap.errors import CkptmapError, TreeError
from ckptmap.trees.model import ParamInfo, ParamTree
from ckptmap.llm_hints.cache import PACKAGED_DIR
from ckptmap.llm_hints.hints import record_answer


def read_spec(spec: str) -> ParamTree:
    """A tree through ckptmap.trees.read_tree when the readers are installed; else a plain JSON file of
    name -> shape or name -> {shape, dtype} (the fixtures' format)."""
    try:
        from ckptmap.trees import read_tree  # type: ignore[attr-defined]
    except ImportError:
        read_tree = None
    if read_tree is not None:
        return read_tree(spec)
    try:
        with open(spec) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TreeError(f"cannot read a name -> shape JSON file ({e})", file=spec) from None
    if not isinstance(obj, dict):
        raise TreeError("expected a JSON object of name -> shape", file=spec)
    items = []
    for name, v in obj.items():
        shape, dtype = (v.get("shape"), v.get("dtype", "float32")) if isinstance(v, dict) else (v, "float32")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise TreeError(f"shape must be a list of non-negative ints, got {shape!r}", file=spec, key=name)
        items.append(ParamInfo(name, tuple(shape), dtype))
    return ParamTree.from_items(items, origin=spec, framework="json")


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
