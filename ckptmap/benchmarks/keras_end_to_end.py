"""HF -> KerasHub end to end, per family: a tiny HF checkpoint (transformers' own init, save_pretrained) ->
`ckptmap solve --verify` -> `ckptmap convert --output keras:DIR` -> KerasHub's own `from_preset(DIR)` -> logits
against transformers' on the same tokens.

    python -m ckptmap.benchmarks.keras_end_to_end [FAMILY ...] [--work DIR] [--json OUT]

Families: llama3, gemma3, qwen3, mixtral (decoders: CausalLM logits) and bert (an encoder saved as
BertForPreTraining, the class real BERT checkpoints are, pooler included: its masked-LM logits against KerasHub's
BertMaskedLM, the masked-LM logits at every position of an unmasked bidirectional pass).
One row per family: verify's max KL (64 tokens) and its pass, then from_preset's max |logit diff| and max KL over
32 tokens, or the step that failed and why. `--bert-floor`: what the BERT measure reads with right weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from ckptmap.atomic import write_json_atomic
from ckptmap import cli
from ckptmap.frameworks.kerashub.models import keras_hub
from ckptmap.frameworks.kerashub.preset import load_preset
from ckptmap.frameworks.kerashub.runner import model_inputs
from ckptmap.verify.metrics import compare_logits
from ckptmap.verify.weights import random_params

# tiny HF configs (vocab 128 but max positions 1024, so no two tables share a shape; float32)
_BASE = {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 96}
FAMILIES = {
    "llama3": {"model_type": "llama", **_BASE, "tie_word_embeddings": False, "rms_norm_eps": 1e-6},
    "gemma3": {"model_type": "gemma3_text", **_BASE, "head_dim": 16, "query_pre_attn_scalar": 16,
               "sliding_window": 8},
    "qwen3": {"model_type": "qwen3", **_BASE, "head_dim": 16, "tie_word_embeddings": False},
    "mixtral": {"model_type": "mixtral", **_BASE, "num_local_experts": 4, "num_experts_per_tok": 2,
                "tie_word_embeddings": False},
    "bert": {"model_type": "bert", "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 96, "max_position_embeddings": 1024,
             "architectures": ["BertForPreTraining"]},
}


def hf_checkpoint(directory: str, config: dict):
    """A tiny HF model with transformers' own init, saved to `directory`; returns the model. The causal LM, or
    the class the config's `architectures` names (BERT: BertForPreTraining, whose checkpoint holds the pooler)."""
    import torch
    import transformers

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.from_pretrained(directory)
    named = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, named) if named else None
    model = (cls(cfg) if cls is not None else transformers.AutoModelForCausalLM.from_config(cfg)).eval()
    model.save_pretrained(directory)
    return model


def run_family(family: str, work: str) -> dict:
    """One row: {"family", "verify_kl", "verify_passed", "preset_max_abs_diff", "preset_kl", "error"?}."""
    import torch


    row: dict = {"family": family}
    hf_dir = os.path.join(work, family, "hf")
    hf_model = hf_checkpoint(hf_dir, FAMILIES[family])
    mapping = os.path.join(work, family, "mapping.json")
    report = os.path.join(work, family, "verify.json")
    rc = cli.main(["solve", "--source", f"hf:{hf_dir}", "--target", f"keras:{family}", "--verify", "--quiet",
               "--out", mapping, "--report", report])
    if os.path.exists(report):
        with open(report) as f:
            v = json.load(f)
        row["verify_kl"] = (v.get("logits") or {}).get("kl_max")
        row["verify_passed"] = bool(v.get("passed"))
        if v.get("error"):
            row["error"] = v["error"]
    if rc != 0 or not os.path.exists(mapping):
        row.setdefault("error", f"solve exited {rc}")
        return row
    preset = os.path.join(work, family, "preset")
    rc = cli.main(["convert", "--mapping", mapping, "--input", hf_dir, "--output", f"keras:{preset}", "--quiet",
               "--force"])
    if rc != 0:
        row["error"] = f"convert exited {rc}"
        return row
    keras_model = load_preset(preset)
    tokens = np.random.default_rng(1).integers(0, 128, size=(1, 32)).astype(np.int32)
    keras_logits = np.asarray(keras_model(model_inputs(keras_model, tokens)), dtype=np.float32)
    with torch.no_grad():
        out = hf_model(torch.tensor(tokens, dtype=torch.long))
        hf_logits = getattr(out, "logits", None)
        hf_logits = (out.prediction_logits if hf_logits is None else hf_logits).float().numpy()
    row["preset_class"] = type(keras_model).__name__
    row["preset_max_abs_diff"] = float(np.max(np.abs(keras_logits - hf_logits)))
    row["preset_kl"] = compare_logits(hf_logits, keras_logits).kl_max
    return row


