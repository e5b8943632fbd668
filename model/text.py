"""The Qwen2 (and Qwen3) decoder with M-RoPE and a key/value cache.

Cache slots are positions in a fixed-length buffer. A prefill writes a (right-padded) prompt at
slots [index, index + len); each decode step writes one token at `index`. `valid` marks the slots
that hold real tokens, so prompts of different lengths share one buffer without left padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from model.config import FULL_ATTENTION, LINEAR_ATTENTION, TextConfig
from model.delta_net import GatedDeltaNet
from model.flash import Mask
from model.layers import Dense, RMSNorm, activation, attention
from model.rope import apply_rotary
from model.sharding import constrain


@struct.dataclass
class KVCache:
    """Keys and values of every layer [layers, batch, slots, kv_heads, head_dim], the slot
    validity mask [batch, slots] and the next slot to write (a scalar)."""

    k: jnp.ndarray
    v: jnp.ndarray
    valid: jnp.ndarray
    index: jnp.ndarray

    @classmethod
    def create(cls, cfg: TextConfig, batch: int, slots: int, dtype=jnp.float32) -> KVCache:
        shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, slots), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def slots(self) -> int:
        return self.valid.shape[1]


class Attention(nnx.Module):
    """Grouped-query attention: q, k, v with bias, o without (Qwen2); no biases and an RMSNorm
    over each query and key head before the rotation (Qwen3, `qk_norm`); Qwen3.5 adds an output
    gate (q_proj gives each head's queries then its gate; the output is multiplied by
    sigmoid(gate)) and rotates only the first `rotary_dim` dims. `implementation`: config
    `model.attention` (model.layers.attention)."""

    def __init__(
        self, cfg: TextConfig, *, param_dtype, dtype, implementation: str = "auto", rngs: nnx.Rngs
    ):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kw = dict(param_dtype=param_dtype, dtype=dtype, init_std=cfg.initializer_range, rngs=rngs)
        bias = cfg.attention_bias
        self.gated = cfg.attn_output_gate
        q_width = h * hd * (2 if self.gated else 1)
        self.q_proj = Dense(d, q_width, axes=("embed", "heads"), use_bias=bias, **kw)
        self.k_proj = Dense(d, kv * hd, axes=("embed", "kv_heads"), use_bias=bias, **kw)
        self.v_proj = Dense(d, kv * hd, axes=("embed", "kv_heads"), use_bias=bias, **kw)
        self.o_proj = Dense(h * hd, d, axes=("heads", "embed"), use_bias=False, **kw)
        norm = dict(param_dtype=param_dtype, axis_name=None, offset=cfg.norm_offset)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, **norm) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, **norm) if cfg.qk_norm else None
        self.shape = (h, kv, hd)
        # Queries per attention block (model.layers.attention) when filling a KV cache (prefill):
        # one block's scores at a time, 1.3x faster on the CPU for 1,088-token prompts. Passes
        # without a cache (training, log-probs) run in one block: under differentiation the
        # blocks would keep every block's weights anyway, +37% attention memory at 1,024 tokens
        # (bench/RESULTS.md).
        self.query_chunk = 128
        self.implementation = implementation

    def rotated_qkv(self, x, cos, sin):
        """Queries [..., heads, d] and keys [..., kv_heads, d] (normed, Qwen3, and rotated) and
        values [..., kv_heads, d] of x [..., hidden]; cos, sin: [..., rotary] (model.rope)."""
        return self.rotated_qkv_gate(x, cos, sin)[:3]

    def rotated_qkv_gate(self, x, cos, sin):
        """`rotated_qkv` and the output gate [..., heads, d] (None without one), from one
        q_proj."""
        h, kv, hd = self.shape
        lead = x.shape[:-1]
        q = self.q_proj(x).reshape(*lead, h, -1)
        q, gate = (q[..., :hd], q[..., hd:]) if self.gated else (q, None)
        k = self.k_proj(x).reshape(*lead, kv, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.v_proj(x).reshape(*lead, kv, hd)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, gate

    def project(self, x, cos, sin):
        """Rotated queries [b, len, heads, d] and keys, values [b, len, kv_heads, d] and the
        output gate (or None)."""
        q, k, v, gate = self.rotated_qkv_gate(x, cos, sin)
        return _heads(q, "heads"), _heads(k, "kv_heads"), _heads(v, "kv_heads"), gate

    def output(self, out, gate=None):
        """Attention output [b, len, heads, d] -> the residual update [b, len, hidden], times
        sigmoid(gate) first where the layer has an output gate (Qwen3.5)."""
        b, length, h, hd = out.shape
        if gate is not None:
            out = out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)
        return self.o_proj(out.reshape(b, length, h * hd))

    def __call__(self, x, cos, sin, mask, kv_cache=None, index=None):
        """kv_cache: (keys, values, layer) with the keys and values of every layer
        [layers, batch, slots, kv_heads, head_dim] and this layer's index in them; the new keys
        and values are written at slots [index, index + len) of that layer, and the attention
        reads the layer's whole cache. Returns the residual update and the updated kv_cache."""
        hd = self.shape[2]
        q, k, v, gate = self.project(x, cos, sin)
        if kv_cache is not None:
            k_all, v_all, layer = kv_cache
            at = (layer, 0, index, 0, 0)
            k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), at)
            v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), at)
            kv_cache = (k_all, v_all, layer)
            k, v = k_all[layer].astype(q.dtype), v_all[layer].astype(q.dtype)
        chunk = self.query_chunk if kv_cache is not None else 0
        out = attention(q, k, v, mask, hd**-0.5, chunk, self.implementation)
        return self.output(out, gate), kv_cache

    def shared_prefix(self, xp, xc, rope_p, rope_c, mask_p, mask_c, sample_to_prompt):
        """Attention for completions that continue shared prompts, the prompts computed once.

        xp: [P, Lp, hidden] prompts; xc: [S, Lc, hidden] completions, completion s continuing
        prompt `sample_to_prompt[s]`. rope_p / rope_c: (cos, sin) of each. mask_p: the prompts' Mask
        (or [P, Lp, Lp]); mask_c: the completions' [S, Lc] queries over the prompt's keys, then
        their own keys (a Mask, or [S, Lc, Lp + Lc]).
        Returns the residual updates of both. Equal to attention over each concatenated
        prompt + completion, without running the prompt once per completion."""
        hd = self.shape[2]
        qp, kp, vp, gate_p = self.project(xp, *rope_p)
        qc, kc, vc, gate_c = self.project(xc, *rope_c)
        out_p = attention(qp, kp, vp, mask_p, hd**-0.5, implementation=self.implementation)
        k = _heads(jnp.concatenate([kp[sample_to_prompt], kc], axis=1), "kv_heads")
        v = _heads(jnp.concatenate([vp[sample_to_prompt], vc], axis=1), "kv_heads")
        out_c = attention(qc, k, v, mask_c, hd**-0.5, implementation=self.implementation)
        return self.output(out_p, gate_p), self.output(out_c, gate_c)


