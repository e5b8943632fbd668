"""model.text.Attention with the dense attention: query blocks only when filling a KV cache (a
prefill); a pass without a cache (training, log-probs) runs in one block, since under
differentiation blocks would keep every block's weights anyway. Both give the same output
(float32, 1e-5: summation order)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.config import ModelConfig
from model.rope import mrope_cos_sin
from model.text import Attention, causal_mask
from model.tiny import tiny_hf_config


def test_blocks_only_when_filling_a_cache():
    cfg = ModelConfig.from_hf_dict(tiny_hf_config("qwen2_vl")).text
    attn = Attention(
        cfg, param_dtype=jnp.float32, dtype=jnp.float32, implementation="dense", rngs=nnx.Rngs(0)
    )
    length = 3 * attn.query_chunk  # three query blocks
    x = jax.random.normal(jax.random.key(1), (2, length, cfg.hidden_size))
    positions = jnp.broadcast_to(jnp.arange(length), (3, 2, length))
    cos, sin = mrope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
    mask = causal_mask(jnp.ones((2, length), jnp.int32))
    empty = jnp.zeros((1, 2, length, cfg.num_kv_heads, cfg.head_dim))  # one layer's cache
    cache_args = ((empty, empty, 0), jnp.zeros((), jnp.int32))

    def primitives(*args):
        jaxpr = jax.make_jaxpr(lambda *a: attn(x, cos, sin, mask, *a)[0])(*args)
        return {str(e.primitive) for e in jaxpr.jaxpr.eqns}

    assert "scan" not in primitives()
    assert "scan" in primitives(*cache_args)
    whole = attn(x, cos, sin, mask)[0]
    blocks = attn(x, cos, sin, mask, *cache_args)[0]
    np.testing.assert_allclose(np.asarray(blocks), np.asarray(whole), atol=1e-5, rtol=0)
