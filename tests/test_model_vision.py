"""Block-diagonal vision attention: chunked queries give the unchunked result."""

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
