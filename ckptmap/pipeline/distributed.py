"""One conversion split over several processes or hosts, on Ray.

The driver plans the output (ckptmap.pipeline.plan) and lays it out; each Ray task takes a fixed share of it
(`assign`: by bytes, in order, the same for the same plan), opens the input itself, and writes its part into the
driver's temp directory through the same threaded executor as one process; the driver then finishes the output
once and renames the directory into place. Any task's error removes it all.

- Sharded safetensors (`ShardShare`): shard boundaries fall between rules (sinks.safetensors_layout), so a task
  writes whole shard files; the driver writes the index.
- Orbax (`OrbaxShare`, Zarr arrays outside OCDBT, the default form): the driver's Orbax save lays the checkpoint
  out (Orbax's metadata and each array's zarr metadata, no data: OrbaxSink's `data_elsewhere`); a task writes the
  chunks of its rules' arrays (OrbaxArraySink), each array in one task.

Either way the bytes depend only on the plan (and the shard size), so the output is byte-identical to a
one-process run (Orbax's own timestamps aside). Across hosts the input and the output's directory must be paths
every node sees (a shared file system).
"""

from __future__ import annotations

import os
import resource
import socket
from dataclasses import dataclass, field

from ckptmap import mapping_record
from ckptmap.errors import CkptmapError
from ckptmap.mapping import Mapping
from ckptmap.checkpoint_io import open_reader
from ckptmap.checkpoint_io.base import CheckpointIOError
from ckptmap.convert import _dtype, default_workers, plan_conversion, sink_executor
from ckptmap.pipeline import heap
from ckptmap.pipeline.plan import RulePlan
from ckptmap.pipeline.sinks import PlannedWriter, ShardSubsetSink, safetensors_layout


@dataclass
class ShareResult:
    """What one process wrote: name -> bytes of each tensor, and where it ran."""

    written: dict[str, int] = field(default_factory=dict)
    largest_rule_bytes: int = 0
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)
    host: str = ""
    pid: int = 0
    peak_rss_bytes: int = 0  # the process's own peak resident memory (getrusage), this task included

    @property
    def tensors(self) -> int:
        return len(self.written)

    @property
    def bytes(self) -> int:
        return sum(self.written.values())


def _targets_of(plans: list[RulePlan], rules: set[int]) -> dict:
    return {t.name: t for p in plans if p.index in rules for t in p.targets}


@dataclass(frozen=True)
class ShardShare:
    """Sharded safetensors: the shard files numbered `shards` of the plan's layout, written into `tmp_dir`."""

    tmp_dir: str
    shards: tuple[int, ...]
    max_shard_bytes: int

    def sink(self, plans: list[RulePlan], out_file: str) -> tuple[set[int], PlannedWriter]:
        """(the rules this share runs, the writer of their tensors)."""
        layout = safetensors_layout(plans, self.max_shard_bytes, self.tmp_dir)
        rules = {r for k in self.shards for r in layout.shards[k].rules}
        return rules, ShardSubsetSink(out_file, layout, self.tmp_dir, list(self.shards), _targets_of(plans, rules))


@dataclass(frozen=True)
class OrbaxShare:
    """Orbax: the arrays of the rules `rules`, written into the checkpoint the driver laid out at `item_dir`."""

    item_dir: str
    rules: tuple[int, ...]
    zarr3: bool = True

    def sink(self, plans: list[RulePlan], out_file: str) -> tuple[set[int], PlannedWriter]:
        from ckptmap.pipeline.orbax_sink import OrbaxArraySink  # lazy: loads TensorStore

        rules = set(self.rules)
        every = frozenset(t.name for p in plans for t in p.targets)
        return rules, OrbaxArraySink(out_file, self.item_dir, _targets_of(plans, rules), every, zarr3=self.zarr3)


def assign(units: list[list[int]], unit_bytes: list[int], processes: int) -> list[list[int]]:
    """Units (shard groups, or rules) -> `processes` shares of contiguous units with about equal bytes
    (deterministic)."""
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


