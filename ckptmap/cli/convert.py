"""`ckptmap convert --mapping mapping.json --input IN --output OUT [--reverse]`: apply a mapping to a checkpoint."""

from __future__ import annotations

# lazy imports: a subcommand imports its own work when it runs, so that `ckptmap --help` and `ckptmap trees`
# start without the solver (OR-Tools), verify (torch on use) or the benchmarks.

import argparse
import sys

from ckptmap import mapping_record, storage
from ckptmap.checkpoint_io import DEFAULT_MAX_SHARD_BYTES, FORMATS, parse_size
from ckptmap.convert import convert
from ckptmap.errors import MappingError
from ckptmap.mapping import Mapping
from ckptmap.orbax_io import OrbaxWriteOptions


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="convert a checkpoint through a mapping, one tensor at a time",
                       description="Convert IN to OUT through a mapping (from `ckptmap solve`). IN: .npz, "
                                   ".safetensors, a sharded safetensors directory or an Orbax checkpoint (MaxText's "
                                   "own: a root of steps, a step, or its items). OUT: .npz, .safetensors, a "
                                   "directory (sharded safetensors + index; on the HF side also config.json, so "
                                   "from_pretrained loads it) or orbax:DIR / DIR.orbax (MaxText's layout: "
                                   "load_parameters_path=DIR/0/items).")
    p.add_argument("--mapping", required=True, help="mapping JSON written by `ckptmap solve`")
    p.add_argument("--input", required=True, help="source checkpoint")
    p.add_argument("--output", required=True, help="where to write the converted checkpoint")
    p.add_argument("--reverse", action="store_true", help="apply the mapping backwards (its target -> its source)")
    p.add_argument("--format", choices=FORMATS, default=None, help="output format (default: from the OUT path)")
    p.add_argument("--dtype", default=None, help="cast every tensor on write (bfloat16, float32, ...); default: "
                                                 "keep the source dtype")
    p.add_argument("--step", type=int, default=None, help="the step of an Orbax input root (default: the latest)")
    p.add_argument("--hf-config", default=None,
                   help="config.json for an HF output directory (default: the one recorded in the mapping)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--require-verified", action="store_true",
                   help="refuse a mapping whose verification did not pass (or never ran)")
    p.add_argument("--allow-edited", action="store_true",
                   help="apply a mapping edited after it was solved (its seal no longer matches)")
    p.add_argument("--max-shard-size", default=str(DEFAULT_MAX_SHARD_BYTES),
                   help="largest shard of a sharded safetensors output, e.g. 5GB, 500MB (default 5 GiB)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads that read, transform and write side by side (default: the cores); the output is "
                        "the same bytes for any count")
    p.add_argument("--max-memory", default=None,
                   help="cap on the bytes of the rules in flight, e.g. 4GB (default: 1.5x the largest rule); a rule "
                        "larger than the cap runs alone")
    p.add_argument("--processes", type=int, default=None,
                   help="split the rules over this many processes on a local Ray cluster (each writes its own "
                        "shards, or its own Orbax arrays; the index or Orbax's metadata is written once)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="split the rules over the nodes of a running Ray cluster (e.g. auto, or ray://host:10001); "
                        "with --processes N, N tasks")
    p.add_argument("--orbax-compression", action="store_true",
                   help="zstd-compress Orbax output as MaxText's own conversion does (smaller, CPU-bound; default: "
                        "uncompressed, which every Orbax and MaxText loader reads)")
    p.add_argument("--orbax-ocdbt", action="store_true",
                   help="store Orbax output's arrays in OCDBT databases, as MaxText's own conversion does (default: "
                        "a zarr directory per array, which every Orbax and MaxText loader reads and which is "
                        "written faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)
    return p


def verification_warning(mapping: Mapping) -> str | None:
    """One line when the mapping was not proven: never verified, or verified and failed."""
    v = mapping_record.verification(mapping)
    if v is None:
        return ("this mapping was never verified (solve it with --verify); its output has not been checked against "
                "the model")
    if not v.get("passed"):
        return (f"this mapping FAILED verification (max KL {v.get('kl_max')}, threshold {v.get('kl_threshold')}); "
                "its output may not compute what the source does")
    return None


def _framework_output(output: str):
    """(the adapter's output writer, the path after its prefix) for OUT = PREFIX:PATH where a framework adapter
    owning PREFIX writes its own output (Adapter.write_output); (None, OUT) otherwise."""
    from ckptmap import frameworks

    prefix, colon, rest = output.partition(":")
    adapter = frameworks.for_prefix(prefix) if colon and rest else None
    if adapter is None or adapter.write_output is None:
        return None, output
    return adapter.write_output, rest


def _size(text: str | None) -> int | None:
    return None if text is None else parse_size(text)


def run(args: argparse.Namespace) -> int:
    mapping = Mapping.load(args.mapping)
    state = mapping_record.check_seal(mapping, file=args.mapping, allow_edited=args.allow_edited)
    warning = verification_warning(mapping)
    if warning and args.require_verified:
        raise MappingError(f"{warning}; --require-verified refuses it", file=args.mapping)
    hf_config = None
    if args.hf_config:
        from ckptmap.hf_model_dir import load_hf_config

        hf_config = load_hf_config(args.hf_config)
    writer, out = _framework_output(args.output)
    if writer is not None:  # a framework's own output (keras:DIR: a KerasHub preset), written by its adapter
        report = writer(mapping, args.input, out, reverse=args.reverse, force=args.force,
                        progress=not (args.no_progress or args.quiet), dtype=args.dtype, step=args.step)
    else:
        # OUT (and IN) may be a URL: gs://, s3://, any fsspec URL (ckptmap.storage)
        report = storage.convert_at(convert, mapping, args.input, args.output, reverse=args.reverse,
                                    progress=not (args.no_progress or args.quiet), fmt=args.format,
                                    max_shard_bytes=parse_size(args.max_shard_size), dtype=args.dtype,
                                    force=args.force, step=args.step, hf_config=hf_config,
                                    workers=args.workers, max_memory=_size(args.max_memory),
                                    processes=args.processes, ray_address=args.ray,
                                    orbax=OrbaxWriteOptions(compression=args.orbax_compression,
                                                            ocdbt=args.orbax_ocdbt))
    if not args.quiet:
        print(report.summary(), file=sys.stdout)
    # after the work, so that an error stays the one line it prints; warnings show even with --quiet
    if warning:
        print(f"ckptmap convert: warning: {warning}", file=sys.stderr)
    if state == "edited":
        print("ckptmap convert: warning: the mapping was edited after it was solved (--allow-edited)", file=sys.stderr)
    return 0
