"""Issue 15, faults: `ckptmap convert` killed at a random point (SIGKILL), a full disk (RLIMIT_FSIZE), two
conversions racing to one output, NaN and Inf in the source. The final path never holds a partial checkpoint; a
rerun of the same command succeeds; a failure is exit 2 with one line and leaves no temp file."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ckptmap import checkpoint_io as cio
from ckptmap import mapping_record
from ckptmap.convert import convert
from ckptmap.mapping import Mapping, Rule, Slot
from ckptmap.trees.model import ParamInfo, ParamTree
from ckptmap.transforms import Chain, Transpose
from test_integrity import (assert_one_line_error, expected_output, hf_arrays, leftovers, run_cli, sealed_llama)

CKPTMAP = os.path.join(os.path.dirname(sys.executable), "ckptmap")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}

# what the runs below injected, by kind (the reliability table in ckptmap/benchmarks/RESULTS.md counts them)
INJECTED = {"sigkill": 0, "full_disk": 0, "race": 0}
KILL_OUTCOMES: list[tuple[str, float, bool, int]] = []  # (OUT, delay, whole output there, temp files left)


def _tree(shapes):
    return ParamTree.from_items([ParamInfo(n, tuple(s), "float32") for n, s in shapes.items()])


def big_case(tmp_path, tensors: int = 16, n: int = 768):
    """A sealed mapping over `tensors` float32 [n, n] tensors (transposed), and its input: big enough (36 MB) that
    a conversion spends a while writing, so a kill lands mid-write."""
    names = [f"w{i}" for i in range(tensors)]
    rules = [Rule((Slot.single(w),), (Slot.single(f"t-{w}"),), Chain((Transpose((1, 0)),))) for w in names]
    mapping = Mapping(rules, source="big", target="big-t")
    mapping_record.record_trees(mapping, _tree({w: (n, n) for w in names}), _tree({f"t-{w}": (n, n) for w in names}))
    mapping_record.seal(mapping)
    rng = np.random.default_rng(15)
    arrays = {w: rng.standard_normal((n, n)).astype(np.float32) for w in names}
    src = str(tmp_path / "big.safetensors")
    cio.write_all(src, arrays)
    path = str(tmp_path / "big.json")
    mapping.save(path)
    return path, src, {f"t-{w}": a.T for w, a in arrays.items()}


def _argv(mapping, src, out, *extra):
    return ["convert", "--mapping", str(mapping), "--input", str(src), "--output", str(out), "--no-progress", *extra]


def assert_complete(out: str, want: dict) -> None:
    got = cio.read_all(out)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])


# ----------------------------------------------------------------------------------------------------- SIGKILL

KILL_TRIALS = [(fmt, delay) for fmt, delay in zip(
    ["out.npz", "out.safetensors", "out", "out.npz", "out.safetensors", "out"],
    [round(random.Random(15 + i).uniform(0.0, 0.25), 3) for i in range(6)])]


@pytest.mark.parametrize("fmt,delay", KILL_TRIALS)
def test_sigkill_mid_write_leaves_no_partial_output_and_the_rerun_succeeds(tmp_path, fmt, delay):
    mapping, src, want = big_case(tmp_path)
    out = str(tmp_path / fmt)
    proc = subprocess.Popen([CKPTMAP, *_argv(mapping, src, out)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not leftovers(str(tmp_path)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)  # writing has begun once a temp file exists beside OUT
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    INJECTED["sigkill"] += 1
    finished = proc.returncode == 0
    KILL_OUTCOMES.append((fmt, delay, os.path.lexists(out), len(leftovers(str(tmp_path)))))
    if os.path.lexists(out):  # only ever a whole checkpoint
        assert_complete(out, want)
    else:
        assert not finished

    code, _, err = run_cli(_argv(mapping, src, out))
    if os.path.lexists(out) and code == 2:  # the killed run had already committed: the output is whole
        assert_one_line_error(code, err, "the output exists")
    else:
        assert code == 0, err
    assert_complete(out, want)
    assert leftovers(str(tmp_path)) == []  # the rerun removed what the killed run left


def test_a_live_conversions_temp_files_are_never_removed(tmp_path):
    """Stale-temp cleaning only takes temps of processes that no longer run."""
    out = str(tmp_path / "x.npz")
    writer = cio.open_writer(out)
    writer.write("a", np.zeros(3, np.float32))
    assert cio.stale_temps(out) == []  # ours: alive
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    fake = os.path.join(str(tmp_path), f"{cio.TEMP_PREFIX}x.npz-{cio._temp_owner().split('.')[0]}.{pid}-abc")
    open(fake, "w").close()
    assert cio.stale_temps(out) == [fake]
    writer.commit()
    assert sorted(os.listdir(tmp_path)) == sorted(["x.npz", os.path.basename(fake)])


# ----------------------------------------------------------------------------------------------------- full disk

def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("fmt", ["out.npz", "out.safetensors", "out", "out.orbax"])
def test_a_full_disk_is_one_line_no_temp_files_and_nothing_at_the_output(tmp_path, fmt):
    mapping_path = tmp_path / "m.json"
    sealed_llama().save(str(mapping_path))
    src = str(tmp_path / "hf.npz")
    cio.write_all(src, hf_arrays())
    out = str(tmp_path / fmt)
    limit = 20_000  # the output is 430 KB in files up to 130 KB: the disk "fills" part way through
    if fmt == "out.orbax":  # Orbax writes each tensor as it arrives: zstd'd data files of ~16 KB at most
        limit = 6_000
    proc = subprocess.run([CKPTMAP, *_argv(mapping_path, src, out, "--quiet")], env=ENV, capture_output=True,
                          text=True, timeout=300, preexec_fn=_limit_file_size(limit))
    INJECTED["full_disk"] += 1
    assert_one_line_error(proc.returncode, proc.stderr, "disk is full or a file-size limit", out)
    assert not os.path.lexists(out)
    assert leftovers(str(tmp_path)) == []
    # and with room, the same command succeeds
    code, _, err = run_cli(_argv(mapping_path, src, out, "--quiet"))
    assert code == 0, err
    assert_complete(out, expected_output())


def test_a_full_disk_in_process_is_a_checkpoint_error(tmp_path):
    """The writer turns ENOSPC into CheckpointIOError and removes its temp files (no subprocess needed)."""
    out = str(tmp_path / "o.safetensors")
    writer = cio.open_writer(out)
    orig = writer._spool._body

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            orig.close()

    writer._spool._body = Full()
    with pytest.raises(cio.CheckpointIOError, match="disk is full") as e:
        writer.write("a", np.zeros(4, np.float32))
    assert e.value.key == "a"
    assert leftovers(str(tmp_path)) == [] and not os.path.exists(out)


# ----------------------------------------------------------------------------------------------------- races

@pytest.mark.parametrize("fmt", ["o.npz", "o.safetensors", "o", "o.orbax"])
def test_two_writers_racing_to_one_output_one_wins(tmp_path, fmt):
    """Both pass the 'output exists' check, both write; the second commit finds the first's output and fails
    cleanly: the output is the winner's, whole, never a mix."""
    out = str(tmp_path / fmt)
    kind = cio.output_format(out)
    a, b = (cio.open_writer(out, kind, overwrite=False) for _ in range(2))
    a.write("params-x", np.full((4, 4), 1, np.float32))
    b.write("params-x", np.full((4, 4), 2, np.float32))
    b.write("params-y", np.full((2,), 2, np.float32))
    a.commit()
    INJECTED["race"] += 1
    with pytest.raises(cio.CheckpointIOError, match="the output appeared while this conversion ran"):
        b.commit()
    got = cio.read_all(out)
    assert sorted(got) == ["params-x"] and (got["params-x"] == 1).all()
    assert leftovers(str(tmp_path)) == []


