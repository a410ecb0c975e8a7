"""Convert a checkpoint through a Mapping, streaming rule by rule: IN (npz / safetensors / sharded / Orbax) -> OUT.

Every output tensor's shape and dtype is planned from the mapping and IN's header before a byte is read
(ckptmap.pipeline.plan), so OUT is laid out first and each tensor written once at its place. Rules run on worker
threads, cell by cell (ckptmap.pipeline.execute), while their bytes fit a budget: each source is read lazily,
each target written as soon as it is complete (a stacked target is assembled in memory first). So peak memory
is the rules in flight (at most the budget, 1.5x the largest rule by default), never the whole checkpoint. OUT
appears only when every tensor has been written (temp path + rename).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ckptmap import mapping_record, native, orbax_io
from ckptmap.apply import check_rules
from ckptmap.checkpoint_io import (DEFAULT_MAX_SHARD_BYTES, CheckpointIOError, CheckpointReader, open_reader,
                                   open_writer, output_format, output_path, remove_stale_temps, write_failure)
from ckptmap.errors import CkptmapError, MappingError
from ckptmap.mapping import Mapping
from ckptmap.orbax_io import OrbaxWriteOptions
from ckptmap.pipeline.execute import Executor
from ckptmap.pipeline.plan import RulePlan, check_planned_shapes, plan_mapping
from ckptmap.pipeline.sinks import OrderedSink, SafetensorsSink, safetensors_layout, write_index
from ckptmap.checkpoint_io.commit import _remove, _temp_beside
from ckptmap.checkpoint_io.writers import CheckpointWriter
from ckptmap.hf_model_dir import model_dir_files
from ckptmap.pipeline.sources import prefetcher, sliced_inputs, threaded_read


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
    workers: int = 1
    max_memory: int | None = None  # the cap on bytes in flight (default: 1.5x the largest rule)
    budget_peak: int = 0  # the most bytes the admitted rules were planned to hold at once
    processes: int = 1
    # across processes: per process (host, pid, tensors written, bytes written, its peak RSS in bytes)
    process_stats: list[tuple[str, int, int, int, int]] = field(default_factory=list)

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
                 f"{self.output} in {self.seconds:.2f} s ({self.workers} worker(s)); largest rule "
                 f"{self.largest_rule_bytes / 1e6:.1f} MB"]
        if self.extra_files:
            lines.append(f"with {', '.join(self.extra_files)}: a model directory from_pretrained loads")
        if self.load_path:
            lines.append(f"MaxText: load_parameters_path={self.load_path}")
        for host, pid, tensors, nbytes, rss in self.process_stats:
            lines.append(f"process {host}:{pid} wrote {tensors} tensors ({nbytes / 1e6:.1f} MB), peak RSS "
                         f"{rss / 2**20:.0f} MB")
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


@functools.cache
def _exponent_masks() -> dict:
    """dtype -> (unsigned view, sign-less mask, exponent mask) of the IEEE-like float formats: a value is NaN when
    its sign-less bits exceed the exponent mask, Inf when they equal it."""
    import ml_dtypes

    return {np.dtype(np.float16): (np.uint16, 0x7FFF, 0x7C00),
            np.dtype(ml_dtypes.bfloat16): (np.uint16, 0x7FFF, 0x7F80),
            np.dtype(np.float32): (np.uint32, 0x7FFFFFFF, 0x7F800000),
            np.dtype(np.float64): (np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


def nonfinite_limit(dtype: np.dtype) -> int | None:
    """The sign-less bit pattern from which a value of `dtype` is NaN or Inf (its exponent mask) for the IEEE-like
    float formats; None for any other. The executor compares the transpose kernel's scan with it."""
    masks = _exponent_masks().get(np.dtype(dtype))
    return None if masks is None else masks[2]


