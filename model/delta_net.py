"""Qwen3.5's Gated DeltaNet token mixer (linear attention): projections, a short causal
convolution, the gated delta rule (model/delta_rule.py) and a gated RMSNorm.

A layer's memory of the past is a fixed-size state instead of a growing key/value cache: the
convolution's last K-1 inputs [batch, K-1, channels] and the recurrence's matrix per value head
[batch, v_heads, k_dim, v_dim] (float32). Every pass takes a validity mask and runs the
convolution and the recurrence over each row's valid tokens only, wherever they sit (left or
right padding, a prompt's padding before its completion): the row is compacted (valid tokens
first, in order), run, and put back. So a row's state never mixes in padding, and a prompt's
state carries on into its completion exactly as one unpadded sequence would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.config import TextConfig
from model.delta_rule import causal_conv, chunked_gated_delta_rule, recurrent_gated_delta_rule
from model.layers import Dense
from model.sharding import constrain

# Passes of at most this many tokens run the token-by-token recurrence (decode); longer ones the
# chunked form (training, prefill).
RECURRENT_MAX_TOKENS = 4


class GatedRMSNorm(nnx.Module):
    """RMSNorm of x (float32, scaled after casting back) times silu(gate) (Qwen3.5's
    Qwen3NextRMSNormGated), over the last axis."""

    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=(None,))
        self.eps = eps

    def __call__(self, x: jnp.ndarray, gate: jnp.ndarray) -> jnp.ndarray:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        y = self.scale[...].astype(dtype) * x32.astype(dtype)
        return (y.astype(jnp.float32) * jax.nn.silu(gate.astype(jnp.float32))).astype(dtype)


def compaction(valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """For validity [batch, L]: the order that puts each row's valid tokens first (stable),
    its inverse, and the count of valid tokens per row [batch]."""
    order = jnp.argsort(~valid, axis=1, stable=True)
    inverse = jnp.argsort(order, axis=1)
    return order, inverse, valid.sum(axis=1)


def _take(x: jnp.ndarray, order: jnp.ndarray) -> jnp.ndarray:
    """x [batch, L, ...] reordered along L by order [batch, L]."""
    index = order.reshape(order.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


class GatedDeltaNet(nnx.Module):
    """Parameters named as transformers' Qwen3_5GatedDeltaNet: in_proj_qkv, in_proj_z,
    in_proj_b, in_proj_a, conv1d [channels, K], dt_bias, A_log, norm, out_proj."""

    def __init__(self, cfg: TextConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.k_heads, self.v_heads = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.k_dim, self.v_dim = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.key_width = self.k_heads * self.k_dim
        self.value_width = self.v_heads * self.v_dim
        self.channels = 2 * self.key_width + self.value_width
        self.kernel_size = cfg.linear_conv_kernel_dim
        kw = dict(
            param_dtype=param_dtype,
            dtype=dtype,
            use_bias=False,
            init_std=cfg.initializer_range,
            rngs=rngs,
        )
        self.in_proj_qkv = Dense(d, self.channels, axes=("embed", "heads"), **kw)
        self.in_proj_z = Dense(d, self.value_width, axes=("embed", "heads"), **kw)
        self.in_proj_b = Dense(d, self.v_heads, axes=("embed", None), **kw)
        self.in_proj_a = Dense(d, self.v_heads, axes=("embed", None), **kw)
        self.out_proj = Dense(self.value_width, d, axes=("heads", "embed"), **kw)
        # Depthwise convolution taps [channels, K]: transformers' conv1d.weight [C, 1, K].
        bound = self.kernel_size**-0.5
        self.conv1d = nnx.Param(
            jax.random.uniform(
                rngs.params(), (self.channels, self.kernel_size), param_dtype, -bound, bound
            ),
            axes=("heads", None),
        )
        self.dt_bias = nnx.Param(jnp.ones((self.v_heads,), param_dtype), axes=(None,))
        # transformers' init: A uniform in [0.01, 16]; a head's decay per token is
        # exp(-A * softplus(a + dt_bias)).
        decay_rate = jax.random.uniform(rngs.params(), (self.v_heads,), jnp.float32, 0.01, 16.0)
        self.A_log = nnx.Param(jnp.log(decay_rate).astype(param_dtype), axes=(None,))
        self.norm = GatedRMSNorm(self.v_dim, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.dtype = dtype

    def __call__(
        self,
        x: jnp.ndarray,
        valid: jnp.ndarray | None = None,
        conv_state: jnp.ndarray | None = None,
        state: jnp.ndarray | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """x [batch, L, hidden] (normed layer input); valid [batch, L] (None: all valid);
        conv_state [batch, K-1, channels] and state [batch, v_heads, k_dim, v_dim]: what came
        before (None: nothing). Returns the residual update [batch, L, hidden] (zero at invalid
        tokens) and both states after the row's last valid token."""
        b, length, _ = x.shape
        qkv = self.in_proj_qkv(x)
        z = self.in_proj_z(x).reshape(b, length, self.v_heads, self.v_dim)
        beta = jax.nn.sigmoid(self.in_proj_b(x).astype(jnp.float32))
        a = self.in_proj_a(x).astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32)
        g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(a)
        if conv_state is None:
            conv_state = jnp.zeros((b, self.kernel_size - 1, self.channels), qkv.dtype)
        # Rows split over the batch axes, like the tokens: the partitioner must not gather
        # every row's states onto every device (the rollout steps them once per token).
        conv_state = constrain(conv_state.astype(qkv.dtype), ("batch", None, None))
        if state is not None:
            state = constrain(state, ("batch", None, None, None))
        if valid is not None:
            order, inverse, count = compaction(valid.astype(bool))
            kept = (jnp.arange(length) < count[:, None])[..., None]
            qkv = jnp.where(kept, _take(qkv, order), 0)
            g = jnp.where(kept, _take(g, order), 0)  # no decay and no write past the row's end
            beta = jnp.where(kept, _take(beta, order), 0)
        mixed, _ = causal_conv(qkv, self.conv1d[...].astype(qkv.dtype), conv_state)
        # The convolution's next state: the K-1 inputs before position `count` of the row
        # (earlier state rows where it has fewer valid tokens).
        history = jnp.concatenate([conv_state, qkv], axis=1)
        last = length if valid is None else count[:, None]
        taps = last + jnp.arange(self.kernel_size - 1)
        new_conv = jnp.take_along_axis(
            history, jnp.broadcast_to(taps, (b, taps.shape[-1]))[..., None], 1
        )
        q, k, v = jnp.split(mixed, [self.key_width, 2 * self.key_width], axis=-1)
        q = q.reshape(b, length, self.k_heads, self.k_dim)
        k = k.reshape(b, length, self.k_heads, self.k_dim)
        v = v.reshape(b, length, self.v_heads, self.v_dim)
        rule = (
            recurrent_gated_delta_rule
            if length <= RECURRENT_MAX_TOKENS
            else chunked_gated_delta_rule
        )
        out, new_state = rule(q, k, v, g, beta, state)
        new_state = constrain(new_state, ("batch", None, None, None))
        new_conv = constrain(new_conv, ("batch", None, None))
        if valid is not None:
            out = _take(jnp.where(kept[..., None], out, 0), inverse)
        out = self.norm(out.astype(z.dtype), z)
        return self.out_proj(out.reshape(b, length, self.value_width)), new_conv, new_state
