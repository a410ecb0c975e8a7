"""Issue 15, the fuzz suite: hypothesis-driven byte corruption of safetensors (one file and a sharded directory
with its index), npz, Orbax metadata (`_METADATA`), tree JSON and mapping JSON, plus randomised edits of a valid
mapping, run through the CLI entry (`ckptmap.cli.main`, in process).

Every case ends in exit 0 with the right output, or exit 2 with one line on stderr. Never a traceback (any
exception escaping main() fails the case), never a file at the output path after an error, never a temp file left,
never an output tensor of another shape than the mapping was solved for. Deterministic (derandomize=True).
`STATS` counts the cases by kind and outcome (ckptmap/benchmarks/RESULTS.md, "Reliability (issue 15)")."""

from __future__ import annotations

import collections
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptmap import checkpoint_io as cio
from ckptmap import mapping_record
from ckptmap.apply import apply_to_dict
from test_convert_cases import fixture, llama_mapping
from test_integrity import expected_output, hf_arrays, leftovers, run_cli, sealed_llama

STATS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


# ----------------------------------------------------------------------------------------------------- corruption

def _byte_ops(size: int, hot: tuple[int, int]):
    lo, hi = hot
    pos, hot_pos = st.integers(0, max(size - 1, 0)), st.integers(lo, max(hi - 1, lo))
    return st.lists(st.one_of(
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("xor"), hot_pos, st.integers(1, 255)),
        st.tuples(st.just("xor"), pos, st.integers(1, 255)),
        st.tuples(st.just("digit"), st.integers(0, 10_000), st.sampled_from("0123456789-")),
        st.tuples(st.just("insert"), hot_pos, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), hot_pos, st.integers(1, 16)),
    ), min_size=1, max_size=3)


def corrupt(data: bytes, ops, hot: tuple[int, int]) -> bytes:
    b = bytearray(data)
    for op in ops:
        if not b:
            break
        kind = op[0]
        if kind == "truncate":
            del b[op[1] % len(b):]
        elif kind == "xor":
            b[op[1] % len(b)] ^= op[2]
        elif kind == "digit":  # a number in the hot (JSON) region changed: still valid JSON, other meaning
            digits = [i for i in range(hot[0], min(hot[1], len(b))) if 48 <= b[i] <= 57]
            if digits:
                b[digits[op[1] % len(digits)]] = ord(op[2])
        elif kind == "insert":
            i = op[1] % (len(b) + 1)
            b[i:i] = op[2]
        elif kind == "delete":
            i = op[1] % len(b)
            del b[i:i + op[2]]
    return bytes(b)


# ----------------------------------------------------------------------------------------------------- oracle

def check(kind: str, argv: list[str], out: str | None, want=None) -> int:
    """Run one case and check its outcome (see the module doc). `want`: a callable giving the right output
    (name -> array) when the case succeeds, or None to check shapes only."""
    if out is not None:
        _clear(out)  # a case that failed an assertion (hypothesis then shrinks it) may have left its output
    code, stdout, err = run_cli(argv)
    STATS[kind]["cases"] += 1
    if code == -1:
        STATS[kind]["tracebacks"] += 1
        pytest.fail(f"{kind}: traceback for {argv}:\n{err}")
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:
        STATS[kind]["exit 2"] += 1
        assert len(lines) == 1 and ": error: " in lines[0], err
        if out is not None and os.path.lexists(out):
            STATS[kind]["partial outputs"] += 1
            pytest.fail(f"{kind}: a failed run left {out}")
    else:
        assert code == 0, (code, err)
        STATS[kind]["exit 0"] += 1
        assert all(": warning: " in line for line in lines), err
        if out is not None:
            got = cio.read_all(out)
            shapes = _recorded_target_shapes()
            wrong = [n for n, a in got.items() if n in shapes and a.shape != shapes[n]]
            if wrong or set(got) - set(shapes):
                STATS[kind]["wrong-shaped outputs"] += 1
                pytest.fail(f"{kind}: output tensors of the wrong shape or name: {wrong or set(got) - set(shapes)}")
            if want is not None:
                expected = want()
                assert sorted(got) == sorted(expected)
                for n, a in expected.items():
                    assert got[n].tobytes() == np.ascontiguousarray(a).tobytes(), n
    if out is not None:
        assert leftovers(os.path.dirname(out)) == []
        _clear(out)
    return code


