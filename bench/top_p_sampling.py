"""One decode step's token choice at Qwen2-VL's vocabulary, top-p from the candidates vs the full
sort (jaxvrl/rollout/sampling.py), timed in one run on this machine's backend.

    python bench/top_p_sampling.py [--vocab 151936] [--rows 16] [--top_p 0.95] [--repeats 30]

What is timed is what the rollout runs per step and batch shard (sampling.sample_tokens, then
sampling.token_logprobs), jitted with top_p traced, on two kinds of rows: language-model-like ones
(a Zipf law with exponent 1.5 over a shuffled vocabulary plus noise: the nucleus at 0.95 holds a
few hundred tokens) and flat ones (exponent 1.1: the nucleus is wider than the candidates, so the
step falls back to the full sort and pays the candidates' top-k on top). Each variant's tokens
are compared with the full sort's on the same keys. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np
from demo_seeds import cpu_model

from jaxvrl.rollout import sampling


def zipf_rows(rows: int, vocab: int, exponent: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = -exponent * np.log(np.arange(1, vocab + 1, dtype=np.float64))
    out = np.array([rng.permutation(base) for _ in range(rows)]).reshape(rows, vocab)
    return (out + 0.3 * rng.standard_normal(out.shape)).astype(np.float32)


def step_fn(candidates: int):
    def choose(keys, logits, top_p):
        tokens = sampling.sample_tokens(
            keys, logits, top_p=top_p, use_top_p=True, candidates=candidates
        )
        return tokens, sampling.token_logprobs(logits, tokens)

    return jax.jit(choose)


def seconds(fn, keys, logits, top_p, repeats: int) -> tuple[float, np.ndarray]:
    tokens = jax.block_until_ready(fn(keys, logits, top_p))[0]  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(keys, logits, top_p))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), np.asarray(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(0), args.rows)
    top_p = jnp.float32(args.top_p)
    old, new = step_fn(0), step_fn(sampling.TOP_P_CANDIDATES)
    result = {
        "vocab": args.vocab,
        "rows": args.rows,
        "top_p": args.top_p,
        "candidates": sampling.TOP_P_CANDIDATES,
        "backend": jax.default_backend(),
        "machine": cpu_model(),
        "jax": jax.__version__,
    }
    for name, exponent in [("lm_like", 1.5), ("flat", 1.1)]:
        logits = jnp.asarray(zipf_rows(args.rows, args.vocab, exponent, seed=1))
        kept = np.isfinite(np.asarray(sampling.filter_logits(logits, 0, args.top_p, candidates=0)))
        old_s, old_tokens = seconds(old, keys, logits, top_p, args.repeats)
        new_s, new_tokens = seconds(new, keys, logits, top_p, args.repeats)
        result[name] = {
            "nucleus_tokens_median": int(np.median(kept.sum(axis=-1))),
            "full_sort_ms": round(1e3 * old_s, 3),
            "candidates_ms": round(1e3 * new_s, 3),
            "speedup": round(old_s / new_s, 2),
            "same_tokens": bool(np.array_equal(old_tokens, new_tokens)),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
