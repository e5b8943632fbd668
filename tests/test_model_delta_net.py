"""model/delta_net.py: the Gated DeltaNet layer's own parameters (its arithmetic is checked
against transformers in test_model_parity and against a plain recurrence in
test_model_delta_rule)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.config import ModelConfig
from model.delta_net import GatedDeltaNet
from model.tiny import tiny_hf_config


def test_random_init_draws_each_heads_decay_rate_as_transformers_does():
    """transformers draws A (a head's decay exp(-A * softplus(a + dt_bias)) a token) uniform in
    [0.01, 16] and sets dt_bias to 1: about 6% of the heads start with A < 1 and remember
    beyond a few tokens. 4096 heads: the share below 1 is 0.062 +- 0.004 (one sd)."""
    text = ModelConfig.from_hf_dict(tiny_hf_config("qwen3_5")).text
    text = dataclasses.replace(
        text,
        linear_num_key_heads=1,
        linear_num_value_heads=4096,
        linear_key_head_dim=2,
        linear_value_head_dim=1,
    )
    layer = GatedDeltaNet(text, param_dtype=jnp.float32, dtype=jnp.float32, rngs=nnx.Rngs(0))
    rate = np.exp(np.asarray(layer.A_log[...], np.float64))
    assert rate.min() >= 0.01 * (1 - 1e-6) and rate.max() <= 16 * (1 + 1e-6)
    assert 0.045 < np.mean(rate < 1) < 0.08
    np.testing.assert_array_equal(np.asarray(layer.dt_bias[...]), np.ones(4096, np.float32))
