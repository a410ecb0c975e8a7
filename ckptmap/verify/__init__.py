"""ckptmap.verify: numerical confirmation of a mapping by random-weight forward passes.

    from ckptmap.verify import runners_for, tiny_specs, verify_mapping, search_and_verify
    src_spec, tgt_spec = tiny_specs("llama3.1-8b")
    src, tgt = runners_for(src_spec, tgt_spec, device="cpu")
    mapping, report = search_and_verify(solve_result, src, tgt)   # value ops found by KL
    print(report.table())
    report = verify_mapping(mapping, src, tgt)                     # re-check a finished mapping

Modules: hf_runner / maxtext_runner (ModelRunners), weights (seeded random params), metrics (KL, top-1, pass
marks), localise (first diverging stage), candidates + search (value-op search), tiny (tiny configs), specs
(SPECs), config_diff (what the HF and MaxText configs disagree on), tied_cast (MaxText's bf16 cast of a tied table).
"""

from ckptmap.verify.api import merged_dims, search_and_verify, verify_mapping
from ckptmap.verify.config_diff import Disagreement, diff_configs
from ckptmap.verify.hf_runner import HFRunner, VerifyError
from ckptmap.verify.metrics import KL_FLOAT32, KL_THRESHOLDS, LONG_RANGE_TOKENS, LogitStats, compare_logits
from ckptmap.verify.report import VerifyReport
from ckptmap.verify.specs import runner_covering, runner_for, runners_for, tiny_specs
from ckptmap.verify.tiny import TinyPair, derive_tiny

__all__ = ["verify_mapping", "search_and_verify", "runners_for", "runner_for", "runner_covering", "tiny_specs",
           "VerifyReport", "HFRunner", "VerifyError", "compare_logits", "LogitStats", "KL_THRESHOLDS", "derive_tiny",
           "TinyPair", "merged_dims", "diff_configs", "Disagreement", "KL_FLOAT32", "LONG_RANGE_TOKENS"]
