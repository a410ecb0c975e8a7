"""The files beside the shards that make a directory an HF model directory `from_pretrained` loads.

`config.json` is the HF config the mapping was solved against (recorded in the mapping, or given with
`--hf-config`); `generation_config.json` is what transformers derives from that config, when it can.
"""

from __future__ import annotations

import json
import os

from ckptmap.errors import CkptmapError
from ckptmap.trees.jsonio import load_json_strict


def load_hf_config(path: str) -> dict:
    """A config.json (or a directory holding one) -> dict; raises CkptmapError naming the file."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    cfg = load_json_strict(path, CkptmapError)
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise CkptmapError("not an HF config (a JSON object with \"model_type\")", file=path)
    return cfg


def model_dir_files(hf_config: dict, dtype: str | None = None) -> dict[str, str]:
    """{file name: text} for config.json and, where transformers can derive one, generation_config.json.
    `dtype` (numpy name of the written tensors) is recorded as the config's `dtype`."""
    cfg = dict(hf_config)
    if dtype in ("float32", "bfloat16", "float16"):
        cfg["dtype"] = dtype
        cfg.pop("torch_dtype", None)
    files = {"config.json": json.dumps(cfg, indent=2, sort_keys=True) + "\n"}
    generation = _generation_config(cfg)
    if generation is not None:
        files["generation_config.json"] = generation
    return files


GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def _generation_config(cfg: dict) -> str:
    """What `GenerationConfig.from_model_config` keeps of a model config: its special token ids (from the config,
    else its text part), marked as derived from the model config. Written here without importing transformers
    (seconds per conversion)."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    out = {k: cfg[k] if cfg.get(k) is not None else text.get(k) for k in GENERATION_KEYS}
    out = {k: v for k, v in out.items() if v is not None}
    return json.dumps({"_from_model_config": True, **out}, indent=2, sort_keys=True) + "\n"
