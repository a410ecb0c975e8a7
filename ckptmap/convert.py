"""Convert a checkpoint through a Mapping, streaming rule by rule: IN (npz / safetensors / sharded / Orbax) -> OUT.

Each rule's sources are read lazily from IN, its chain is applied cell by cell (ckptmap.apply), and each target
tensor is written as soon as it is complete; a stacked target is assembled in memory first. So peak memory is the
largest rule (its stacked outputs plus whatever sources it keeps), never the whole checkpoint. OUT appears only
when every tensor has been written (temp path + rename).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ckptmap.apply import apply_rule
from ckptmap.checkpoint_io import DEFAULT_MAX_SHARD_BYTES, CheckpointReader, open_reader, open_writer, output_format
from ckptmap.errors import MappingError
from ckptmap.mapping import Mapping, Rule


@dataclass
class ConvertReport:
    """What a conversion did. `unused_inputs`: IN tensors no rule reads (name -> the mapping's reason, or "");
    `unmapped_targets`: target tensors the mapping cannot produce, so OUT lacks them."""

    input: str
    output: str
    format: str
    tensors_written: int
    bytes_written: int
    seconds: float
    largest_rule_bytes: int
    unused_inputs: dict[str, str] = field(default_factory=dict)
    unmapped_targets: list[str] = field(default_factory=list)

    def summary(self, limit: int = 10) -> str:
        lines = [f"wrote {self.tensors_written} tensors ({self.bytes_written / 1e6:.1f} MB, {self.format}) to "
                 f"{self.output} in {self.seconds:.2f} s; largest rule {self.largest_rule_bytes / 1e6:.1f} MB"]
        if self.unused_inputs:
            lines.append(f"{len(self.unused_inputs)} input tensors not used by the mapping:")
            for name, why in list(self.unused_inputs.items())[:limit]:
                lines.append(f"  {name}" + (f"  ({why})" if why else ""))
            if len(self.unused_inputs) > limit:
                lines.append(f"  ... and {len(self.unused_inputs) - limit} more")
        if self.unmapped_targets:
            lines.append(f"{len(self.unmapped_targets)} target tensors the mapping does not produce (missing in "
                         f"the output):")
            lines += [f"  {n}" for n in self.unmapped_targets[:limit]]
            if len(self.unmapped_targets) > limit:
                lines.append(f"  ... and {len(self.unmapped_targets) - limit} more")
        return "\n".join(lines)


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def check_inputs(mapping: Mapping, reader: CheckpointReader, limit: int = 8) -> None:
    """Raise MappingError (naming IN and the first missing tensor) if IN lacks any tensor the mapping reads."""
    missing = [n for n in _unique(mapping.source_names()) if n not in reader]
    if missing:
        shown = ", ".join(missing[:limit]) + (f", ... ({len(missing) - limit} more)" if len(missing) > limit else "")
        raise MappingError(f"the input lacks {len(missing)} tensor(s) the mapping reads: {shown}",
                           file=reader.path, key=missing[0])


def _shared_names(rule: Rule) -> set[str]:
    """Source tensors that several cells of the rule slice (stacked or single slots): worth keeping per rule."""
    return {n for s in rule.sources if s.axes or not s.is_per_cell for n in s.names()}


def convert(mapping: Mapping, input_path: str, output_path: str, reverse: bool = False, progress: bool = True, *,
            fmt: str | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> ConvertReport:
    """Write OUT = mapping(IN); `reverse=True` applies `mapping.reversed()` (target -> source).

    IN: .npz, .safetensors, a sharded safetensors directory or an Orbax directory. OUT: chosen by `fmt` or its
    path (see ckptmap.checkpoint_io.output_format). Raises CkptmapError before writing anything when IN is
    unreadable or lacks a tensor the mapping reads.
    """
    if reverse:
        mapping = mapping.reversed()
    kind = output_format(output_path, fmt)
    start = time.perf_counter()
    with open_reader(input_path) as reader:
        check_inputs(mapping, reader)
        read_names = set(mapping.source_names())
        unused = {n: mapping.unused_sources.get(n, "") for n in reader.names() if n not in read_names}
        total = len(_unique(mapping.target_names()))
        bar = _progress_bar(total, progress)
        largest = 0
        try:
            with open_writer(output_path, kind, max_shard_bytes=max_shard_bytes) as writer:
                for rule in mapping.rules:
                    shared = _shared_names(rule)
                    kept: dict[str, np.ndarray] = {}

                    def get(name: str) -> np.ndarray:
                        if name in kept:
                            return kept[name]
                        arr = reader.read(name)
                        if name in shared:
                            kept[name] = arr
                        return arr

                    rule_bytes = 0
                    for name, array in apply_rule(rule, get):
                        writer.write(name, array)
                        rule_bytes += array.nbytes
                        del array  # else the loop variable keeps this rule's tensor alive into the next rule
                        bar.set_postfix_str(name[-60:], refresh=False)
                        bar.update(1)
                    kept.clear()
                    largest = max(largest, rule_bytes)
                written, nbytes = writer.tensors_written, writer.bytes_written
        finally:
            bar.close()
    return ConvertReport(input=input_path, output=output_path, format=kind, tensors_written=written,
                         bytes_written=nbytes, seconds=time.perf_counter() - start, largest_rule_bytes=largest,
                         unused_inputs=unused, unmapped_targets=list(mapping.unmapped_targets))


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="tensor", desc="convert", file=sys.stderr,
                dynamic_ncols=True, leave=False)
