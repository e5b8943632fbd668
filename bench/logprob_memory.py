"""Peak temporary memory of chunked vs full-logit token log-probs, from XLA's compiled memory
analysis (no execution, so it runs anywhere; the numbers are for the backend it compiles on).

    python bench/logprob_memory.py [--vocab 151936] [--batch 8] [--seq 1024] [--hidden 3584]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from model.logprobs import chunked_token_logprobs, full_token_logprobs


def temp_bytes(fn, *shapes) -> int:
    compiled = jax.jit(fn).lower(*shapes).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def measure(vocab: int, batch: int, seq: int, hidden: int, chunk: int, dtype: str) -> dict:
    h = jax.ShapeDtypeStruct((batch, seq, hidden), jnp.dtype(dtype))
    w = jax.ShapeDtypeStruct((hidden, vocab), jnp.dtype(dtype))
    t = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    full_logits_bytes = batch * seq * vocab * 4

    def chunked(h, w, t):
        return chunked_token_logprobs(h, w, t, chunk_size=chunk)

    def loss(fn):
        return lambda h, w, t: jax.grad(lambda h, w: fn(h, w, t).sum(), argnums=(0, 1))(h, w)

    rows = {
        "forward_full": temp_bytes(full_token_logprobs, h, w, t),
        "forward_chunked": temp_bytes(chunked, h, w, t),
        "grad_full": temp_bytes(loss(full_token_logprobs), h, w, t),
        "grad_chunked": temp_bytes(loss(chunked), h, w, t),
    }
    return {
        "vocab": vocab,
        "batch": batch,
        "seq": seq,
        "hidden": hidden,
        "chunk": chunk,
        "dtype": dtype,
        "backend": jax.default_backend(),
        "full_logits_f32_bytes": full_logits_bytes,
        # The gradient of the output kernel is an output the backward pass must accumulate,
        # whatever the method: it sits in the grad temp figures of both.
        "kernel_grad_bytes": hidden * vocab * jnp.dtype(dtype).itemsize,
        **{f"{k}_temp_bytes": v for k, v in rows.items()},
        **{f"{k}_fraction_of_full_logits": v / full_logits_bytes for k, v in rows.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=3584)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--dtype", default="float32")
    a = p.parse_args()
    r = measure(a.vocab, a.batch, a.seq, a.hidden, a.chunk, a.dtype)
    gib = 1024**3
    print(f"full float32 logits: {r['full_logits_f32_bytes'] / gib:.2f} GiB")
    print(f"output-kernel gradient (in both grad figures): {r['kernel_grad_bytes'] / gib:.2f} GiB")
    for k in ("forward_full", "forward_chunked", "grad_full", "grad_chunked"):
        print(
            f"{k:<16} temp {r[k + '_temp_bytes'] / gib:8.3f} GiB "
            f"({100 * r[k + '_fraction_of_full_logits']:.1f}% of full logits)"
        )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
