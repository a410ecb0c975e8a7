"""Benchmark: shape search over 1,000 random (source, target) pairs of realistic LLM parameter shapes.

Pairs are drawn (seeded) from the HF and MaxText shapes of a few real model configs: half are true
correspondences (q_proj -> query, fused qkv -> q/k/v, gate/up pairs, experts, padded vocab), half are random pairs
from the same model, as the solver tries for candidate edges. Timed cold (caches cleared first) and warm.

    .venv/bin/python ckptmap/benchmarks/bench_transforms.py [--pairs 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import time

from ckptmap.transforms import clear_cache, search_chains

# name: hidden, heads, kv_heads, head_dim, mlp, vocab (HF), vocab (MaxText, padded), experts, layers
CONFIGS = {
    "llama3.1-8b": (4096, 32, 8, 128, 14336, 128256, 128256, 0, 32),
    "llama3.1-70b": (8192, 64, 8, 128, 28672, 128256, 128256, 0, 80),
    "qwen2.5-7b": (3584, 28, 4, 128, 18944, 152064, 152064, 0, 28),
    "gemma3-4b": (2560, 8, 4, 256, 10240, 262208, 262144, 0, 34),
    "mixtral-8x7b": (4096, 32, 8, 128, 14336, 32000, 32000, 8, 32),
    "gpt-oss-20b": (2880, 64, 8, 64, 2880, 201088, 201088, 32, 24),
    "tiny": (64, 4, 2, 16, 128, 256, 320, 4, 2),
}


def model_pairs(hidden, heads, kv, hd, mlp, vocab, vocab_mt, experts, layers):
    """(HF shapes, MaxText shapes) of corresponding parameters, as tuples of shapes."""
    e, q, k = hidden, heads * hd, kv * hd
    pairs = [
        (((q, e),), ((e, heads, hd),)),                                  # q_proj -> query
        (((k, e),), ((e, kv, hd),)),                                     # k_proj -> key
        (((e, q),), ((heads, hd, e),)),                                  # o_proj -> out
        (((mlp, e),), ((e, mlp),)),                                      # gate -> wi_0
        (((e, mlp),), ((mlp, e),)),                                      # down -> wo
        (((vocab, e),), ((vocab_mt, e),)),                               # embed (padded)
        (((vocab, e),), ((e, vocab_mt),)),                               # lm_head -> logits_dense
        (((e,),), ((e,),)),                                              # norms
        (((hd,),), ((hd,),)),                                            # q_norm
        (((q + 2 * k, e),), ((e, heads, hd), (e, kv, hd), (e, kv, hd))), # fused qkv -> q, k, v
        (((2 * mlp, e),), ((e, mlp), (e, mlp))),                         # fused gate_up -> wi_0, wi_1
        (((e, mlp), (e, mlp)), ((e, 2 * mlp),)),                         # wi_0, wi_1 -> fused
        (((e, heads, hd),), ((q, e),)),                                  # query -> q_proj
        (((e,),) * 5, ((5, e),)),                                        # 5 layers' norms -> stacked
    ]
    if experts:
        pairs += [
            (((experts, mlp, e),), ((experts, e, mlp),)),
            (((experts, e, 2 * mlp),), ((experts, e, mlp), (experts, e, mlp))),
            (((experts, e),), ((e, experts),)),
        ]
    return pairs


def mla_pairs(hidden, heads, q_lora, kv_lora, nope, rope, v_dim):
    """DeepSeek-style multi-head latent attention shapes (HF -> MaxText)."""
    e = hidden
    return [
        (((q_lora, e),), ((e, q_lora),)),                                          # q_a_proj -> wq_a
        (((heads * (nope + rope), q_lora),), ((q_lora, heads, nope + rope),)),     # q_b_proj -> wq_b
        (((kv_lora + rope, e),), ((e, kv_lora + rope),)),                          # kv_a_proj_with_mqa -> wkv_a
        (((heads * (nope + v_dim), kv_lora),), ((kv_lora, heads, nope + v_dim),)), # kv_b_proj -> wkv_b
        (((e, heads * v_dim),), ((heads, v_dim, e),)),                             # o_proj -> out
    ]


MLA = {"deepseek-v3": (7168, 128, 1536, 512, 128, 64, 128), "deepseek-tiny": (64, 4, 32, 16, 8, 8, 8)}


def make_pairs(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    models = list(CONFIGS.items())
    while len(out) < n:
        name, cfg = rng.choice(models)
        hidden, heads, kv, hd, mlp, vocab, vocab_mt, experts, layers = cfg
        dims = dict(hidden=hidden, heads=heads, kv_heads=kv, head_dim=hd, mlp=mlp, vocab=vocab, layers=layers)
        if experts:
            dims["experts"] = experts
        pairs = model_pairs(*cfg)
        if rng.random() < 0.2:
            mla_name = rng.choice(sorted(MLA))
            hidden, heads, q_lora, kv_lora, nope, rope, v_dim = MLA[mla_name]
            dims = dict(hidden=hidden, heads=heads, q_lora_rank=q_lora, kv_lora_rank=kv_lora,
                        qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=v_dim)
            pairs = mla_pairs(*MLA[mla_name])
        if rng.random() < 0.5:
            src, tgt = rng.choice(pairs)
        else:  # a candidate edge: any HF single shape against any MaxText single shape of the model
            src = rng.choice(pairs)[0][:1]
            tgt = rng.choice(pairs)[1][:1]
        if rng.random() < 0.5:
            src, tgt = tgt, src
        out.append((src, tgt, dims))
    return out


def run(n: int = 1000, seed: int = 0) -> dict:
    """Times: `cold_s` one pass starting from empty caches (repeats hit the memo, as in a solve);
    `uncached_s` every call from empty caches; `warm_s` a second pass."""
    pairs = make_pairs(n, seed)
    clear_cache()
    t0 = time.perf_counter()
    counts = [len(search_chains(s, t, d)) for s, t, d in pairs]
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s, t, d in pairs:
        search_chains(s, t, d)
    warm = time.perf_counter() - t0
    uncached = 0.0
    for s, t, d in pairs:
        clear_cache()
        t0 = time.perf_counter()
        search_chains(s, t, d)
        uncached += time.perf_counter() - t0
    distinct = len({(s, t, tuple(sorted(d.items()))) for s, t, d in pairs})
    return {"pairs": n, "distinct": distinct, "cold_s": cold, "uncached_s": uncached, "warm_s": warm,
            "with_chain": sum(1 for c in counts if c), "chains": sum(counts), "max_chains": max(counts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = run(args.pairs, args.seed)
    print(f"{r['pairs']} pairs ({r['distinct']} distinct): cold {r['cold_s']:.3f} s, every call uncached "
          f"{r['uncached_s']:.3f} s, warm {r['warm_s'] * 1e3:.1f} ms; "
          f"{r['with_chain']} pairs with a chain, {r['chains']} chains in all, at most {r['max_chains']} per pair")


if __name__ == "__main__":
    main()
