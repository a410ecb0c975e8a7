"""Benchmark: shape search over 1,000 random (source, target) pairs of realistic LLM parameter shapes.

Pairs are drawn (seeded) from the HF and MaxText shapes of a few real model configs: half are true
correspondences (q_proj -> query, fused qkv -> q/k/v, gate/up pairs, experts, padded vocab), half are random pairs
from the same model, as the solver tries for candidate edges. Timed cold (caches cleared first) and warm.

    .venv/bin/python benchmarks/bench_transforms.py [--pairs 1000] [--seed 0]
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
        (((q, e),), ((e, layers, heads, hd),)) if False else (((e, heads, hd),), ((q, e),)),
    ]
    if experts:
        pairs += [
            (((experts, mlp, e),), ((experts, e, mlp),)),
            (((experts, e, 2 * mlp),), ((experts, e, mlp), (experts, e, mlp))),
            (((experts, e),), ((e, experts),)),
        ]
    return pairs


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
    pairs = make_pairs(n, seed)
    clear_cache()
    t0 = time.perf_counter()
    counts = [len(search_chains(s, t, d)) for s, t, d in pairs]
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s, t, d in pairs:
        search_chains(s, t, d)
    warm = time.perf_counter() - t0
    distinct = len({(s, t, tuple(sorted(d.items()))) for s, t, d in pairs})
    return {"pairs": n, "distinct": distinct, "cold_s": cold, "warm_s": warm,
            "with_chain": sum(1 for c in counts if c), "chains": sum(counts), "max_chains": max(counts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = run(args.pairs, args.seed)
    print(f"{r['pairs']} pairs ({r['distinct']} distinct): cold {r['cold_s']:.3f} s, warm {r['warm_s'] * 1e3:.1f} ms; "
          f"{r['with_chain']} pairs with a chain, {r['chains']} chains in all, at most {r['max_chains']} per pair")


if __name__ == "__main__":
    main()
