"""Convert through remote storage against the same conversion on local disk (ckptmap/benchmarks/RESULTS.md, "Remote storage").

    python -m ckptmap.benchmarks.bench_storage --mapping M.json --input HF_DIR [--workers N]

After one untimed warm-up run, the same HF safetensors directory is converted to MaxText's Orbax layout three ways, in this process: local -> local;
`memory://` -> local (the input read with one ranged read per tensor, as from gs:// or s3://); `memory://` ->
`memory://` (the output staged locally and uploaded). fsspec's in-process memory filesystem stands in for an object
store (no network here): the numbers are ckptmap's own overhead (ranged reads, staging, upload), not a network's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from ckptmap import storage
from ckptmap.convert import convert
from ckptmap.mapping import Mapping


def run(mapping_path: str, hf_dir: str, workers: int | None = None) -> list[dict]:
    import fsspec

    mapping = Mapping.load(mapping_path)
    fs = fsspec.filesystem("memory")
    root = f"/bench-storage-{os.getpid()}"
    fs.put(hf_dir.rstrip("/") + "/", f"{root}/hf/", recursive=True)
    size = sum(os.path.getsize(os.path.join(hf_dir, f)) for f in os.listdir(hf_dir))
    options = {"progress": False} if workers is None else {"progress": False, "workers": workers}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ckptmap-bench-storage-") as d:
        # warm-up (imports, Orbax's first save, the page cache), untimed
        storage.convert_at(convert, mapping, hf_dir, f"orbax:{d}/warm.orbax", **options)
        cases = [("local -> local", hf_dir, f"orbax:{d}/a.orbax"),
                 ("memory:// -> local", f"memory://{root}/hf", f"orbax:{d}/b.orbax"),
                 ("memory:// -> memory://", f"memory://{root}/hf", f"orbax:memory://{root}/c.orbax")]
        for name, src, out in cases:
            t0 = time.perf_counter()
            storage.convert_at(convert, mapping, src, out, **options)
            rows.append({"case": name, "seconds": time.perf_counter() - t0, "bytes": size})
        shutil.rmtree(d, ignore_errors=True)
    fs.rm(root, recursive=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mapping", required=True)
    p.add_argument("--input", required=True, help="an HF safetensors directory")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args(argv)
    rows = run(args.mapping, args.input, args.workers)
    base = rows[0]["seconds"]
    print("| case | seconds | MB/s | x local |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']:.1f} | {r['bytes'] / 1e6 / r['seconds']:.0f} | "
              f"{r['seconds'] / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
