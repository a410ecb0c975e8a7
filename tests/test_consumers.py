"""The contract: converted checkpoints load through the consumers' own loaders and compute what the source does.

tiny HF model saved -> `ckptmap solve --verify` -> `convert` to Orbax -> MaxText's `load_params_from_path` and
`from_pretrained` -> logits against HF; `convert --reverse` -> transformers' `from_pretrained` -> logits; a
checkpoint MaxText's own saver wrote -> `convert --reverse` -> `from_pretrained` -> logits against MaxText.
(ckptmap/benchmarks/consumers.py runs the same steps as separate processes and records time and memory.)
"""

from __future__ import annotations

import pytest

from ckptmap.benchmarks.consumers import run_case

pytestmark = pytest.mark.maxtext


@pytest.mark.parametrize("model,scan,dtype,orbax_flags", [
    ("llama3.1-8b", False, "float32", ()),
    ("llama3.1-8b", True, "float32", ()),
    # the form MaxText's own conversion writes: OCDBT databases, zstd chunks (the default is a zarr dir per array)
    ("llama3.1-8b", True, "float32", ("--orbax-ocdbt", "--orbax-compression")),
    # MoE, stacked experts, split over two Ray processes (the driver lays the checkpoint out, each process writes
    # its arrays; tests/test_convert_ray.py: the same bytes as one process)
    ("mixtral-8x7b", True, "float32", ("--processes", "2", "--workers", "1")),
    ("deepseek3-671b", False, "float32", ()),  # MLA, and the router bias of MaxText's MoEBiasVar collection
    ("qwen3-8b", False, "bfloat16", ()),     # a bf16 checkpoint, kept bf16 end to end
])
def test_round_trip_through_the_real_consumers(tmp_path, model, scan, dtype, orbax_flags):
    r = run_case(model, scan, str(tmp_path), dtype, in_process=True, orbax_flags=orbax_flags)
    assert not r.error, r.to_json()
    assert set(r.kl) == {"maxtext load_params_from_path", "maxtext from_pretrained", "hf from_pretrained (round trip)",
                         "maxtext-written -> hf from_pretrained"}, r.kl
    assert not r.tied  # the families here are untied: every check at 1e-6
    for check, kl in r.kl.items():
        assert kl < r.bar(check) == 1e-6, (check, kl)
    assert r.bit_exact_back is True  # HF -> MaxText -> HF gives the very bytes back
    assert (tmp_path / "hf_back" / "config.json").exists()
    assert (tmp_path / "mt.orbax" / "0" / "items").is_dir()