def _clear(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


_SHAPES: dict = {}


def _recorded_target_shapes() -> dict:
    if not _SHAPES:
        _SHAPES.update({n: s for n, (s, _) in mapping_record.recorded_shapes(sealed_llama(), "target").items()})
        _SHAPES.update({n: s for n, (s, _) in mapping_record.recorded_shapes(sealed_llama(), "source").items()})
    return _SHAPES


def _converted_from(path: str):
    """The right output of a conversion that succeeded on a (damaged) input: the mapping applied to what a fresh
    reader reads from it."""
    def want():
        with cio.open_reader(path) as r:
            return apply_to_dict(llama_mapping(True), {n: np.array(r.read(n)) for n in r.names()})
    return want


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    sealed_llama().save(str(d / "mapping.json"))
    cio.write_all(str(d / "hf.safetensors"), hf_arrays())
    cio.write_all(str(d / "hf.npz"), hf_arrays())
    cio.write_all(str(d / "hf"), hf_arrays(), max_shard_bytes=120_000)
    return d


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def _convert(mapping, src, out, *extra) -> list[str]:
    return ["convert", "--mapping", str(mapping), "--input", str(src), "--output", str(out), "--no-progress",
            "--quiet", *extra]


# ----------------------------------------------------------------------------------------------------- safetensors

def _st_data() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        p = os.path.join(t, "x.safetensors")
        cio.write_all(p, hf_arrays())
        return open(p, "rb").read()


ST = _st_data()


@settings(FUZZ, max_examples=700)
@given(ops=_byte_ops(len(ST), (0, _header_end(ST) + 64)))
def test_fuzz_safetensors_file(base, ops):
    src = str(base / "case.safetensors")
    with open(src, "wb") as f:
        f.write(corrupt(ST, ops, (8, _header_end(ST))))
    out = str(base / "out.npz")
    if check("safetensors", _convert(base / "mapping.json", src, out), out, _converted_from(src)) == 0:
        STATS["safetensors"]["converted"] += 1
    check("safetensors (trees)", ["trees", src], None)


@settings(FUZZ, max_examples=250)
@given(which=st.integers(0, 100), ops=_byte_ops(2000, (0, 2000)), index=st.booleans())
def test_fuzz_sharded_safetensors(base, which, ops, index):
    src = base / "case_dir"
    _clear(str(src))
    shutil.copytree(base / "hf", src)
    files = sorted(os.listdir(src))
    name = cio.INDEX_NAME if index else [f for f in files if f.endswith(".safetensors")][which % (len(files) - 1)]
    data = (src / name).read_bytes()
    hot = (0, len(data)) if index else (8, _header_end(data))
    (src / name).write_bytes(corrupt(data, ops, hot))
    out = str(base / "out_dir.safetensors")
    check("sharded safetensors", _convert(base / "mapping.json", src, out), out, _converted_from(str(src)))
    check("sharded safetensors (trees)", ["trees", str(src)], None)


# ----------------------------------------------------------------------------------------------------- npz

def _npz_data() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        p = os.path.join(t, "x.npz")
        cio.write_all(p, hf_arrays())
        return open(p, "rb").read()


NPZ = _npz_data()
# the zip's central directory and the first members' headers are where damage is most telling
NPZ_HOT = (len(NPZ) - 2500, len(NPZ))


@settings(FUZZ, max_examples=500)
@given(ops=_byte_ops(len(NPZ), NPZ_HOT), head=st.booleans())
def test_fuzz_npz(base, ops, head):
    src = str(base / "case.npz")
    hot = (0, 400) if head else NPZ_HOT
    ops = [(o[0], o[1] % 400 if head and o[0] in ("insert", "delete") else o[1], *o[2:]) for o in ops]
    with open(src, "wb") as f:
        f.write(corrupt(NPZ, ops, hot))
    out = str(base / "out.safetensors")
    check("npz", _convert(base / "mapping.json", src, out), out, _converted_from(src))


# ----------------------------------------------------------------------------------------------------- tree JSON

TREE_JSON = json.dumps({n: list(s) for n, s in fixture("llama3.1")[1].items()}, indent=1).encode()


@settings(FUZZ, max_examples=300)
@given(ops=_byte_ops(len(TREE_JSON), (0, len(TREE_JSON))))
def test_fuzz_tree_json(base, ops):
    path = base / "tree.json"
    path.write_bytes(corrupt(TREE_JSON, ops, (0, len(TREE_JSON))))
    check("tree JSON", ["trees", str(path)], None)


# ----------------------------------------------------------------------------------------------------- mapping JSON

MAPPING_JSON = json.dumps(sealed_llama().to_json(), indent=1).encode()




@settings(FUZZ, max_examples=300)
@given(ops=_byte_ops(len(MAPPING_JSON), (0, len(MAPPING_JSON))), allow=st.booleans())
def test_fuzz_mapping_json(base, ops, allow):
    path = base / "case_mapping.json"
    path.write_bytes(corrupt(MAPPING_JSON, ops, (0, len(MAPPING_JSON))))
    out = str(base / "out.npz")
    extra = ["--allow-edited"] if allow else []
    check("mapping JSON", _convert(path, base / "hf.safetensors", out, *extra), out)


def _paths(x, p=()):
    yield p
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, p + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, p + (i,))


