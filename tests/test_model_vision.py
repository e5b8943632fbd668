"""Block-diagonal vision attention: a numpy reference, and chunked queries give the unchunked
result. float32; 1e-5 covers summation order over <= 4096 keys of O(1) values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.vision import segment_attention


@pytest.mark.parametrize("n", [2500, 3072])
def test_chunked_segment_attention_equals_one_block(n):
    q, k, v = (jax.random.normal(key, (n, 2, 8)) for key in jax.random.split(jax.random.key(0), 3))
    segments = jnp.asarray(np.minimum(np.arange(n) // 500 + 1, 5))
    chunked = segment_attention(q, k, v, segments, 0.3, 1024)
    whole = segment_attention(q, k, v, segments, 0.3, 4096)
    # Same float32 math per query row; only the batching of rows differs.
    np.testing.assert_allclose(chunked, whole, atol=1e-5, rtol=0)


def test_segment_attention_matches_reference():
    n = 700
    q, k, v = (jax.random.normal(key, (n, 2, 8)) for key in jax.random.split(jax.random.key(1), 3))
    segments = np.minimum(np.arange(n) // 300 + 1, 3)
    segments[650:] = 0  # padding patches: attend nowhere, attended by nothing
    got = np.asarray(segment_attention(q, k, v, jnp.asarray(segments), 0.3, 256))
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    expected = np.zeros_like(q)
    for s in (1, 2, 3):
        rows = segments == s
        scores = np.einsum("qhd,khd->hqk", q[rows], k[rows]) * 0.3
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        expected[rows] = np.einsum("hqk,khd->qhd", probs, v[rows])
    real = segments > 0
    np.testing.assert_allclose(got[real], expected[real], atol=1e-5, rtol=0)
    assert np.isfinite(got).all()
