"""Remote storage (ckptmap.storage): checkpoints read and written at fsspec URLs, tested on fsspec's in-process
`memory://` filesystem and on `file://` URLs (no network here; gs:// and s3:// go through the same fsspec calls,
by gcsfs and s3fs)."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest

from ckptmap import checkpoint_io as cio
from ckptmap import storage
from ckptmap.cli import main as cli_main
from test_convert_cases import fixture, llama_mapping, seeded


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    root = f"/ckptmap-test-{id(fs)}-{np.random.default_rng().integers(1 << 30)}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _upload(fs, local: str, remote: str) -> None:
    fs.put(local.rstrip("/") + "/", remote.rstrip("/") + "/", recursive=True)


def test_atomic_write_shows_the_object_only_when_complete(memfs):
    fs, root = memfs
    url = f"memory://{root}/a.bin"
    with storage.atomic_write(url) as f:
        f.write(b"abc")
        assert not fs.exists(f"{root}/a.bin")
    assert fs.cat_file(f"{root}/a.bin") == b"abc"
    with pytest.raises(RuntimeError):
        with storage.atomic_write(f"memory://{root}/b.bin") as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert storage.listdir(f"memory://{root}") == ["a.bin"]  # no b.bin, no temp object left
    assert storage.read_bytes(url, 1, 1) == b"b"


def test_upload_tree_moves_the_commit_markers_last_and_refuses_to_overwrite(memfs, tmp_path):
    fs, root = memfs
    moved = []
    real_mv = fs.mv
    fs.mv = lambda a, b, **kw: (moved.append(b.rsplit("/", 1)[-1]), real_mv(a, b, **kw))[1]
    try:
        cio.write_all(str(tmp_path / "d"), {f"t{i}": np.full(10, i, np.float32) for i in range(3)},
                      max_shard_bytes=40)
        storage.upload_tree(str(tmp_path / "d"), f"memory://{root}/d")
    finally:
        fs.mv = real_mv
    assert moved[-1] == cio.INDEX_NAME and len(moved) == 4
    with pytest.raises(storage.StorageError, match="already exists"):
        storage.upload_tree(str(tmp_path / "d"), f"memory://{root}/d")


def test_trees_reads_remote_safetensors_headers(memfs, tmp_path, capsys):
    fs, root = memfs
    _, hf_shapes, _ = fixture("llama3.1")
    cio.write_all(str(tmp_path / "hf"), seeded(hf_shapes), max_shard_bytes=20_000)
    _upload(fs, str(tmp_path / "hf"), f"{root}/hf")
    assert cli_main(["trees", f"memory://{root}/hf"]) == 0
    out = capsys.readouterr().out
    assert f"{len(hf_shapes)} tensors" in out and "memory://" in out


@pytest.mark.parametrize("out_form", ["sharded", "orbax"])
def test_convert_from_and_to_memory_urls_is_bit_exact(memfs, tmp_path, out_form, capsys):
    fs, root = memfs
    _, hf_shapes, _ = fixture("llama3.1")
    hf = seeded(hf_shapes)
    cio.write_all(str(tmp_path / "hf"), hf, max_shard_bytes=20_000)
    _upload(fs, str(tmp_path / "hf"), f"{root}/hf")
    llama_mapping(True).save(str(tmp_path / "m.json"))
    out = f"memory://{root}/mt" if out_form == "sharded" else f"orbax:memory://{root}/mt.orbax"
    base = ["convert", "--mapping", str(tmp_path / "m.json"), "--quiet"]
    assert cli_main(base[:-1] + ["--no-progress", "--input", f"memory://{root}/hf", "--output", out]) == 0
    assert f"to {out} in" in capsys.readouterr().out
    assert not any(".tmp-" in p for p in fs.find(root))
    with cio.open_reader(out) as r:
        assert len(r.names()) == 12
    # and back: remote in (the staged Orbax, or ranged safetensors reads), a local file:// out
    back = f"file://{tmp_path}/back.npz"
    assert cli_main(base + ["--input", out, "--output", back, "--reverse"]) == 0
    got = cio.read_all(str(tmp_path / "back.npz"))
    assert sorted(got) == sorted(hf) and all(got[k].tobytes() == hf[k].tobytes() for k in hf)
    assert cli_main(base + ["--input", f"memory://{root}/hf", "--output", out]) == 2  # exists, no --force
    assert cli_main(base + ["--input", f"memory://{root}/hf", "--output", out, "--force"]) == 0


def test_a_missing_remote_input_and_an_unknown_scheme_are_one_line_errors(memfs, tmp_path, capsys):
    fs, root = memfs
    llama_mapping(True).save(str(tmp_path / "m.json"))
    assert cli_main(["convert", "--mapping", str(tmp_path / "m.json"), "--input", f"memory://{root}/none",
                     "--output", str(tmp_path / "o.npz")]) == 2
    assert f"memory://{root}/none" in capsys.readouterr().err
    with pytest.raises(storage.StorageError, match="nosuchscheme"):
        storage.exists("nosuchscheme://bucket/x")