def bert_measure_floor(work: str, seq_lens=(64, 1024)) -> dict:
    """What verify's BERT measure reads when the weights are right, independent of the solver: HF's
    BertLMHeadModel with verify's seeded random weights against KerasHub's BertMaskedLM whose encoder KerasHub's own
    HF converter loads (`BertBackbone.from_preset(HF_DIR)`, which also needs a pooler: saved through
    BertForPreTraining) and whose MLM head takes `cls.predictions.*` (Dense kernel = the torch weight transposed).
    Returns {seq_len: {"kl_max", "max_abs_diff"}}."""
    import torch
    import transformers


    kh = keras_hub()
    c = FAMILIES["bert"]
    cfg = transformers.BertConfig(**{k: v for k, v in c.items() if k != "model_type"})
    hf = transformers.BertLMHeadModel(cfg).eval()
    params = random_params({k: tuple(v.shape) for k, v in hf.state_dict().items()}, seed=0)
    params["cls.predictions.decoder.weight"] = params["bert.embeddings.word_embeddings.weight"]
    params["cls.predictions.decoder.bias"] = params["cls.predictions.bias"]
    hf.load_state_dict({k: torch.tensor(v) for k, v in params.items()}, strict=False)
    hf_dir = os.path.join(work, "bert_floor_hf")
    pre = transformers.BertForPreTraining(cfg).eval()
    pre.load_state_dict({k: torch.tensor(v) for k, v in params.items()}, strict=False)
    pre.save_pretrained(hf_dir)
    mlm = kh.models.BertMaskedLM(backbone=kh.models.BertBackbone.from_preset(hf_dir), preprocessor=None)
    head = mlm.masked_lm_head
    head._intermediate_dense.kernel.assign(params["cls.predictions.transform.dense.weight"].T)
    head._intermediate_dense.bias.assign(params["cls.predictions.transform.dense.bias"])
    head._intermediate_layer_norm.gamma.assign(params["cls.predictions.transform.LayerNorm.weight"])
    head._intermediate_layer_norm.beta.assign(params["cls.predictions.transform.LayerNorm.bias"])
    head._bias.assign(params["cls.predictions.bias"])
    out = {}
    for n in seq_lens:
        tokens = np.random.default_rng(0).integers(0, c["vocab_size"], size=(1, n)).astype(np.int32)
        with torch.no_grad():
            h = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
        k = np.asarray(mlm(model_inputs(mlm, tokens)), dtype=np.float32)
        out[n] = {"kl_max": compare_logits(h, k).kl_max, "max_abs_diff": float(np.max(np.abs(h - k)))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("families", nargs="*", help=f"some of {', '.join(FAMILIES)} (default: all)")
    p.add_argument("--work", default=None, help="where the checkpoints, mappings and presets go (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--bert-floor", action="store_true",
                   help="only measure what verify's BERT measure reads with right weights (bert_measure_floor)")
    args = p.parse_args(argv)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown family {unknown[0]!r}; expected some of {', '.join(FAMILIES)}")
    work = args.work or tempfile.mkdtemp(prefix="ckptmap-keras-e2e-")
    if args.bert_floor:
        print(json.dumps(bert_measure_floor(work)))
        return 0
    rows = []
    for family in args.families or list(FAMILIES):
        try:
            row = run_family(family, work)
        except Exception as e:  # noqa: BLE001 - one family's failure is its row, the others still run
            row = {"family": family, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:

        write_json_atomic(args.json, rows)
    return 0 if all(r.get("preset_kl") is not None and r.get("verify_passed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
