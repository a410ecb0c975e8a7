"""`ckptmap convert --mapping mapping.json --input IN --output OUT [--reverse]`: apply a mapping to a checkpoint."""

from __future__ import annotations

import argparse
import sys

from ckptmap.checkpoint_io import DEFAULT_MAX_SHARD_BYTES, FORMATS, parse_size
from ckptmap.convert import convert
from ckptmap.mapping import Mapping


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="convert a checkpoint through a mapping, one tensor at a time",
                       description="Convert IN to OUT through a mapping (from `ckptmap solve`). IN: .npz, "
                                   ".safetensors, a sharded safetensors directory or an Orbax directory. OUT: "
                                   ".npz, .safetensors, a directory (sharded safetensors + index) or orbax:DIR.")
    p.add_argument("--mapping", required=True, help="mapping JSON written by `ckptmap solve`")
    p.add_argument("--input", required=True, help="source checkpoint")
    p.add_argument("--output", required=True, help="where to write the converted checkpoint")
    p.add_argument("--reverse", action="store_true", help="apply the mapping backwards (its target -> its source)")
    p.add_argument("--format", choices=FORMATS, default=None, help="output format (default: from the OUT path)")
    p.add_argument("--max-shard-size", default=str(DEFAULT_MAX_SHARD_BYTES),
                   help="largest shard of a sharded safetensors output, e.g. 5GB, 500MB (default 5 GiB)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    mapping = Mapping.load(args.mapping)
    report = convert(mapping, args.input, args.output, reverse=args.reverse, progress=not args.no_progress,
                     fmt=args.format, max_shard_bytes=parse_size(args.max_shard_size))
    print(report.summary(), file=sys.stdout)
    return 0
