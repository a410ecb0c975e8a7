"""Issue 15, integrity of inputs and mappings: every reader checks a file before trusting it, a mapping checks
itself against the shapes it was solved for, and each failure is exit 2 with one line naming the file and tensor,
with nothing written.

Also the shared helpers of the fault and fuzz suites (a sealed tiny llama mapping, its HF input, an in-process
CLI runner that reports any escaping exception as a traceback)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import traceback
import zipfile

import numpy as np
import pytest

from ckptmap import checkpoint_io as cio
from ckptmap import mapping_record
from ckptmap.apply import apply_to_dict
from ckptmap.cli import main as cli_main
from ckptmap.errors import CkptmapError, TreeError
from ckptmap.mapping import Mapping
from ckptmap.trees import read_tree
from ckptmap.trees.model import ParamInfo, ParamTree
from ckptmap.trees.safetensors_tree import dump_header, read_header_checked
from test_convert_cases import fixture, llama_mapping, seeded

QUERY = "params-decoder-layers-self_attention-query-kernel"


# ----------------------------------------------------------------------------------------------------- helpers

def _tree(shapes: dict[str, tuple]) -> ParamTree:
    return ParamTree.from_items([ParamInfo(n, tuple(s), "float32") for n, s in shapes.items()])


def sealed_llama(scanned: bool = True) -> Mapping:
    """The tiny llama3.1 HF -> MaxText mapping as `ckptmap solve` writes it: trees recorded, sealed."""
    _, hf_shapes, mt_shapes = fixture("llama3.1")
    mapping = llama_mapping(scanned)
    mapping_record.record_trees(mapping, _tree(hf_shapes), _tree(mt_shapes[int(scanned)]))
    mapping_record.seal(mapping)
    return mapping


def hf_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    return seeded(fixture("llama3.1")[1], seed)


def expected_output(scanned: bool = True, arrays: dict | None = None) -> dict[str, np.ndarray]:
    return apply_to_dict(llama_mapping(scanned), arrays if arrays is not None else hf_arrays())


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`ckptmap ARGV` in this process: (exit code, stdout, stderr). An exception escaping main() (what a user
    would see as a traceback) comes back as exit code -1 with the traceback in stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
        except BaseException:
            return -1, out.getvalue(), err.getvalue() + traceback.format_exc()
    return code, out.getvalue(), err.getvalue()


def leftovers(directory: str) -> list[str]:
    """Temp files a writer left in `directory`."""
    return sorted(n for n in os.listdir(directory) if n.startswith(cio.TEMP_PREFIX))


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def _convert_argv(mapping_path, src, out, *extra) -> list[str]:
    return ["convert", "--mapping", str(mapping_path), "--input", str(src), "--output", str(out), "--no-progress",
            *map(str, extra)]


@pytest.fixture
def llama(tmp_path):
    mapping_path = tmp_path / "mapping.json"
    sealed_llama().save(str(mapping_path))
    return mapping_path


def _raw_safetensors(path, entries: dict, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(dump_header(entries) + data)
    return str(path)


# ----------------------------------------------------------------------------------------------------- the issue

def test_truncated_shard_is_exit_2_naming_the_shard_and_tensor_and_writes_nothing(tmp_path, llama):
    """Issue case 1: a download stopped halfway through a shard."""
    src = tmp_path / "hf"
    cio.write_all(str(src), hf_arrays(), max_shard_bytes=40_000)
    shards = sorted(src.glob("*.safetensors"))
    assert len(shards) > 2
    shard = shards[1]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    out = tmp_path / "mt.npz"
    code, stdout, err = run_cli(_convert_argv(llama, src, out))
    assert_one_line_error(code, err, str(shard), "parameter '", "truncated")
    assert not out.exists() and leftovers(str(tmp_path)) == []

    # `trees` says so too, on the directory and on the file: never a whole model
    for spec in (str(src), str(shard)):
        code, stdout, err = run_cli(["trees", spec])
        assert_one_line_error(code, err, str(shard), "parameter '", "truncated")
        assert stdout == ""


def test_edited_reshape_is_exit_2_naming_the_tensor_and_writes_nothing(tmp_path, llama):
    """Issue case 2: one reshape out_shape edited by hand ([64, 4, 16] -> [64, 2, 32] in the tiny model)."""
    src = tmp_path / "hf.safetensors"
    cio.write_all(str(src), hf_arrays())
    doc = json.loads(llama.read_text())
    rule = next(r for r in doc["rules"] if r["targets"][0].get("key") == QUERY)
    assert rule["chain"]["ops"][1]["out_shape"] == [64, 4, 16]
    rule["chain"]["ops"][1]["out_shape"] = [64, 2, 32]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    out = tmp_path / "mt.npz"

    code, _, err = run_cli(_convert_argv(edited, src, out))
    assert_one_line_error(code, err, str(edited), f"parameter {QUERY!r}", "edited", "[64, 2, 2, 32]",
                          "[64, 2, 4, 16]")
    assert not out.exists()

    code, _, err = run_cli(_convert_argv(edited, src, out, "--allow-edited"))
    assert_one_line_error(code, err, str(out), f"parameter {QUERY!r}", "[64, 2, 2, 32]", "[64, 2, 4, 16]")
    assert not out.exists() and leftovers(str(tmp_path)) == []


def test_a_mapping_for_another_model_fails_before_reading(tmp_path, llama):
    arrays = hf_arrays()
    arrays["model.layers.1.mlp.up_proj.weight"] = np.zeros((96, 64), np.float32)  # another model's size
    src = tmp_path / "other.safetensors"
    cio.write_all(str(src), arrays)
    out = tmp_path / "mt.npz"
    code, _, err = run_cli(_convert_argv(llama, src, out))
    assert_one_line_error(code, err, str(src), "parameter 'model.layers.1.mlp.up_proj.weight'", "[96, 64]")
    assert not out.exists()


def test_the_sealed_mapping_converts_and_reports_nothing_wrong(tmp_path, llama):
    src = tmp_path / "hf.safetensors"
    cio.write_all(str(src), hf_arrays())
    out = tmp_path / "mt.npz"
    code, stdout, err = run_cli(_convert_argv(llama, src, out))
    assert code == 0, err
    got = cio.read_all(str(out))
    want = expected_output()
    assert sorted(got) == sorted(want)
    for n in want:
        np.testing.assert_array_equal(got[n], want[n])
    assert "warning" not in stdout and leftovers(str(tmp_path)) == []


def test_solved_mappings_pass_their_own_shape_check(tmp_path):
    """No false alarm: a mapping `ckptmap solve` wrote agrees with its record, both directions."""
    d = os.path.join(os.path.dirname(__file__), "data", "maxtext_tiny", "mixtral")
    out = tmp_path / "m.json"
    code, _, err = run_cli(["solve", "--source", f"{d}/hf_params.json", "--target", f"{d}/maxtext_params.scan1.json",
                            "--out", str(out), "--code", "off", "--quiet"])
    assert code == 0, err
    mapping = Mapping.load(str(out))
    assert mapping_record.recorded_shapes(mapping, "target")
    assert mapping_record.shape_disagreement(mapping) is None
    assert mapping_record.shape_disagreement(mapping.reversed()) is None


# ----------------------------------------------------------------------------------------------------- safetensors

F32_2x2 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@pytest.mark.parametrize("case,entries,data,message", [
    ("overlap", {"a": F32_2x2, "b": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}}, bytes(24),
     "overlap those of 'a'"),
    ("dtype", {"a": {"dtype": "F33", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16),
     "unknown safetensors dtype 'F33'"),
    ("size", {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, bytes(16),
     r"does not hold F32 \[2, 3\]"),
    ("short", {"a": F32_2x2, "b": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}}, bytes(20),
     "the file is truncated"),
    ("offsets", {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}}, bytes(16),
     "data_offsets must be two integers"),
    ("negative", {"a": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 16]}}, bytes(16),
     "shape must be a list of non-negative integers"),
    ("entry", {"a": [1, 2]}, bytes(16), "not an object"),
    ("missing", {"a": {"dtype": "F32", "shape": [2, 2]}}, bytes(16), "no 'data_offsets'"),
])
def test_a_bad_safetensors_header_is_named_by_every_reader(tmp_path, case, entries, data, message):
    path = _raw_safetensors(tmp_path / f"{case}.safetensors", entries, data)
    key = "'b'" if case in ("overlap", "short") else "'a'"
    with pytest.raises(TreeError, match=message) as e:
        read_tree(path)
    assert e.value.file == path and f"parameter {key}" in e.value.one_line()
    with pytest.raises(cio.CheckpointIOError, match=message) as e:
        cio.open_reader(path)
    assert e.value.file == path and f"parameter {key}" in e.value.one_line()


def test_duplicated_names_in_a_header_are_refused(tmp_path):
    raw = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(cio.CheckpointIOError, match="duplicated") as e:
        cio.open_reader(str(path))
    assert e.value.key == "a"


def test_one_parser_for_trees_and_readers(tmp_path):
    """Both the trees reader and the checkpoint readers go through read_header_checked: same names, shapes."""
    path = str(tmp_path / "ok.safetensors")
    cio.write_all(path, hf_arrays())
    tree = read_tree(path)
    with cio.open_reader(path) as r:
        assert {n: r.shape(n) for n in r.names()} == tree.shapes()
    assert set(read_header_checked(path).entries) == set(tree.shapes())


def _sharded(tmp_path) -> str:
    src = str(tmp_path / "hf")
    cio.write_all(src, hf_arrays(), max_shard_bytes=40_000)
    return src


def _shared_shard_name(wm: dict) -> str:
    """A name whose shard holds other tensors too (so the shard stays in the index once it is dropped)."""
    name = "model.layers.0.mlp.down_proj.weight"
    assert list(wm.values()).count(wm[name]) > 1
    return name


def _edit_index(src: str, fn) -> None:
    path = os.path.join(src, cio.INDEX_NAME)
    doc = json.load(open(path))
    fn(doc["weight_map"])
    json.dump(doc, open(path, "w"))


@pytest.mark.parametrize("edit,message,key", [
    (lambda wm: wm.update({"ghost.weight": sorted(set(wm.values()))[0]}), "whose header does not hold it",
     "ghost.weight"),
    (lambda wm: wm.update({"lm_head.weight": "model-00009-of-00099.safetensors"}),
     "the shard named by the index is missing", "lm_head.weight"),
    (lambda wm: wm.pop(_shared_shard_name(wm)), "is not mapped to it by the index", "model.layers.0.mlp.down_proj.weight"),
    (lambda wm: wm.update({"lm_head.weight": "../hf.safetensors"}), "not a file name beside the index",
     "lm_head.weight"),
])
def test_the_index_is_checked_against_its_shards(tmp_path, edit, message, key):
    src = _sharded(tmp_path)
    _edit_index(src, edit)
    with pytest.raises(cio.CheckpointIOError, match=message) as e:
        cio.open_reader(src)
    assert e.value.key == key
    with pytest.raises(TreeError, match=message):
        read_tree(src)


# ----------------------------------------------------------------------------------------------------- npz

def _npz(tmp_path) -> str:
    path = str(tmp_path / "hf.npz")
    cio.write_all(path, hf_arrays())
    return path


def test_a_truncated_npz_is_named(tmp_path):
    path = _npz(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(cio.CheckpointIOError, match="not an .npz archive|truncated"):
        cio.open_reader(path)


def test_damaged_npz_data_is_caught_by_its_crc(tmp_path):
    path = _npz(tmp_path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("lm_head.weight.npy")
    data = bytearray(open(path, "rb").read())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 200] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with cio.open_reader(path) as r:
        with pytest.raises(cio.CheckpointIOError, match="CRC") as e:
            r.read("lm_head.weight")
    assert e.value.key == "lm_head.weight"


def test_an_npz_member_with_objects_is_refused(tmp_path):
    path = str(tmp_path / "obj.npz")
    np.savez(path, w=np.array([{"x": 1}], dtype=object))
    with pytest.raises(cio.CheckpointIOError, match="Python objects") as e:
        cio.open_reader(path)
    assert e.value.key == "w"


def test_an_npz_member_shorter_than_its_header_says(tmp_path):
    path = str(tmp_path / "short.npz")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((4, 4), np.float32))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", buf.getvalue()[:-16])
    with pytest.raises(cio.CheckpointIOError, match="header promises 64") as e:
        cio.open_reader(path)
    assert e.value.key == "w"


def test_errors_are_ckptmap_errors():
    assert issubclass(cio.CheckpointIOError, CkptmapError)