def test_two_convert_processes_racing(tmp_path):
    mapping, src, want = big_case(tmp_path, tensors=8)
    out = str(tmp_path / "out.safetensors")
    procs = [subprocess.Popen([CKPTMAP, *_argv(mapping, src, out, "--quiet")], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    INJECTED["race"] += 1
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert_one_line_error(2, loser, out)
    assert "the output exists" in loser or "the output appeared" in loser
    assert_complete(out, want)
    assert leftovers(str(tmp_path)) == []


def test_force_still_replaces(tmp_path):
    out = str(tmp_path / "o.npz")
    cio.write_all(out, {"a": np.zeros(2, np.float32)})
    w = cio.open_writer(out, overwrite=True)
    w.write("b", np.ones(2, np.float32))
    w.commit()
    assert sorted(cio.read_all(out)) == ["b"]


# ----------------------------------------------------------------------------------------------------- values

def test_nan_and_inf_are_carried_over_exactly_and_reported(tmp_path):
    arrays = hf_arrays()
    q = "model.layers.1.self_attn.q_proj.weight"
    nan_payload = np.array([0x7FC00123], np.uint32).view(np.float32)[0]  # a NaN with a payload
    arrays[q][0, :3] = nan_payload
    arrays[q][5, 7] = np.inf
    arrays["lm_head.weight"][2, 2] = -np.inf
    src = str(tmp_path / "hf.safetensors")
    cio.write_all(src, arrays)
    mapping_path = tmp_path / "m.json"
    sealed_llama().save(str(mapping_path))
    out = str(tmp_path / "mt.npz")
    code, stdout, err = run_cli(_argv(mapping_path, src, out))
    assert code == 0, err
    got, want = cio.read_all(out), expected_output(arrays=arrays)
    for name in want:
        assert got[name].tobytes() == np.ascontiguousarray(want[name]).tobytes(), name  # bit for bit
    assert f"warning: input tensor {q!r} holds 3 NaN and 1 Inf values" in stdout
    assert "warning: input tensor 'lm_head.weight' holds 0 NaN and 1 Inf values" in stdout

    report = convert(sealed_llama(), src, str(tmp_path / "again.npz"), progress=False)
    assert report.nonfinite == {q: (3, 1), "lm_head.weight": (0, 1)}


# ----------------------------------------------------------------------------------------------------- output dirs

def test_a_missing_output_directory_is_exit_2_before_any_work(tmp_path):
    mapping_path = tmp_path / "m.json"
    sealed_llama().save(str(mapping_path))
    src = str(tmp_path / "hf.npz")
    cio.write_all(src, hf_arrays())
    code, _, err = run_cli(_argv(mapping_path, src, tmp_path / "nope" / "o.npz"))
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "nope").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_is_exit_2_before_any_work(tmp_path):
    mapping_path = tmp_path / "m.json"
    sealed_llama().save(str(mapping_path))
    src = str(tmp_path / "hf.npz")
    cio.write_all(src, hf_arrays())
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, _, err = run_cli(_argv(mapping_path, src, ro / "o.npz"))
    assert_one_line_error(code, err, "not writable")
    assert os.listdir(ro) == []


@pytest.mark.parametrize("way", ["native", "numpy"])
def test_nan_and_inf_are_counted_where_the_transpose_kernel_checks_them(tmp_path, monkeypatch, way):
    """With the kernel, an input whose transpose it copies is checked in that copy, not in a pass of its own;
    the counts are the same either way (tiles small enough that the tiny model's tensors take the kernel)."""
    from ckptmap import array_copy
    from ckptmap import convert as convert_module

    monkeypatch.setattr(array_copy, "TILE_BYTES", 4)
    if way == "numpy":
        monkeypatch.setenv("CKPTMAP_NO_NATIVE", "1")
    elif not array_copy.native_enabled():
        pytest.fail("ckptmap.native.transpose was not built")
    counted = []
    real_count = convert_module.count_nonfinite
    monkeypatch.setattr(convert_module, "count_nonfinite", lambda a: counted.append(a.size) or real_count(a))
    arrays = hf_arrays()
    q, k = "model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    arrays[q][0, :3] = np.nan
    arrays[q][5, 7] = -np.inf
    arrays[k][1, 1] = np.inf
    src = str(tmp_path / "hf.safetensors")
    cio.write_all(src, arrays)
    report = convert(sealed_llama(), src, str(tmp_path / "mt.npz"), progress=False)
    assert report.nonfinite == {q: (3, 1), k: (0, 1)}
    got, want = cio.read_all(str(tmp_path / "mt.npz")), expected_output(arrays=arrays)
    for name in want:
        assert got[name].tobytes() == np.ascontiguousarray(want[name]).tobytes(), name
    if way == "native":  # the clean transposed inputs were checked in their copies: fewer separate counts
        assert len(counted) < len(arrays) - 4, (len(counted), len(arrays))
    else:
        assert len(counted) == len(arrays)
