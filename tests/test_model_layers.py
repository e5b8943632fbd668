"""model.layers.attention against a numpy reference, with and without query blocks, and its
gradient (the train step differentiates through the blocks). float32; the tolerance 1e-5 covers
float32 summation order over <= 200 keys of O(1) values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.layers import attention


def reference(q, k, v, mask, scale):
    """Plain softmax attention in float64, grouped-query heads repeated."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    rep = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    scores = np.where(np.asarray(mask)[:, None], scores, -1e30)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def inputs(q_len=150, kv_len=170):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, q_len, 4, 8))
    k = jax.random.normal(keys[1], (2, kv_len, 2, 8))
    v = jax.random.normal(keys[2], (2, kv_len, 2, 8))
    # Row 0: causal over a 20-key prefix (a prompt cache); row 1: 30 padded keys and 10 padded
    # queries that see nothing (softmax of a fully masked row: uniform, finite).
    qi, ki = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
    causal = ki <= qi + (kv_len - q_len)
    padded = (ki < kv_len - 30) & (qi < q_len - 10)
    return q, k, v, jnp.asarray(np.stack([causal, padded]))


@pytest.mark.parametrize("query_chunk", [0, 64, 50, 150, 512])
def test_attention_matches_reference(query_chunk):
    q, k, v, mask = inputs()
    got = np.asarray(attention(q, k, v, mask, 0.35, query_chunk))
    np.testing.assert_allclose(got, reference(q, k, v, mask, 0.35), atol=1e-5, rtol=0)


def test_query_blocks_give_the_gradient_of_one_block():
    q, k, v, mask = inputs()
    weights = jax.random.normal(jax.random.key(1), q.shape)

    def loss(q, k, v, chunk):
        return jnp.sum(attention(q, k, v, mask, 0.35, chunk) * weights)

    whole = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, 0)
    blocks = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, 64)
    for a, b in zip(whole, blocks, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)
