"""Log-probabilities of chosen tokens without materialising full logits.

Tokens are processed `chunk_size` at a time: each chunk's logits [chunk, vocab] exist only inside
one iteration of a loop, and the backward pass recomputes them (jax.checkpoint) instead of keeping
them, so memory holds one chunk of logits rather than [batch, seq, vocab] (vocab 151,936 for real
checkpoints).

A chunk takes every `blocks`-th token (token a * blocks + j goes to chunk j), so on a mesh each
chunk is split over the devices like the batch is, and the loop runs over an axis no device
splits. Chunks of consecutive tokens would put the device split on the loop axis, and every
device would then compute every chunk's logits in full (8 x the head's FLOPs on 8 GPUs, seen in
the fit check's HLO).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from model.sharding import constrain


def _chunk_stats(h, targets, kernel, temperature: float, with_entropy: bool):
    h = constrain(h, ("batch", None))
    logits = jnp.dot(h, kernel, preferred_element_type=jnp.float32) / temperature
    logits = constrain(logits, ("batch", "vocab"))
    lse = jax.nn.logsumexp(logits, axis=-1)
    chosen = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    logp = chosen - lse
    if not with_entropy:
        return logp, jnp.zeros_like(logp)
    all_logp = logits - lse[:, None]
    entropy = -jnp.sum(jnp.exp(all_logp) * all_logp, axis=-1)
    return logp, entropy


def chunked_token_logprobs(
    hidden: jnp.ndarray,
    kernel: jnp.ndarray,
    targets: jnp.ndarray,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
    """log softmax(hidden @ kernel / temperature)[targets], float32, chunk by chunk.

    hidden: [..., hidden]; kernel: [hidden, vocab]; targets: [...] int.
    Returns logp [...] (and entropy [...] when `with_entropy`).
    """
    lead = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).astype(jnp.int32)
    n = h.shape[0]
    chunk = max(1, min(chunk_size, n))
    pad = (-n) % chunk
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        t = jnp.pad(t, (0, pad))
    body = jax.checkpoint(
        functools.partial(_chunk_stats, temperature=temperature, with_entropy=with_entropy)
    )
    blocks = h.shape[0] // chunk
    logp, entropy = jax.lax.map(
        lambda args: body(args[0], args[1], kernel),
        (h.reshape(chunk, blocks, h.shape[-1]).swapaxes(0, 1), t.reshape(chunk, blocks).T),
    )
    logp = logp.T.reshape(-1)[:n].reshape(lead)
    if with_entropy:
        return logp, entropy.T.reshape(-1)[:n].reshape(lead)
    return logp


def full_token_logprobs(
    hidden: jnp.ndarray, kernel: jnp.ndarray, targets: jnp.ndarray, temperature: float = 1.0
) -> jnp.ndarray:
    """Reference: log-softmax of the full logits [..., vocab], then gather (memory-hungry)."""
    logits = jnp.dot(hidden, kernel, preferred_element_type=jnp.float32) / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