class MLP(nnx.Module):
    def __init__(self, cfg: TextConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(
            param_dtype=param_dtype,
            dtype=dtype,
            use_bias=False,
            init_std=cfg.initializer_range,
            rngs=rngs,
        )
        self.gate_proj = Dense(d, f, axes=("embed", "mlp"), **kw)
        self.up_proj = Dense(d, f, axes=("embed", "mlp"), **kw)
        self.down_proj = Dense(f, d, axes=("mlp", "embed"), **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        inner = self.act(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(constrain(inner, ("batch",) + (None,) * (x.ndim - 2) + ("mlp",)))


class DecoderLayer(nnx.Module):
    """A token mixer and the MLP, each after an RMSNorm and with its residual. The mixer is
    attention (`self_attn`) or, for kind LINEAR_ATTENTION (Qwen3.5), a Gated DeltaNet
    (`linear_attn`, model/delta_net.py)."""

    def __init__(
        self,
        cfg: TextConfig,
        *,
        param_dtype,
        dtype,
        attention: str = "auto",
        kind: str = FULL_ATTENTION,
        rngs: nnx.Rngs,
    ):
        norm = dict(param_dtype=param_dtype, offset=cfg.norm_offset)
        self.kind = kind
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        if kind == LINEAR_ATTENTION:
            self.linear_attn = GatedDeltaNet(cfg, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        else:
            self.self_attn = Attention(
                cfg, param_dtype=param_dtype, dtype=dtype, implementation=attention, rngs=rngs
            )
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.mlp = MLP(cfg, param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask, kv_cache=None, index=None):
        x = _tokens(x)
        attn, kv_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache, index)
        return self.feed_forward(x + attn), kv_cache

    def linear(self, x, valid=None, conv_state=None, state=None):
        """The layer with its Gated DeltaNet (GatedDeltaNet.__call__'s arguments). Returns the
        output and the two states."""
        x = _tokens(x)
        mixed, conv_state, state = self.linear_attn(
            self.input_layernorm(x), valid, conv_state, state
        )
        return self.feed_forward(x + mixed), conv_state, state

    def shared_prefix_linear(self, xp, xc, valid_p, valid_c, sample_to_prompt):
        """The Gated DeltaNet layer over prompts xp [P, Lp, hidden] (valid_p [P, Lp]) and the
        completions xc [S, Lc, hidden] (valid_c) that continue them: each completion starts
        from its prompt's final states. Returns both outputs."""
        xp, conv, state = self.linear(xp, valid_p)
        xc, _, _ = self.linear(xc, valid_c, conv[sample_to_prompt], state[sample_to_prompt])
        return xp, xc

    def feed_forward(self, x):
        """The MLP half of the layer with its residual."""
        x = _tokens(x)
        return _tokens(x + self.mlp(self.post_attention_layernorm(x)))

    def shared_prefix(self, xp, xc, rope_p, rope_c, mask_p, mask_c, sample_to_prompt):
        """The layer over prompts xp [P, Lp, hidden] and the completions xc [S, Lc, hidden]
        that continue them (Attention.shared_prefix). Returns both outputs."""
        xp, xc = _tokens(xp), _tokens(xc)
        ap, ac = self.self_attn.shared_prefix(
            self.input_layernorm(xp),
            self.input_layernorm(xc),
            rope_p,
            rope_c,
            mask_p,
            mask_c,
            sample_to_prompt,
        )
        return self.feed_forward(xp + ap), self.feed_forward(xc + ac)


def _tokens(x: jnp.ndarray) -> jnp.ndarray:
    """Hidden states [batch, seq, hidden]: split over the batch axes, whole per token."""
    return constrain(x, ("batch", None, None))


def _heads(x: jnp.ndarray, heads: str) -> jnp.ndarray:
    """[batch, seq, heads, head_dim]: batch over the batch axes, heads over `tensor`."""
    return constrain(x, ("batch", None, heads, None))


def causal_mask(attention_mask: jnp.ndarray) -> Mask:
    """[batch, seq] validity -> the causal Mask over valid keys (dense: Mask.allowed())."""
    return Mask.causal(attention_mask)


def cache_mask(valid: jnp.ndarray, index: jnp.ndarray, length: int) -> Mask:
    """Mask for `length` queries written at slots [index, index + length): each sees the valid
    slots up to and including its own. valid: [batch, slots]; queries [batch, length]."""
    batch, slots = valid.shape
    query_slot = jnp.broadcast_to(index + jnp.arange(length), (batch, length))
    return Mask(valid, q_pos=query_slot, kv_pos=jnp.broadcast_to(jnp.arange(slots), valid.shape))
