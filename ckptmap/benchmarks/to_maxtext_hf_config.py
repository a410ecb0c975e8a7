"""Run MaxText's own `to_maxtext.py` with the HF config read from the checkpoint's `config.json`.

Runs in the MaxText venv (Python 3.12 with torch, see maxtext_torch_venv.sh), not in ckptmap's. MaxText 0.2.5's
`to_maxtext.main` takes the HF config that drives its name mapping and hooks from its own table,
`HF_MODEL_CONFIGS[model_name]`, never from `hf_model_path`: llama3.1-8b's says 32 layers and head_dim 128, so a
llama checkpoint of other shapes fails (`Key model.layers.2.mlp.gate_proj.weight not found in HF checkpoint
index`) or, with as many layers, gets its queries scaled by the wrong 1/sqrt(head_dim). This wrapper puts the
checkpoint's own config in that table entry (`transformers.AutoConfig.from_pretrained(hf_model_path)`, local,
offline) and then runs the module as `python -m maxtext.checkpoint_conversion.to_maxtext` would, with the same
arguments; nothing else of MaxText's code changes. For llama-3.1-8B's shapes the benchmark calls to_maxtext
directly.

    python ckptmap/benchmarks/to_maxtext_hf_config.py model_name=llama3.1-8b hf_model_path=DIR ... (to_maxtext's args)
"""

from __future__ import annotations

import os
import runpy
import sys

TO_MAXTEXT = "maxtext.checkpoint_conversion.to_maxtext"


def _arg(argv: list[str], key: str) -> str:
    for a in argv:
        if a.startswith(key + "=") or a.startswith("--" + key + "="):
            return a.split("=", 1)[1]
    sys.exit(f"to_maxtext_hf_config: no {key}= argument (got {' '.join(argv)})")


def main() -> None:
    # this file's folder is no package root for MaxText's imports (ckptmap/benchmarks holds e.g. cases.py)
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here]
    import transformers
    from maxtext.checkpoint_conversion.utils.hf_model_configs import HF_MODEL_CONFIGS

    hf, model = _arg(sys.argv[1:], "hf_model_path"), _arg(sys.argv[1:], "model_name")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        sys.exit(f"to_maxtext_hf_config: {hf}: no config.json (the HF config this wrapper gives to_maxtext)")
    if model not in HF_MODEL_CONFIGS:
        sys.exit(f"to_maxtext_hf_config: model_name={model} is not in MaxText's HF_MODEL_CONFIGS")
    HF_MODEL_CONFIGS[model] = transformers.AutoConfig.from_pretrained(hf)
    runpy.run_module(TO_MAXTEXT, run_name="__main__", alter_sys=True)  # argv[0] becomes its file, as with -m


if __name__ == "__main__":
    main()
