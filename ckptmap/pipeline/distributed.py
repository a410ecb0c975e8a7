"""One conversion split over several processes or hosts, on Ray.

The driver plans the output (ckptmap.pipeline.plan) and lays out the shards (sinks.safetensors_layout: shard
boundaries fall between rules, so a rule belongs to exactly one group of shards). Each Ray task takes a fixed
share of those groups (`assign`: by bytes, in order, the same for the same plan), opens the input itself, and
writes its own shard files into the driver's temp directory through the same threaded executor as one process.
The driver then writes the index once and renames the directory into place; any task's error removes it all.

The shard files are laid out from the plan and the shard size only, so the output is byte-identical to a
one-process run. Across hosts the input and the output's directory must be paths every node sees (a shared file
system).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from ckptmap import mapping_record
from ckptmap.errors import CkptmapError
from ckptmap.mapping import Mapping
from ckptmap.checkpoint_io import open_reader
from ckptmap.convert import _dtype, count_nonfinite, default_max_memory, default_workers, plan_conversion
from ckptmap.pipeline import heap
from ckptmap.pipeline.execute import Executor
from ckptmap.pipeline.sinks import ShardFiles, safetensors_layout
from ckptmap.pipeline.sources import prefetcher, sliced_inputs, threaded_read


@dataclass
class ShareResult:
    """What one process wrote."""

    tensors: int = 0
    bytes: int = 0
    largest_rule_bytes: int = 0
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)
    host: str = ""
    pid: int = 0


def assign(units: list[list[int]], unit_bytes: list[int], processes: int) -> list[list[int]]:
    """Shard groups -> `processes` shares of contiguous groups with about equal bytes (deterministic)."""
    processes = max(1, min(processes, len(units))) if units else 1
    total = sum(unit_bytes)
    shares: list[list[int]] = [[] for _ in range(processes)]
    done, k = 0, 0
    for unit, nbytes in zip(units, unit_bytes):
        # move to the next share once this one holds its fair part of the bytes
        while k < processes - 1 and done >= total * (k + 1) / processes and shares[k]:
            k += 1
        shares[k].extend(unit)
        done += nbytes
    return shares


def convert_share(mapping: Mapping, input_path: str, step: int | None, tmp_dir: str, shards: list[int],
                  max_shard_bytes: int, cast_name: str | None, workers: int | None,
                  max_memory: int | None) -> ShareResult:
    """The work of one process: plan again from the input (the same plan the driver made), then write the
    tensors of `shards` into their files in `tmp_dir`."""
    cast = _dtype(cast_name)
    workers = default_workers() if workers is None else workers
    with open_reader(input_path, step=step) as reader:
        plans = plan_conversion(mapping, reader, cast, tmp_dir)
        layout = safetensors_layout(plans, max_shard_bytes, tmp_dir)
        rules = {r for k in shards for r in layout.shards[k].rules}
        mine = [p for p in plans if p.index in rules]
        sliced = sliced_inputs(reader, mine)
        limit = default_max_memory(mine, workers, sliced=sliced) if max_memory is None else max_memory
        files = ShardFiles(layout, tmp_dir, which=shards)
        result = ShareResult(host=socket.gethostname(), pid=os.getpid())
        try:
            def write(name, array):
                files.write(name, array)
                result.tensors += 1
                result.bytes += array.nbytes

            executor = Executor(threaded_read(reader), write, workers=workers, max_memory=limit,
                                check_nonfinite=count_nonfinite,
                                want=mapping_record.recorded_shapes(mapping, "target"), prefetch=prefetcher(reader),
                                out_file=tmp_dir, cast=cast,
                                start_read_part=getattr(reader, "start_read_part", None), sliced=sliced,
                                any_order=True)  # each tensor's bytes go to their own offset
            stats = executor.run(mapping, mine)
            files.close()
        except BaseException:
            files.discard()
            raise
    result.largest_rule_bytes = stats.largest_rule_bytes
    result.nonfinite = stats.nonfinite
    return result


def _ray(address: str | None, processes: int):
    try:
        import ray
    except ImportError:
        raise CkptmapError("--processes / --ray need the ray package (pip install 'ckptmap[scale]')") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=processes, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
    return ray


def run_shares(mapping: Mapping, input_path: str, step: int | None, tmp_dir: str, shares: list[list[int]],
               max_shard_bytes: int, cast_name: str | None, workers: int | None, max_memory: int | None,
               address: str | None) -> list[ShareResult]:
    """Run one Ray task per share and wait for all; a task's CkptmapError is raised as itself."""
    ray = _ray(address, len(shares))
    task = ray.remote(num_cpus=1, max_retries=0, runtime_env={"env_vars": heap.worker_env()})(convert_share)
    mapping_ref = ray.put(mapping)
    refs = [task.remote(mapping_ref, input_path, step, tmp_dir, share, max_shard_bytes, cast_name, workers,
                        max_memory) for share in shares if share]
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        for ref in refs:
            ray.cancel(ref, force=True)
        cause = getattr(e, "cause", None)
        if isinstance(cause, CkptmapError):
            raise cause from None
        raise CkptmapError(f"a conversion task failed: {str(e).splitlines()[0][:300]}") from None