DOC = json.loads(MAPPING_JSON)
DOC_PATHS = [p for p in _paths(DOC) if p]
VALUES = st.one_of(st.integers(-3, 130), st.sampled_from([10**12, "", "x", None, True, 1.5, [], {}, [0], [1, 0],
                                                          [2, 1, 0], [64, 2, 32], [0, 0], [[0]],
                                                          {"op": "transpose", "perm": [1, 0]},
                                                          {"op": "chain", "ops": []},
                                                          "params-decoder-layers-self_attention-query-kernel",
                                                          "model.layers.0.mlp.up_proj.weight"]))


@st.composite
def mapping_edits(draw):
    doc = json.loads(MAPPING_JSON)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(DOC_PATHS))
        node = doc
        try:
            for k in path[:-1]:
                node = node[k]
            old = node[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(node, (dict, list)):
            continue
        how = draw(st.sampled_from(["replace", "nudge", "delete", "swap"]))
        if how == "delete" and isinstance(node, (dict, list)):
            del node[path[-1]]
        elif how == "nudge" and isinstance(old, int) and not isinstance(old, bool):
            node[path[-1]] = old + draw(st.sampled_from([-1, 1, 2]))
        elif how == "swap" and isinstance(node, list) and len(node) > 1:
            j = draw(st.integers(0, len(node) - 1))
            node[path[-1]], node[j] = node[j], node[path[-1]]
        else:
            node[path[-1]] = draw(VALUES)
    return doc


@settings(FUZZ, max_examples=500)
@given(doc=mapping_edits(), reverse=st.booleans())
def test_fuzz_mapping_edits(base, doc, reverse):
    path = base / "edited_mapping.json"
    path.write_text(json.dumps(doc))
    if reverse:
        src = base / "mt.npz"
        if not src.exists():
            cio.write_all(str(src), expected_output())
        out = str(base / "back.npz")
        check("mapping edits", _convert(path, src, out, "--allow-edited", "--reverse"), out)
    else:
        out = str(base / "out.npz")
        check("mapping edits", _convert(path, base / "hf.safetensors", out, "--allow-edited"), out)


# ----------------------------------------------------------------------------------------------------- Orbax

@pytest.fixture(scope="module")
def orbax_base(base):
    pytest.importorskip("orbax.checkpoint")
    ckpt = base / "mt.orbax"
    cio.write_all(str(ckpt), expected_output(), "orbax")
    item = ckpt / "0" / "items"
    return ckpt, (item / "_METADATA").read_bytes()


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_fuzz_orbax_metadata(base, orbax_base, data):
    ckpt, meta = orbax_base
    ops = data.draw(_byte_ops(len(meta), (0, len(meta))))
    case = base / "case.orbax"
    _clear(str(case))
    shutil.copytree(ckpt, case)
    (case / "0" / "items" / "_METADATA").write_bytes(corrupt(meta, ops, (0, len(meta))))
    out = str(base / "from_orbax.npz")
    want = lambda: apply_to_dict(llama_mapping(True).reversed(), expected_output())  # noqa: E731
    check("Orbax metadata", _convert(base / "mapping.json", f"orbax:{case}", out, "--reverse"), out, want)
    check("Orbax metadata (trees)", ["trees", f"orbax:{case}"], None)


# ----------------------------------------------------------------------------------------------------- subprocess

@pytest.mark.parametrize("case", ["truncated safetensors", "damaged npz", "damaged mapping", "damaged tree"])
def test_a_few_cases_through_the_console_script(base, tmp_path, case):
    """The same guarantees in a real process (the console script, its own interpreter): exit 2, one line."""
    import subprocess
    import sys

    ckptmap = os.path.join(os.path.dirname(sys.executable), "ckptmap")
    out = str(tmp_path / "out.npz")
    mapping, src = base / "mapping.json", tmp_path / "in.safetensors"
    if case == "truncated safetensors":
        src.write_bytes(ST[: len(ST) * 2 // 3])
    elif case == "damaged npz":
        src = tmp_path / "in.npz"
        src.write_bytes(corrupt(NPZ, [("xor", len(NPZ) - 100, 0x55)], NPZ_HOT))
    elif case == "damaged mapping":
        src.write_bytes(ST)
        mapping = tmp_path / "m.json"
        mapping.write_bytes(MAPPING_JSON.replace(b'"perm"', b'"prem"', 1))
    else:
        tree = tmp_path / "tree.json"
        tree.write_bytes(TREE_JSON.replace(b"[", b"[-", 1))
    argv = ["trees", str(tree)] if case == "damaged tree" else _convert(mapping, src, out)
    proc = subprocess.run([ckptmap, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    STATS["console script"]["cases"] += 1
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not os.path.lexists(out) and leftovers(str(tmp_path)) == []
    STATS["console script"]["exit 2"] += 1


def test_fuzz_summary(capsys):
    """Print the counts (run after the cases above: pytest keeps file order)."""
    with capsys.disabled():
        for kind, c in sorted(STATS.items()):
            print(f"\n{kind:32s} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())), end="")
        print()
    assert all(c["tracebacks"] == 0 and c["partial outputs"] == 0 and c["wrong-shaped outputs"] == 0
               for kind, c in STATS.items())