def convert_share(mapping: Mapping, input_path: str, step: int | None, share: ShardShare | OrbaxShare,
                  cast_name: str | None, workers: int | None, max_memory: int | None,
                  out_file: str) -> ShareResult:
    """The work of one process: plan again from the input (the same plan the driver made), then write the
    tensors of `share` into the driver's temp output. `out_file` (the final output) names errors."""
    cast = _dtype(cast_name)
    workers = default_workers() if workers is None else workers
    with open_reader(input_path, step=step) as reader:
        plans = plan_conversion(mapping, reader, cast, out_file)
        rules, sink = share.sink(plans, out_file)
        mine = [p for p in plans if p.index in rules]
        result = ShareResult(host=socket.gethostname(), pid=os.getpid())
        try:
            executor = sink_executor(reader, sink, mine, workers, max_memory,
                                     mapping_record.recorded_shapes(mapping, "target"), out_file, cast)
            stats = executor.run(mapping, mine)
            sink.commit()
        except BaseException:
            sink.abort()
            raise
    result.written = {name: sink.targets[name].nbytes for name in sorted(sink.targets)}
    result.largest_rule_bytes = stats.largest_rule_bytes
    result.nonfinite = stats.nonfinite
    result.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    return result


def check_all_written(plans: list[RulePlan], results: list[ShareResult], out_file: str) -> None:
    """Every planned tensor written by exactly one process (else nothing is installed)."""
    seen: set[str] = set()
    for r in results:
        twice = seen.intersection(r.written)
        if twice:
            raise CheckpointIOError("tensor written by two processes", file=out_file, key=min(twice))
        seen.update(r.written)
    missing = [t.name for p in plans for t in p.targets if t.name not in seen]
    if missing:
        raise CheckpointIOError(f"{len(missing)} planned tensor(s) were written by no process; nothing was written",
                                file=out_file, key=missing[0])


def ray_runtime(address: str | None, processes: int):
    """(ray, started): Ray connected to the cluster at `address`, or to a local one of `processes` CPUs, started
    here unless this process already runs one (`started`: the caller shuts it down when done). Started before
    Orbax imports JAX, so that Ray forks no process beside JAX's threads."""
    try:
        import ray
    except ImportError:
        raise CkptmapError("--processes / --ray need the ray package (pip install 'ckptmap[scale]')") from None
    if ray.is_initialized():
        return ray, False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=processes, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray, True


STOP_WAIT_S = 120  # how long the driver waits for cancelled tasks to stop before it removes the temp output


def run_shares(mapping: Mapping, input_path: str, step: int | None, shares: list, cast_name: str | None,
               workers: int | None, max_memory: int | None, address: str | None, out_file: str) -> list[ShareResult]:
    """Run one Ray task per share and wait for all, in the shares' order; a task's CkptmapError is raised as
    itself. The first task that fails stops the others, and this returns only once every task has stopped: a
    task still writing would otherwise recreate the temp output the driver then removes (TensorStore makes the
    directories it writes into)."""
    ray, _ = ray_runtime(address, len(shares))
    task = ray.remote(num_cpus=1, max_retries=0, runtime_env={"env_vars": heap.worker_env()})(convert_share)
    mapping_ref = ray.put(mapping)
    refs = [task.remote(mapping_ref, input_path, step, share, cast_name, workers, max_memory, out_file)
            for share in shares]
    done: dict = {}
    pending = list(refs)
    try:
        while pending:  # as each finishes, so that a failure is heard at once, whichever task it is
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                done[ref] = ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.wait(pending, num_returns=len(pending), timeout=STOP_WAIT_S)  # cancelled: ready once stopped
        cause = getattr(e, "cause", None)
        if isinstance(cause, CkptmapError):
            raise cause from None
        raise CkptmapError(f"a conversion task failed: {str(e).splitlines()[0][:300]}") from None
    return [done[ref] for ref in refs]
