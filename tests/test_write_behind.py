"""pipeline.write_behind flushes the output while it is written; the executor starts the largest tasks first
where the writer takes tensors in any order, and keeps the mapping's order where it does not."""

from __future__ import annotations

import collections
import os
import threading
import time

import ml_dtypes
import numpy as np

from ckptmap import checkpoint_io as cio
from ckptmap.checkpoint_io.commit import TEMP_PREFIX
from ckptmap.convert import convert
from ckptmap.pipeline.execute import Executor, largest_tasks_first, task_bytes
from ckptmap.pipeline.plan import RulePlan
from ckptmap.pipeline.write_behind import WriteBehind
from test_convert_cases import fixture, llama_mapping, seeded


def _wait_for(cond, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_each_round_flushes_the_files_that_changed(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.bin", "sub/b.bin"):
        (tmp_path / name).write_bytes(b"x" * 100)
    wb = WriteBehind(str(tmp_path), every=50)
    try:
        wb.wrote(40)  # under `every`: no round yet
        time.sleep(0.1)
        assert wb.rounds == 0
        wb.wrote(20)
        assert _wait_for(lambda: wb.flushed == 2)
        assert wb.rounds == 1
        (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 300)  # changed: flushed again; a.bin is not
        (tmp_path / "c.bin").write_bytes(b"z")  # new: flushed
        wb.wrote(60)
        assert _wait_for(lambda: wb.rounds == 2 and wb.flushed == 4)
    finally:
        wb.close()
    assert not wb._thread.is_alive()


def test_a_missing_root_or_a_vanished_file_is_skipped(tmp_path):
    wb = WriteBehind(str(tmp_path / "not-yet"), every=1)
    wb.wrote(5)
    assert _wait_for(lambda: wb.rounds == 1)
    wb.close()
    assert wb.flushed == 0


def _plan(index, cells, in_bytes):
    return RulePlan(index=index, sources=(), targets=(), in_bytes=in_bytes, largest_source_bytes=in_bytes,
                    cells=cells)


def test_largest_tasks_first_puts_whole_rules_before_split_ones():
    stacked = _plan(0, cells=32, in_bytes=3200)  # 2 workers: 8 tasks of 400 bytes
    norm = _plan(1, cells=1, in_bytes=10)
    embedding = _plan(2, cells=1, in_bytes=1000)  # one task of 1000 bytes
    small = _plan(3, cells=4, in_bytes=400)  # 4 tasks of 100
    assert task_bytes(stacked, 2) == 400 and task_bytes(embedding, 2) == 1000
    order = largest_tasks_first([stacked, norm, embedding, small], workers=2)
    assert [p.index for p in order] == [2, 0, 3, 1]
    tie = [_plan(i, cells=1, in_bytes=5) for i in range(4)]
    assert [p.index for p in largest_tasks_first(tie, 2)] == [0, 1, 2, 3]  # ties keep the mapping's order


def test_every_writer_gets_every_tensor_whatever_the_order(tmp_path):
    """Orbax and safetensors take tensors in any order (largest tasks first); npz in the plan's order (it
    would wait forever for a tensor the budget had not admitted): all three finish with the same values."""
    mapping = llama_mapping(True)
    _, hf_shapes, _ = fixture("llama3.1")
    keep = set(mapping.source_names())
    hf = {n: a.astype(ml_dtypes.bfloat16) for n, a in seeded(hf_shapes).items() if n in keep}
    cio.write_all(str(tmp_path / "hf"), hf, max_shard_bytes=40_000)
    got = {}
    for out in ("mt.orbax", "mt.npz", "mt.safetensors"):
        convert(mapping, str(tmp_path / "hf"), str(tmp_path / out), progress=False, workers=2,
                max_memory=1)  # one rule at a time: the npz writer would deadlock if rules came out of order
        with cio.open_reader(str(tmp_path / out)) as r:
            got[out] = {n: np.asarray(r.read(n)).tobytes() for n in r.names()}
    assert got["mt.orbax"] == got["mt.npz"] == got["mt.safetensors"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]  # no temp output left


def _executor(sizes: dict[int, int], any_order: bool, limit: int = 100) -> Executor:
    ex = Executor(lambda name: None, lambda name, array: None, workers=2, max_memory=limit, any_order=any_order)
    ex.memory = lambda plan: sizes[plan.index]
    return ex


def test_a_later_rule_stands_in_while_the_first_waits_for_memory():
    """Two whole-tensor rules that do not fit side by side, then small rules: while the second waits, one small
    rule starts in its place (a worker would idle), never two; the second starts as soon as the first is done."""
    ex = _executor({0: 80, 1: 80, 2: 10, 3: 10}, any_order=True)
    waiting = collections.deque(_plan(i, cells=1, in_bytes=1) for i in range(4))
    assert ex._admit_next(waiting) is waiting[0]
    waiting.popleft()
    stand_in = ex._admit_next(waiting)
    assert stand_in.index == 2 and ex.budget.used == 90
    waiting.remove(stand_in)
    ex._stand_ins = 1
    threading.Timer(0.3, ex.budget.release, args=(80,)).start()  # rule 0 finishes
    started = time.monotonic()
    assert ex._admit_next(waiting).index == 1  # not rule 3: a stand-in already runs
    assert time.monotonic() - started >= 0.25 and ex.budget.used == 90


def test_a_writer_that_takes_the_plans_order_gets_no_stand_in():
    ex = _executor({0: 80, 1: 80, 2: 10}, any_order=False)
    waiting = collections.deque(_plan(i, cells=1, in_bytes=1) for i in range(3))
    assert ex._admit_next(waiting).index == 0
    waiting.popleft()
    threading.Timer(0.3, ex.budget.release, args=(80,)).start()
    assert ex._admit_next(waiting).index == 1 and ex.budget.used == 80