def count_nonfinite(array: np.ndarray, chunk: int = 1 << 20) -> tuple[int, int]:
    """(NaN count, Inf count) of a float array, in chunks (no temporary the size of the tensor); 0, 0 for
    integer and bool arrays. IEEE formats are checked on their bits (one integer pass per chunk in the usual
    all-finite case, ~2.5x numpy's isfinite on bfloat16); 2- and 4-byte ones first by the compiled scan
    (ckptmap.native.scan: one pass, no buffer), which answers the all-finite case alone."""
    if array.dtype.kind in "biuOSU" or array.size == 0:
        return 0, 0
    flat = np.ascontiguousarray(array).reshape(-1)
    masks = _exponent_masks().get(flat.dtype)
    nan = inf = 0
    if masks is not None:
        raw, sign_less, exponent = masks
        scan = native.module("scan") if flat.dtype.itemsize in (2, 4) else None
        if scan is not None and scan.max_magnitude_bits(flat.ctypes.data, flat.size, flat.dtype.itemsize) < exponent:
            return 0, 0  # one pass, no scratch buffer: every value is finite (the usual case)
        bits = flat.view(raw)
        buf = np.empty(min(chunk, bits.size), raw)
        for i in range(0, bits.size, chunk):
            part = buf[:min(chunk, bits.size - i)]
            np.bitwise_and(bits[i:i + chunk], raw(sign_less), out=part)
            if part.max() >= exponent:
                n_bad = int(np.count_nonzero(part >= exponent))
                n_inf = int(np.count_nonzero(part == exponent))
                nan, inf = nan + n_bad - n_inf, inf + n_inf
        return nan, inf
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
            force: bool = False, step: int | None = None, hf_config: dict | None = None, workers: int | None = None,
            max_memory: int | None = None, processes: int | None = None,
            ray_address: str | None = None, orbax: OrbaxWriteOptions = OrbaxWriteOptions()) -> ConvertReport:
    """Write OUT = mapping(IN); `reverse=True` applies `mapping.reversed()` (target -> source).

    IN: .npz, .safetensors, a sharded safetensors directory or an Orbax checkpoint (MaxText's: the latest step,
    or `step`). OUT: chosen by `fmt` or its path (see ckptmap.checkpoint_io.output_format); a sharded directory
    on the HF side also gets config.json (the mapping's recorded HF config, or `hf_config`) and
    generation_config.json. `dtype` ("bfloat16" | "float32" | ...) casts every tensor on write; None keeps the
    source dtype. `force=False` refuses an existing OUT. `workers` threads (default: the cores) run rules and
    their cells side by side with at most `max_memory` bytes in flight (default: 1.5x the largest rule); the
    output is the same bytes for any count. `processes` > 1 or `ray_address` splits the rules over Ray tasks
    (ckptmap.pipeline.distributed; sharded safetensors or Orbax output), byte-identical to one process. `orbax`
    says how Orbax output is stored (default: uncompressed, a zarr directory per array; see OrbaxWriteOptions). Raises
    CkptmapError before writing anything when IN is unreadable, lacks a tensor the mapping reads, or holds shapes the mapping was not solved for; a produced
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
    if kind == "orbax" and (processes or 1) <= 1 and not ray_address:
        orbax_io.preload_orbax()
    cast = _dtype(dtype)
    # a conversion killed earlier (SIGKILL, power loss) leaves its temp files beside OUT: a rerun removes them
    # (only those of processes on this host that no longer run, never a live conversion's)
    stale = remove_stale_temps(output_path(output_path_))
    want = mapping_record.recorded_shapes(mapping, "target")
    start = time.perf_counter()
    try:
        return _convert(mapping, input_path, output_path_, progress, kind, max_shard_bytes, dtype, cast, force,
                        step, hf_config, want, start, stale, workers, max_memory, processes, ray_address,
                        orbax)
    except OSError as e:  # anything the readers and writers did not already name
        raise write_failure(e, file=output_path(output_path_)) from None


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


MIN_BUDGET = 256 * 1024**2


def default_max_memory(plans: list[RulePlan], workers: int, *, parts_out: bool = False,
                       sliced: frozenset[str] = frozenset()) -> int:
    """The default cap on bytes in flight: 1.5x the largest rule (so a smaller rule runs beside it), at least
    256 MB (a rule's bytes as RulePlan.memory counts them for this writer and reader)."""
    largest = max((p.memory(workers, parts_out=parts_out, sliced=sliced) for p in plans), default=0)
    return max(MIN_BUDGET, int(1.5 * largest))


def _sink(out: str, kind: str, plans: list[RulePlan], max_shard_bytes: int, force: bool,
          orbax: OrbaxWriteOptions = OrbaxWriteOptions()):
    """The writer for OUT that takes planned tensors from several threads (see ckptmap.pipeline.sinks)."""
    path = output_path(out)
    try:
        if kind == "sharded":
            return SafetensorsSink(path, plans, max_shard_bytes=max_shard_bytes, overwrite=force)
        if kind == "safetensors":
            return SafetensorsSink(path, plans, max_shard_bytes=None, single=True, overwrite=force)
        if kind == "orbax":
            from ckptmap.pipeline.orbax_sink import OrbaxSink  # lazy: loads Orbax and TensorStore

            return OrbaxSink(path, plans, overwrite=force, options=orbax)
        return OrderedSink(open_writer(out, kind, max_shard_bytes=max_shard_bytes, overwrite=force), plans)
    except OSError as e:
        raise write_failure(e, file=path) from None


def sink_executor(reader: CheckpointReader, sink, plans: list[RulePlan], workers: int, max_memory: int | None,
                  want: dict, out_file: str, cast: np.dtype | None, on_tensor=None) -> Executor:
    """The executor that runs `plans` from `reader` into `sink` (a PlannedWriter) on `workers` threads: slices in
    where the reader reads them and out where the sink takes them, at most `max_memory` bytes in flight (default:
    default_max_memory for this reader and sink), each tensor checked against `want` and for NaN/Inf. One process's
    conversion and each Ray task's share run through it."""
    parts_out = getattr(sink, "accepts_parts", False)
    sliced = sliced_inputs(reader, plans)
    limit = (default_max_memory(plans, workers, parts_out=parts_out, sliced=sliced) if max_memory is None
             else max_memory)
    return Executor(threaded_read(reader), sink.write, workers=workers, max_memory=limit,
                    check_nonfinite=count_nonfinite, nonfinite_limit=nonfinite_limit, want=want,
                    prefetch=prefetcher(reader), on_tensor=on_tensor, out_file=out_file, cast=cast,
                    on_fail=getattr(sink, "cancel", None),
                    write_part=sink.write_part if parts_out else None,
                    start_read_part=getattr(reader, "start_read_part", None), sliced=sliced,
                    any_order=getattr(sink, "any_order", False))


def plan_conversion(mapping: Mapping, reader: CheckpointReader, cast: np.dtype | None,
                    out_file: str) -> list[RulePlan]:
    """Every output tensor's shape and dtype from the mapping and IN's header; a shape the mapping was not solved
    for is a MappingError here, before a byte is read."""
    plans = plan_mapping(mapping, reader.shape, reader.dtype, cast)
    check_planned_shapes(plans, mapping_record.recorded_shapes(mapping, "target"), out_file)
    return plans


def _convert(mapping: Mapping, input_path: str, output_path_: str, progress: bool, kind: str, max_shard_bytes: int,
             dtype: str | None, cast: np.dtype | None, force: bool, step: int | None, hf_config: dict | None,
             want: dict, start: float, stale: list[str], workers: int | None = None,
             max_memory: int | None = None, processes: int | None = None,
             ray_address: str | None = None, orbax: OrbaxWriteOptions = OrbaxWriteOptions()) -> ConvertReport:
    distributed = bool(ray_address) or (processes or 1) > 1
    if distributed and kind not in ("sharded", "orbax"):
        raise CheckpointIOError(f"--processes / --ray write sharded safetensors or Orbax (a directory), not {kind}: "
                                "each process writes its own files", file=output_path(output_path_))
    if workers is not None and workers < 1:
        raise CkptmapError(f"--workers must be at least 1, got {workers}")
    with open_reader(input_path, step=step) as reader:
        check_inputs(mapping, reader)
        check_input_shapes(mapping, reader)
        read_names = set(mapping.source_names())
        unused = {n: mapping.unused_sources.get(n, "") for n in reader.names() if n not in read_names}
        plans = plan_conversion(mapping, reader, cast, output_path(output_path_))
        if distributed:
            return _convert_on_ray(mapping, input_path, output_path_, kind, plans, max_shard_bytes, dtype, force,
                                   step, hf_config, workers, max_memory, processes, ray_address, unused, start,
                                   stale, orbax)
        workers = default_workers() if workers is None else int(workers)
        total = sum(len(p.targets) for p in plans)
        bar = _progress_bar(total, progress)
        bar_lock = threading.Lock()

        def tick(name: str) -> None:
            with bar_lock:
                bar.set_postfix_str(name[-60:], refresh=False)
                bar.update(1)

        extra: list[str] = []
        load_path = ""
        sink = _sink(output_path_, kind, plans, max_shard_bytes, force, orbax)
        try:
            if kind == "sharded":
                extra = _hf_files(sink, mapping, hf_config, dtype)
            executor = sink_executor(reader, sink, plans, workers, max_memory, want, output_path(output_path_), cast,
                                     on_tensor=tick)
            limit = executor.budget.limit
            stats = executor.run(mapping, plans)
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        finally:
            bar.close()
        load_path = getattr(sink, "load_path", "")
        written, nbytes = sink.tensors_written, sink.bytes_written
    return ConvertReport(input=input_path, output=output_path_, format=kind, tensors_written=written,
                         bytes_written=nbytes, seconds=time.perf_counter() - start,
                         largest_rule_bytes=stats.largest_rule_bytes, unused_inputs=unused,
                         unmapped_targets=list(mapping.unmapped_targets), extra_files=extra, load_path=load_path,
                         nonfinite=stats.nonfinite, stale_temps_removed=stale, workers=workers,
                         max_memory=limit, budget_peak=stats.budget_peak)


def _convert_on_ray(mapping: Mapping, input_path: str, out: str, kind: str, plans: list[RulePlan],
                    max_shard_bytes: int, dtype: str | None, force: bool, step: int | None, hf_config: dict | None,
                    workers: int | None, max_memory: int | None, processes: int | None, address: str | None,
                    unused: dict, start: float, stale: list[str], orbax: OrbaxWriteOptions) -> ConvertReport:
    """The driver of a conversion split over Ray tasks: lay the output out, hand each task its share, then finish
    the output once and move it into place (nothing at OUT on any error). A local Ray cluster started here is shut
    down at the end; one the caller started (ray.init) is left running."""
    from ckptmap.pipeline import distributed  # lazy: distributed imports this module (cycle)

    if kind == "orbax" and orbax.ocdbt:
        raise CheckpointIOError("--processes / --ray write Orbax arrays as zarr directories, one per array; "
                                "OCDBT databases (--orbax-ocdbt) are written by one process only",
                                file=output_path(out))
    ray, started = distributed.ray_runtime(address, processes or 1)
    try:
        return _drive_shares(mapping, input_path, out, kind, plans, max_shard_bytes, dtype, force, step,
                             hf_config, workers, max_memory, processes, address, unused, start, stale, orbax)
    finally:
        if started:
            ray.shutdown()


def _drive_shares(mapping: Mapping, input_path: str, out: str, kind: str, plans: list[RulePlan],
                  max_shard_bytes: int, dtype: str | None, force: bool, step: int | None, hf_config: dict | None,
                  workers: int | None, max_memory: int | None, processes: int | None, address: str | None,
                  unused: dict, start: float, stale: list[str], orbax: OrbaxWriteOptions) -> ConvertReport:
    """_convert_on_ray's work once Ray runs: Orbax laid out by the driver's save with the arrays written by the
    tasks, or safetensors shards written by the tasks with the index by the driver."""
    from ckptmap.pipeline import distributed  # lazy: distributed imports this module (cycle)

    path = output_path(out)
    source = input_path if input_path.startswith("orbax:") else os.path.abspath(input_path)
    extra_names: list[str] = []
    load_path = ""
    if kind == "orbax":
        from ckptmap.pipeline.orbax_sink import OrbaxSink  # lazy: loads Orbax and TensorStore

        sink = OrbaxSink(path, plans, overwrite=force, options=orbax, data_elsewhere=True)
        try:
            item_dir = sink.laid_out()
            rules = distributed.assign([[p.index] for p in plans], [p.out_bytes for p in plans], processes or 1)
            shares = [distributed.OrbaxShare(item_dir, tuple(r), orbax.zarr3) for r in rules if r]
            results = distributed.run_shares(mapping, source, step, shares, dtype, workers, max_memory, address,
                                             path)
            for r in results:  # a tensor no process wrote, or two did, fails here or in the commit
                sink.written_elsewhere(r.written)
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        load_path = sink.load_path
    else:
        layout = safetensors_layout(plans, max_shard_bytes, path)
        units = layout.units()
        groups = distributed.assign(units, [sum(layout.shards[k].body_size for k in u) for u in units],
                                    processes or 1)
        extra: dict[str, str] = {}

        class _Commit(CheckpointWriter):  # the temp directory -> OUT step, with the writers' error handling
            def _write(self, name, array):
                raise NotImplementedError

            def _commit(self):
                write_index(tmp, layout, extra)
                self._install(tmp)

            def abort(self):
                _remove(tmp)

        tmp = _temp_beside(path, directory=True)
        committer = _Commit(path, overwrite=force)
        try:
            holder = type("H", (), {"extra_files": extra})()
            extra_names = _hf_files(holder, mapping, hf_config, dtype)
            shares = [distributed.ShardShare(tmp, tuple(g), max_shard_bytes) for g in groups if g]
            results = distributed.run_shares(mapping, source, step, shares, dtype, workers, max_memory, address,
                                             path)
            distributed.check_all_written(plans, results, path)
            committer.commit()
        except BaseException:
            _remove(tmp)
            raise
    nonfinite: dict[str, tuple[int, int]] = {}
    for r in results:
        nonfinite.update(r.nonfinite)
    return ConvertReport(input=input_path, output=out, format=kind, tensors_written=sum(r.tensors for r in results),
                         bytes_written=sum(r.bytes for r in results), seconds=time.perf_counter() - start,
                         largest_rule_bytes=max((r.largest_rule_bytes for r in results), default=0),
                         unused_inputs=unused, unmapped_targets=list(mapping.unmapped_targets),
                         extra_files=extra_names, load_path=load_path, nonfinite=dict(sorted(nonfinite.items())),
                         stale_temps_removed=stale, workers=workers or default_workers(), max_memory=max_memory,
                         processes=len(shares),
                         process_stats=[(r.host, r.pid, r.tensors, r.bytes, r.peak_rss_bytes) for r in results])


def _dtype(name: str | None) -> np.dtype | None:
    if name is None:
        return None
    try:
        import ml_dtypes  # noqa: F401 - registers bfloat16 / float8 with numpy

        return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)
    except TypeError:
        raise CkptmapError(f"unknown dtype {name!r} (expected e.g. bfloat16, float32, float16)") from None


def _hf_files(writer: SafetensorsSink, mapping: Mapping, hf_config: dict | None,
              dtype: str | None) -> list[str]:
    """config.json and generation_config.json beside the shards when OUT is the HF side."""
    config = hf_config or (mapping.meta.get("hf_config") if _output_side_is_hf(mapping) else None)
    if not config:
        return []
    files = model_dir_files(config, dtype)
    writer.extra_files.update(files)
    return sorted(files)


def _progress_bar(total: int, enabled: bool):
    return tqdm(total=total, disable=not enabled, unit="tensor", desc="convert", file=sys.stderr,
                dynamic_ncols=True, leave=False)
