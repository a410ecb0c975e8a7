"""How fast TensorStore writes the chunks of a scanned llama-3.1-8B Orbax checkpoint in each storage form.

The same bytes (16.06 GB of bf16-sized chunks from memory, chunks one layer thick as ckptmap's Orbax sink writes
them), timed until every byte is on the disk (a final sync), in each form:

- `ocdbt4` / `ocdbt1`: zarr arrays inside 4 or 1 OCDBT databases (ckptmap's `--orbax-ocdbt`; Orbax's default);
- `zarrdir`: a zarr directory of chunk files per array (ckptmap's default Orbax output);
- `raw`: the same chunks as plain files written with `write`, 4 threads (the disk's own speed for these writes).

    .venv/bin/python -m ckptmap.benchmarks.orbax_write_forms --dir /work/tmp-forms
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import time

import numpy as np

FORMS = ("raw", "ocdbt4", "zarrdir", "ocdbt1")
IN_FLIGHT = 8  # chunk writes TensorStore has at once


def shapes(layers: int = 32) -> tuple[dict, dict]:
    """(stacked arrays [.., layers, ..] written one layer at a time, whole arrays): llama-3.1-8B, MaxText names."""
    stacked = {"q": (4096, layers, 32, 128), "k": (4096, layers, 8, 128), "v": (4096, layers, 8, 128),
               "o": (32, layers, 128, 4096), "wi0": (4096, layers, 14336), "wi1": (4096, layers, 14336),
               "wo": (14336, layers, 4096)}
    return stacked, {"emb": (128256, 4096), "logits": (4096, 128256)}


def _chunk(shape: tuple) -> tuple:
    return shape[:1] + (1,) + shape[2:]


def _spec(form: str, out: str, name: str, shape: tuple, chunk: tuple, k: int) -> dict:
    if form.startswith("ocdbt"):
        kvstore = {"driver": "ocdbt", "base": f"file://{out}/ocdbt.process_{k % int(form[5:])}", "path": name + "/"}
    else:
        kvstore = {"driver": "file", "path": f"{out}/{name}/"}
    return {"driver": "zarr", "kvstore": kvstore, "create": True, "delete_existing": True,
            "metadata": {"shape": list(shape), "chunks": list(chunk), "dtype": "<u2", "compressor": None}}


def write(form: str, out: str, layers: int = 32) -> dict:
    """Write every chunk in `form` under `out`; returns seconds (write, sync) and bytes."""
    import tensorstore as ts

    stacked, whole = shapes(layers)
    rng = np.random.default_rng(0)
    data = {s: rng.integers(0, 65535, size=s, dtype=np.uint16)
            for s in {*map(_chunk, stacked.values()), *whole.values()}}
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    os.sync()
    t0 = time.perf_counter()
    if form == "raw":
        def put(path, arr):
            with open(path, "wb") as f:
                f.write(memoryview(arr).cast("B"))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(put, f"{out}/{n}", data[s]) for n, s in whole.items()]
            futs += [pool.submit(put, f"{out}/{n}.{layer}", data[_chunk(s)])
                     for layer in range(layers) for n, s in stacked.items()]
            for f in futs:
                f.result()
    else:
        context = ts.Context({"file_io_sync": False, "file_io_concurrency": {"limit": 128}})

        async def run():
            stores = {}
            for k, (n, s) in enumerate([*stacked.items(), *whole.items()]):
                chunk = _chunk(s) if n in stacked else s
                stores[n] = await ts.open(_spec(form, out, n, s, chunk, k), context=context)
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def put(n, index, arr):
                async with gate:
                    await stores[n][index].write(arr)
            jobs = [put(n, (), data[s]) for n, s in whole.items()]
            jobs += [put(n, (slice(None), slice(layer, layer + 1)), data[_chunk(s)])
                     for layer in range(layers) for n, s in stacked.items()]
            await asyncio.gather(*jobs)
        asyncio.run(run())
    t1 = time.perf_counter()
    os.sync()
    t2 = time.perf_counter()
    files = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs]
    result = {"form": form, "write_s": round(t1 - t0, 1), "sync_s": round(t2 - t1, 1), "total_s": round(t2 - t0, 1),
              "bytes": sum(os.path.getsize(f) for f in files), "files": len(files)}
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/work/tmp-orbax-forms", help="work folder on the disk to measure")
    ap.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args(argv)
    print("| form | write s | sync s | total s | MB/s | files |\n|---|---|---|---|---|---|")
    for form in args.forms:
        r = write(form, os.path.join(args.dir, form), args.layers)
        print(f"| {r['form']} | {r['write_s']} | {r['sync_s']} | {r['total_s']} | "
              f"{r['bytes'] / r['total_s'] / 1e6:.0f} | {r['files']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
