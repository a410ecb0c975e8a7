"""Convert a checkpoint through a Mapping, streaming rule by rule: IN (npz / safetensors / sharded / Orbax) -> OUT.

Each rule's sources are read lazily from IN, its chain is applied cell by cell (ckptmap.apply), and each target
tensor is written as soon as it is complete; a stacked target is assembled in memory first. So peak memory is the
largest rule (its stacked outputs plus whatever sources it keeps), never the whole checkpoint. OUT appears only
when every tensor has been written (temp path + rename).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ckptmap import mapping_record
from ckptmap.apply import apply_rule, check_rules
from ckptmap.checkpoint_io import (DEFAULT_MAX_SHARD_BYTES, CheckpointIOError, CheckpointReader, OrbaxWriter,
                                   ShardedSafetensorsWriter, open_reader, open_writer, output_format, output_path,
                                   remove_stale_temps, write_failure)
from ckptmap.errors import CkptmapError, MappingError
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
    extra_files: list[str] = field(default_factory=list)
    load_path: str = ""
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)  # input tensor -> (NaN count, Inf count)
    stale_temps_removed: list[str] = field(default_factory=list)

    def warnings(self, limit: int = 10) -> list[str]:
        """One line per input tensor holding NaN or Inf (carried over unchanged, but worth knowing)."""
        lines = []
        for name, (nan, inf) in list(self.nonfinite.items())[:limit]:
            lines.append(f"warning: input tensor {name!r} holds {nan} NaN and {inf} Inf values (carried over "
                         "unchanged)")
        if len(self.nonfinite) > limit:
            lines.append(f"warning: ... and {len(self.nonfinite) - limit} more input tensors with NaN or Inf")
        return lines

    def summary(self, limit: int = 10) -> str:
        lines = [f"wrote {self.tensors_written} tensors ({self.bytes_written / 1e6:.1f} MB, {self.format}) to "
                 f"{self.output} in {self.seconds:.2f} s; largest rule {self.largest_rule_bytes / 1e6:.1f} MB"]
        if self.extra_files:
            lines.append(f"with {', '.join(self.extra_files)}: a model directory from_pretrained loads")
        if self.load_path:
            lines.append(f"MaxText: load_parameters_path={self.load_path}")
        if self.stale_temps_removed:
            lines.append(f"removed {len(self.stale_temps_removed)} temp file(s) an interrupted conversion to "
                         f"{self.output} left behind")
        lines += self.warnings(limit)
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


def count_nonfinite(array: np.ndarray, chunk: int = 1 << 22) -> tuple[int, int]:
    """(NaN count, Inf count) of a float array, in chunks (no temporary the size of the tensor); 0, 0 for
    integer and bool arrays."""
    if array.dtype.kind in "biuOSU" or array.size == 0:
        return 0, 0
    flat = array.reshape(-1)
    nan = inf = 0
    try:
        for i in range(0, flat.size, chunk):
            part = flat[i:i + chunk]
            bad = part.size - int(np.count_nonzero(np.isfinite(part)))  # one pass in the usual all-finite case
            if bad:
                n = int(np.count_nonzero(np.isnan(part)))
                nan, inf = nan + n, inf + bad - n
    except TypeError:  # a dtype without isnan
        return 0, 0
    return nan, inf


def check_input_shapes(mapping: Mapping, reader: CheckpointReader) -> None:
    """Raise MappingError naming the first input tensor whose shape differs from what the mapping was solved for
    (a mapping for another model fails here, before any data is read)."""
    for name, (shape, _dtype) in mapping_record.recorded_shapes(mapping, "source").items():
        if name in reader and tuple(reader.shape(name)) != shape:
            raise MappingError(f"the input holds {list(reader.shape(name))}, the mapping was solved for "
                               f"{list(shape)} (a mapping for another model?)", file=reader.path, key=name)


def _output_side_is_hf(mapping: Mapping) -> bool:
    return bool(mapping.meta.get("hf_config")) and mapping.meta.get("hf_side") == "target"


def _check_output(mapping: Mapping, out_path: str, kind: str, fmt: str | None, force: bool) -> None:
    path = output_path(out_path)
    if os.path.lexists(path) and not force:
        raise CheckpointIOError("the output exists; pass --force to replace it", file=path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CheckpointIOError("the output's directory does not exist", file=parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointIOError("the output's directory is not writable", file=parent)
    if kind == "sharded" and fmt is None and mapping.meta.get("hf_side") == "source":
        raise CheckpointIOError("a directory for MaxText tensors is ambiguous: name it orbax:DIR or DIR.orbax for "
                                "MaxText's loaders, or pass --format sharded for safetensors shards", file=path)


def convert(mapping: Mapping, input_path: str, output_path_: str, reverse: bool = False, progress: bool = True, *,
            fmt: str | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: str | None = None,
            force: bool = False, step: int | None = None, hf_config: dict | None = None) -> ConvertReport:
    """Write OUT = mapping(IN); `reverse=True` applies `mapping.reversed()` (target -> source).

    IN: .npz, .safetensors, a sharded safetensors directory or an Orbax checkpoint (MaxText's: the latest step,
    or `step`). OUT: chosen by `fmt` or its path (see ckptmap.checkpoint_io.output_format); a sharded directory
    on the HF side also gets config.json (the mapping's recorded HF config, or `hf_config`) and
    generation_config.json. `dtype` ("bfloat16" | "float32" | ...) casts every tensor on write; None keeps the
    source dtype. `force=False` refuses an existing OUT. Raises CkptmapError before writing anything when IN is
    unreadable, lacks a tensor the mapping reads, or holds shapes the mapping was not solved for; a produced
    tensor of another shape than the recorded target stops the conversion and leaves nothing at OUT.
    """
    check_rules(mapping)  # a hand-edited mapping fails here, with the rule's names, not deep in the executor
    mapping_record.check_record(mapping)
    mapping_record.check_shapes(mapping, file=output_path(output_path_))
    if reverse:
        try:
            mapping = mapping.reversed()
        except CkptmapError:
            raise
        except Exception as e:  # an op of an edited mapping whose inverse cannot be built
            raise MappingError(f"the mapping cannot be reversed ({type(e).__name__}: {e})"[:300]) from None
        check_rules(mapping)
    kind = output_format(output_path_, fmt)
    _check_output(mapping, output_path_, kind, fmt, force)
    cast = _dtype(dtype)
    # a conversion killed earlier (SIGKILL, power loss) leaves its temp files beside OUT: a rerun removes them
    # (only those of processes on this host that no longer run, never a live conversion's)
    stale = remove_stale_temps(output_path(output_path_))
    want = mapping_record.recorded_shapes(mapping, "target")
    start = time.perf_counter()
    try:
        return _convert(mapping, input_path, output_path_, progress, kind, max_shard_bytes, dtype, cast, force,
                        step, hf_config, want, start, stale)
    except OSError as e:  # anything the readers and writers did not already name
        raise write_failure(e, file=output_path(output_path_)) from None


def _convert(mapping: Mapping, input_path: str, output_path_: str, progress: bool, kind: str, max_shard_bytes: int,
             dtype: str | None, cast: np.dtype | None, force: bool, step: int | None, hf_config: dict | None,
             want: dict, start: float, stale: list[str]) -> ConvertReport:
    nonfinite: dict[str, tuple[int, int]] = {}
    counted: set[str] = set()
    with open_reader(input_path, step=step) as reader:
        check_inputs(mapping, reader)
        check_input_shapes(mapping, reader)
        read_names = set(mapping.source_names())
        unused = {n: mapping.unused_sources.get(n, "") for n in reader.names() if n not in read_names}
        total = len(_unique(mapping.target_names()))
        bar = _progress_bar(total, progress)
        largest = 0
        extra: list[str] = []
        load_path = ""
        try:
            with open_writer(output_path_, kind, max_shard_bytes=max_shard_bytes, overwrite=force) as writer:
                for rule in mapping.rules:
                    shared = _shared_names(rule)
                    kept: dict[str, np.ndarray] = {}

                    def get(name: str) -> np.ndarray:
                        if name in kept:
                            return kept[name]
                        arr = reader.read(name)
                        if name not in counted:
                            counted.add(name)
                            bad = count_nonfinite(arr)
                            if bad != (0, 0):
                                nonfinite[name] = bad
                        if name in shared:
                            kept[name] = arr
                        return arr

                    rule_bytes = 0
                    for name, array in apply_rule(rule, get):
                        if name in want and tuple(array.shape) != want[name][0]:
                            raise MappingError(f"the mapping produced {list(array.shape)} where it was solved for "
                                               f"{list(want[name][0])}; nothing was written (an edited mapping?)",
                                               file=output_path(output_path_), key=name)
                        if cast is not None and array.dtype != cast:
                            array = array.astype(cast)
                        writer.write(name, array)
                        rule_bytes += array.nbytes
                        del array  # else the loop variable keeps this rule's tensor alive into the next rule
                        bar.set_postfix_str(name[-60:], refresh=False)
                        bar.update(1)
                    kept.clear()
                    largest = max(largest, rule_bytes)
                if isinstance(writer, ShardedSafetensorsWriter):
                    extra = _hf_files(writer, mapping, hf_config, dtype)
                if isinstance(writer, OrbaxWriter):
                    load_path = writer.load_path
                written, nbytes = writer.tensors_written, writer.bytes_written
        finally:
            bar.close()
    return ConvertReport(input=input_path, output=output_path_, format=kind, tensors_written=written,
                         bytes_written=nbytes, seconds=time.perf_counter() - start, largest_rule_bytes=largest,
                         unused_inputs=unused, unmapped_targets=list(mapping.unmapped_targets), extra_files=extra,
                         load_path=load_path, nonfinite=nonfinite, stale_temps_removed=stale)


def _dtype(name: str | None) -> np.dtype | None:
    if name is None:
        return None
    try:
        import ml_dtypes  # noqa: F401 - registers bfloat16 / float8 with numpy

        return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)
    except TypeError:
        raise CkptmapError(f"unknown dtype {name!r} (expected e.g. bfloat16, float32, float16)") from None


def _hf_files(writer: ShardedSafetensorsWriter, mapping: Mapping, hf_config: dict | None,
              dtype: str | None) -> list[str]:
    """config.json and generation_config.json beside the shards when OUT is the HF side."""
    config = hf_config or (mapping.meta.get("hf_config") if _output_side_is_hf(mapping) else None)
    if not config:
        return []
    from ckptmap.hf_model_dir import model_dir_files

    files = model_dir_files(config, dtype)
    writer.extra_files.update(files)
    return sorted(files)


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="tensor", desc="convert", file=sys.stderr,
                dynamic_ncols=True, leave=False)
