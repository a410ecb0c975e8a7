import os



def test_written_files_get_the_usual_mode(tmp_path):
    """Atomic writes go through mkstemp (0600); the renamed result has the mode a plain open() would give."""
    import os

    from ckptmap.mapping import write_json_atomic

    path = tmp_path / "m.json"
    write_json_atomic(str(path), {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


# ------------------------------------------------------------------ every convert option reaches the conversion

def _tiny_llama(tmp_path):
    from ckptmap import checkpoint_io as cio
    from test_convert_cases import fixture, llama_mapping, seeded

    _, hf_shapes, _ = fixture("llama3.1")
    hf = seeded(hf_shapes)
    cio.write_all(str(tmp_path / "hf.safetensors"), hf)
    mapping = llama_mapping(True)
    mapping.save(str(tmp_path / "m.json"))
    return hf, mapping


def _convert_cli(tmp_path, capsys, out: str, *extra: str) -> str:
    from ckptmap.cli import main

    capsys.readouterr()
    rc = main(["convert", "--mapping", str(tmp_path / "m.json"), "--input", str(tmp_path / "hf.safetensors"),
               "--output", out, "--no-progress", "--allow-edited", *extra])
    assert rc == 0
    return capsys.readouterr().out


def test_cli_workers_and_max_memory_reach_the_conversion(tmp_path, capsys):
    """`--workers` and `--max-memory` were once parsed and then dropped: the report says what ran."""
    _tiny_llama(tmp_path)
    out = _convert_cli(tmp_path, capsys, str(tmp_path / "a.safetensors"), "--workers", "3", "--max-memory", "1MB")
    assert "(3 worker(s))" in out
    out = _convert_cli(tmp_path, capsys, str(tmp_path / "b.safetensors"), "--workers", "1")
    assert "(1 worker(s))" in out
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_cli_orbax_storage_options_change_the_layout_not_the_arrays(tmp_path, capsys):
    """Default: a Zarr v3 directory per array (MaxText's own conversion writes v3 too), uncompressed;
    --orbax-ocdbt: OCDBT databases; --orbax-compression: zstd chunks. Each reads back to the same arrays."""
    import json

    import numpy as np

    from ckptmap import checkpoint_io as cio

    _tiny_llama(tmp_path)
    layouts = {"plain": (), "ocdbt": ("--orbax-ocdbt",), "zstd": ("--orbax-compression",)}
    arrays = {}
    for label, extra in layouts.items():
        dst = tmp_path / f"{label}.orbax"
        _convert_cli(tmp_path, capsys, f"orbax:{dst}", *extra)
        items = dst / "0" / "items"
        files = {os.path.relpath(os.path.join(r, f), items) for r, _, fs in os.walk(items) for f in fs}
        has_ocdbt = any(f.endswith("manifest.ocdbt") for f in files)
        assert has_ocdbt == (label == "ocdbt"), sorted(files)[:10]
        if label != "ocdbt":
            arrays_meta = [json.loads((items / f).read_text()) for f in files if f.endswith("zarr.json")]
            assert arrays_meta and all(m["zarr_format"] == 3 for m in arrays_meta)
            assert all(("zstd" in json.dumps(m["codecs"])) == (label == "zstd") for m in arrays_meta)
        with cio.open_reader(f"orbax:{dst}") as r:
            arrays[label] = {n: np.array(r.read(n)) for n in r.names()}
    assert sorted(arrays["plain"]) == sorted(arrays["ocdbt"]) == sorted(arrays["zstd"])
    for name, a in arrays["plain"].items():
        assert a.tobytes() == arrays["ocdbt"][name].tobytes() == arrays["zstd"][name].tobytes(), name


def test_convert_processes_keep_freed_memory_where_glibc_allows():
    """`ckptmap convert` sets glibc's allocator to reuse freed blocks (ckptmap.pipeline.heap); opting out works."""
    import subprocess
    import sys

    code = "from ckptmap.pipeline.heap import keep_freed_memory; print(keep_freed_memory())"
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert got == ("True" if glibc else "False")
    env = {**os.environ, "CKPTMAP_SYSTEM_MALLOC": "1"}
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert off.stdout.strip() == "False"


def test_ray_workers_get_the_same_allocator_settings_unless_opted_out(monkeypatch):
    from ckptmap.pipeline.heap import worker_env

    monkeypatch.delenv("CKPTMAP_SYSTEM_MALLOC", raising=False)
    assert worker_env() == {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TOP_PAD_": str(256 << 20),
                            "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
    monkeypatch.setenv("CKPTMAP_SYSTEM_MALLOC", "1")
    assert worker_env() == {}
