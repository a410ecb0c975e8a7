"""`python -m ckptmap.maxtext.worker`: one MaxText model served over JSON lines on stdin / stdout.

The first request is `build` (model_name, overrides); then `describe`, `init`, `forward`, `reference_convert`
and `shutdown` (see ckptmap.maxtext.protocol). The protocol owns the real stdout: everything else MaxText, JAX or
absl print goes to stderr, which the client sends to a log file. No pickled objects cross the boundary.
"""

from __future__ import annotations

import os
import sys
import time
import traceback


def _claim_stdout():
    """Keep the real stdout for protocol lines and point fd 1 (and sys.stdout) at stderr for everyone else."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return protocol_out


def handle(model, request: dict):
    """Answer one request against a built model; returns (result, stop)."""
    from ckptmap.maxtext import protocol

    op = request.get("op")
    if op == "describe":
        return model.describe(), False
    if op == "init":
        arrays = model.init(int(request.get("seed", 0)))
        return {"arrays": protocol.save_arrays(arrays, request["out_dir"]), "timings": dict(model.timings)}, False
    if op == "forward":
        params = protocol.load_arrays(request["params"], request["in_dir"])
        tokens = protocol.load_array(request["tokens"])
        logits, activations, notes = model.forward(params, tokens)
        arrays = {"logits": logits, **{f"act:{k}": v for k, v in activations.items()}}
        manifest = protocol.save_arrays(arrays, request["out_dir"])
        return {"arrays": manifest, "notes": notes, "timings": dict(model.timings)}, False
    if op == "reference_convert":
        hf = protocol.load_arrays(request["hf"], request["in_dir"])
        arrays = model.reference_convert(hf, request["hf_config"])
        return {"arrays": protocol.save_arrays(arrays, request["out_dir"])}, False
    if op == "shutdown":
        return {}, True
    raise ValueError(f"unknown worker op {op!r}")


def main() -> int:
    out = _claim_stdout()
    from ckptmap.maxtext import protocol

    model = None
    for line in sys.stdin:
        if not line.strip():
            continue
        stop = False
        try:
            request = protocol.decode(line)
            if request.get("op") == "build":
                t0 = time.perf_counter()
                from ckptmap.maxtext.backend import MaxTextModel

                model = MaxTextModel(request["model_name"], list(request.get("overrides", [])))
                model.timings["build_s"] = time.perf_counter() - t0
                result = {"timings": dict(model.timings)}
            elif model is None and request.get("op") != "shutdown":
                raise RuntimeError("the worker has no model yet: send 'build' first")
            else:
                result, stop = handle(model, request)
            protocol.send(out, {"ok": True, "result": result})
        except Exception as e:  # noqa: BLE001 - every failure goes back to the client as one message
            traceback.print_exc(file=sys.stderr)
            protocol.send(out, {"ok": False, "error": f"{e}" or repr(e), "type": type(e).__name__})
        if stop:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
