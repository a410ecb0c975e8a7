"""`python -m ckptmap.maxtext.worker`: MaxText models served over JSON lines on stdin / stdout.

`build` (model_name, overrides) builds a model and answers its id; `describe`, `init`, `forward` (optional
`positions`: a .npy file of position ids),
`fused_layouts`, `reference_convert`, the checkpoint ops (`load_checkpoint`, `from_pretrained_logits`,
`save_checkpoint`, `checkpoint_forward`) and `drop` name that id in `model`; `shutdown` ends the process (see
ckptmap.maxtext.protocol). One process hosts many models so that JAX and MaxText are imported once. The protocol
owns the real stdout: everything MaxText, JAX or absl print goes to stderr, which the client sends to a log file.
No pickled objects cross the boundary.
"""

from __future__ import annotations

# lazy imports: MaxText, jax and flax exist only in the worker's venv (.venv-maxtext); the client side imports
# this package without them, and the worker's modules load each other only where they run.

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


def handle(model, request: dict) -> dict:
    """Answer one request against a built model."""
    from ckptmap.maxtext import protocol

    op = request.get("op")
    if op == "describe":
        return model.describe()
    if op == "init":
        arrays = model.init(int(request.get("seed", 0)))
        return {"arrays": protocol.save_arrays(arrays, request["out_dir"]), "timings": dict(model.timings)}
    if op == "forward":
        params = protocol.load_arrays(request["params"], request["in_dir"])
        tokens = protocol.load_array(request["tokens"])
        if request.get("positions"):  # optional: the position ids RoPE sees (absent: 0..seq-1)
            logits, activations, notes = model.forward(params, tokens, protocol.load_array(request["positions"]))
        else:
            logits, activations, notes = model.forward(params, tokens)
        arrays = {"logits": logits, **{f"act:{k}": v for k, v in activations.items()}}
        manifest = protocol.save_arrays(arrays, request["out_dir"])
        return {"arrays": manifest, "notes": notes, "timings": dict(model.timings)}
    if op == "fused_layouts":
        return {"layouts": model.fused_layouts(), "timings": dict(model.timings)}
    if op == "reference_convert":
        hf = protocol.load_arrays(request["hf"], request["in_dir"])
        arrays = model.reference_convert(hf, request["hf_config"])
        return {"arrays": protocol.save_arrays(arrays, request["out_dir"])}
    if op in ("load_checkpoint", "from_pretrained_logits", "save_checkpoint", "checkpoint_forward"):
        return _checkpoint_op(model, op, request)
    raise ValueError(f"unknown worker op {op!r}")


def _checkpoint_op(model, op: str, request: dict) -> dict:
    """MaxText's own checkpoint loaders and saver (ckptmap.maxtext.checkpoints) on a built model."""
    from ckptmap.maxtext import checkpoints, protocol

    if op == "load_checkpoint":
        arrays = checkpoints.load_with_training_loader(model, request["path"])
        return {"arrays": protocol.save_arrays(arrays, request["out_dir"])}
    if op == "from_pretrained_logits":
        logits = checkpoints.logits_with_from_pretrained(model, request["path"], protocol.load_array(request["tokens"]))
        return {"arrays": protocol.save_arrays({"logits": logits}, request["out_dir"])}
    if op == "checkpoint_forward":
        logits, activations, notes = checkpoints.forward_from_checkpoint(model, request["path"],
                                                                         protocol.load_array(request["tokens"]))
        arrays = {"logits": logits, **{f"act:{k}": v for k, v in activations.items()}}
        return {"arrays": protocol.save_arrays(arrays, request["out_dir"]), "notes": notes}
    params = protocol.load_arrays(request["params"], request["in_dir"])
    checkpoints.save_like_maxtext(model, request["path"], params)
    return {}


def main() -> int:
    out = _claim_stdout()
    from ckptmap.maxtext import protocol

    models: dict[int, object] = {}
    next_id = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        op = None
        try:
            request = protocol.decode(line)
            op = request.get("op")
            if op == "shutdown":
                result = {}
            elif op == "build":
                t0 = time.perf_counter()
                from ckptmap.maxtext.backend import MaxTextModel

                model = MaxTextModel(request["model_name"], list(request.get("overrides", [])))
                model.timings["build_s"] = time.perf_counter() - t0
                next_id += 1
                models[next_id] = model
                result = {"model": next_id, "timings": dict(model.timings)}
            elif op == "drop":
                models.pop(int(request["model"]), None)
                result = {}
            else:
                model_id = int(request.get("model", -1))
                if model_id not in models:
                    raise KeyError(f"the worker has no model {model_id}: send 'build' first")
                result = handle(models[model_id], request)
            protocol.send(out, {"ok": True, "result": result})
        except Exception as e:  # noqa: BLE001 - every failure goes back to the client as one message
            traceback.print_exc(file=sys.stderr)
            protocol.send(out, {"ok": False, "error": f"{e}" or repr(e), "type": type(e).__name__})
        if op == "shutdown":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
