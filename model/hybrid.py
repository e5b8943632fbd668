"""Qwen3.5's hybrid decoder: Gated DeltaNet layers interleaved with gated full-attention layers
(`TextConfig.layer_types`), run as a scan over groups of layers.

The layer kinds repeat with a period p (Qwen3.5: three linear, one full, p = 4), so the decoder
is num_layers / p identical groups of p layers (`LayerGroup`, children layer_0 .. layer_{p-1})
stacked and scanned like the Qwen2 decoder's layers (model/stack.py); hub layer i is child
i % p of group i // p. A pattern without a shorter period is one group.

The cache (`HybridCache`) holds keys and values for the attention layers only and a fixed-size
state per DeltaNet layer (its convolution's last inputs and its recurrent matrix), so in those
layers a rollout's memory does not grow with the completion.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx, struct

from model.config import FULL_ATTENTION, LINEAR_ATTENTION, TextConfig
from model.text import DecoderLayer, KVCache


def layer_name(position: int) -> str:
    return f"layer_{position}"


class LayerGroup(nnx.Module):
    """One period of the layer pattern: children layer_0 .. layer_{p-1}, each a DecoderLayer of
    its kind."""

    def __init__(self, cfg: TextConfig, kinds: tuple[str, ...], **layer_kwargs):
        self.kinds = kinds
        for j, kind in enumerate(kinds):
            setattr(self, layer_name(j), DecoderLayer(cfg, kind=kind, **layer_kwargs))

    def sublayers(self) -> list[DecoderLayer]:
        return [getattr(self, layer_name(j)) for j in range(len(self.kinds))]


def groups(cfg: TextConfig, **layer_kwargs) -> list[LayerGroup]:
    p = cfg.period
    kinds = cfg.kinds[:p]
    return [LayerGroup(cfg, kinds, **layer_kwargs) for _ in range(cfg.num_layers // p)]


def counts(cfg: TextConfig) -> tuple[int, int]:
    """(full-attention, linear-attention) layers per group."""
    kinds = cfg.kinds[: cfg.period]
    return kinds.count(FULL_ATTENTION), kinds.count(LINEAR_ATTENTION)


@struct.dataclass
class HybridCache:
    """kv: the attention layers' keys and values ([full layers, batch, slots, kv_heads, d]), the
    slot validity and the next slot; conv [linear layers, batch, K-1, channels] and state
    [linear layers, batch, v_heads, k_dim, v_dim] (float32): each DeltaNet layer's state after
    the valid tokens written so far."""

    kv: KVCache
    conv: jnp.ndarray
    state: jnp.ndarray

    @classmethod
    def create(cls, cfg: TextConfig, batch: int, slots: int, dtype=jnp.float32) -> HybridCache:
        full, linear = counts(cfg)
        n = cfg.num_layers // cfg.period
        kv = KVCache.create(cfg, batch, slots, dtype)
        kv_shape = (n * full, *kv.k.shape[1:])
        channels = 2 * cfg.linear_num_key_heads * cfg.linear_key_head_dim
        channels += cfg.linear_num_value_heads * cfg.linear_value_head_dim
        return cls(
            kv=kv.replace(k=jnp.zeros(kv_shape, dtype), v=jnp.zeros(kv_shape, dtype)),
            conv=jnp.zeros((n * linear, batch, cfg.linear_conv_kernel_dim - 1, channels), dtype),
            state=jnp.zeros(
                (
                    n * linear,
                    batch,
                    cfg.linear_num_value_heads,
                    cfg.linear_key_head_dim,
                    cfg.linear_value_head_dim,
                ),
                jnp.float32,
            ),
        )

    @property
    def index(self) -> jnp.ndarray:
        return self.kv.index

    @property
    def valid(self) -> jnp.ndarray:
        return self.kv.valid

    @property
    def slots(self) -> int:
        return self.kv.slots


def _by_group(x: jnp.ndarray | None, per_group: int) -> jnp.ndarray | None:
    """[groups * per_group, ...] -> [groups, per_group, ...]."""
    return None if x is None else x.reshape(-1, per_group, *x.shape[1:])


def run_layers(model, x, cos, sin, mask, valid, cache: HybridCache | None, remat: bool):
    """The hybrid decoder's layers over x [batch, L, hidden]: attention layers with `mask` (and
    the cache's keys and values written at its index), DeltaNet layers over the tokens `valid`
    marks [batch, L], from the cache's states (none: from zero). Returns x and, with a cache,
    the new (keys, values, conv, state)."""
    cfg = model.config.text
    full, linear = counts(cfg)
    index = None if cache is None else cache.index

    def body(group, carry, per_group):
        x, kv = carry
        g, conv, state = per_group
        new_conv, new_state = [], []
        f = l_ = 0
        for layer in group.sublayers():
            if layer.kind == LINEAR_ATTENTION:
                c = None if conv is None else conv[l_]
                s = None if state is None else state[l_]
                x, c, s = layer.linear(x, valid, c, s)
                new_conv.append(c)
                new_state.append(s)
                l_ += 1
            else:
                kv_layer = None if kv is None else (*kv, g * full + f)
                x, kv_layer = layer(x, cos, sin, mask, kv_layer, index)
                kv = None if kv_layer is None else kv_layer[:2]
                f += 1
        ys = None if cache is None else (jnp.stack(new_conv), jnp.stack(new_state))
        return (x, kv), ys

    n = cfg.num_layers // cfg.period
    if cache is None:
        per_group = (jnp.arange(n), None, None)
        kv = None
    else:
        per_group = (jnp.arange(n), _by_group(cache.conv, linear), _by_group(cache.state, linear))
        kv = (cache.kv.k, cache.kv.v)
    (x, kv), ys = model.over_layers(body, (x, kv), per_group, remat=remat)
    if cache is None:
        return x, None
    conv, state = (y.reshape(-1, *y.shape[2:]) for y in ys)
    return x, (*kv, conv, state)


def run_shared_prefix(
    model, xp, xc, rope_p, rope_c, mask_p, mask_c, valid_p, valid_c, sample_to_prompt
):
    """`Qwen2VL.shared_prefix_hidden_states`'s layers for the hybrid decoder: attention layers
    as DecoderLayer.shared_prefix, DeltaNet layers from each prompt's final states."""

    def body(group, carry, _):
        xp, xc = carry
        for layer in group.sublayers():
            if layer.kind == LINEAR_ATTENTION:
                xp, xc = layer.shared_prefix_linear(xp, xc, valid_p, valid_c, sample_to_prompt)
            else:
                xp, xc = layer.shared_prefix(
                    xp, xc, rope_p, rope_c, mask_p, mask_c, sample_to_prompt
                )
        return (xp, xc), None

    (xp, xc), _ = model.over_layers(body, (xp, xc), None, remat=model.remat)
    return xp, xc
