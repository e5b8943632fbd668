"""The vision tower of Qwen2-VL and Qwen2.5-VL: patch embedding, transformer blocks with 2-D RoPE
and block-diagonal (or windowed) attention, and the 2x2 patch merger.

It consumes the packed arrays of model/packing.py: all images and videos of a batch in one
sequence of patches, padded to a static length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.config import VisionConfig
from model.layers import (
    MASK_VALUE,
    Dense,
    LayerNorm,
    RMSNorm,
    activation,
    in_query_blocks,
    softmax_parts,
)
from model.rope import apply_rotary, vision_cos_sin


def segment_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    segments: jnp.ndarray,
    scale: float,
    query_chunk: int,
) -> jnp.ndarray:
    """Attention restricted to equal, non-zero segment ids (block-diagonal), softmax in float32.

    q, k, v: [patches, heads, head_dim]; segments: [patches] int (0 = padding).
    Queries are processed `query_chunk` at a time, so a forward pass holds the scores of one block
    (under differentiation the map keeps every block's weights for the backward pass).
    """
    k = k.transpose(1, 0, 2)  # [heads, patches, head_dim]: the matmuls need no transposes
    v = v.transpose(1, 0, 2)

    def block(q_blk: jnp.ndarray, seg_blk: jnp.ndarray) -> jnp.ndarray:
        q_blk = (q_blk * scale).transpose(1, 0, 2)  # scaling q: one pass less over the scores
        scores = jnp.einsum("hqd,hkd->hqk", q_blk, k, preferred_element_type=jnp.float32)
        allowed = (seg_blk[:, None] == segments[None, :]) & (seg_blk[:, None] > 0)
        # The normalisation divides the output: one pass less over the scores.
        weights, total = softmax_parts(jnp.where(allowed[None], scores, MASK_VALUE))
        out = jnp.einsum(
            "hqk,hkd->hqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32
        )
        return (out / total).astype(v.dtype).transpose(1, 0, 2)

    return in_query_blocks(block, query_chunk, 0, q, segments)


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        kw = dict(param_dtype=param_dtype, dtype=dtype, init_std=cfg.initializer_range, rngs=rngs)
        self.qkv = Dense(d, 3 * d, axes=("embed", "qkv"), **kw)
        self.proj = Dense(d, d, axes=("qkv", "embed"), **kw)
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim

    def __call__(self, x, cos, sin, segments, query_chunk: int):
        n = x.shape[0]
        q, k, v = jnp.split(self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim), 3, axis=1)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        out = segment_attention(q, k, v, segments, self.head_dim**-0.5, query_chunk)
        return self.proj(out.reshape(n, -1))


class VisionMLP(nnx.Module):
    """Qwen2-VL: fc1 -> QuickGELU -> fc2. Qwen2.5-VL: SwiGLU (gate, up, down), all with bias."""

    def __init__(self, cfg: VisionConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(param_dtype=param_dtype, dtype=dtype, init_std=cfg.initializer_range, rngs=rngs)
        self.gated = cfg.is_windowed
        if self.gated:
            self.gate_proj = Dense(d, f, axes=("embed", "mlp"), **kw)
            self.up_proj = Dense(d, f, axes=("embed", "mlp"), **kw)
            self.down_proj = Dense(f, d, axes=("mlp", "embed"), **kw)
        else:
            self.fc1 = Dense(d, f, axes=("embed", "mlp"), **kw)
            self.fc2 = Dense(f, d, axes=("mlp", "embed"), **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        norm = RMSNorm if cfg.is_windowed else LayerNorm
        self.norm1 = norm(cfg.hidden_size, 1e-6, param_dtype=param_dtype)
        self.norm2 = norm(cfg.hidden_size, 1e-6, param_dtype=param_dtype)
        self.attn = VisionAttention(cfg, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.mlp = VisionMLP(cfg, param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segments, query_chunk: int):
        x = x + self.attn(self.norm1(x), cos, sin, segments, query_chunk)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """Norm, then concatenate each 2x2 window of patches, then a GELU MLP to the text width."""

    def __init__(self, cfg: VisionConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        norm = RMSNorm if cfg.is_windowed else LayerNorm
        wide = cfg.hidden_size * cfg.merge_unit
        kw = dict(param_dtype=param_dtype, dtype=dtype, init_std=cfg.initializer_range, rngs=rngs)
        self.ln_q = norm(cfg.hidden_size, 1e-6, param_dtype=param_dtype)
        self.mlp_in = Dense(wide, wide, axes=("embed", "mlp"), **kw)
        self.mlp_out = Dense(wide, cfg.out_hidden_size, axes=("mlp", "embed"), **kw)
        self.wide = wide

    def __call__(self, x):
        x = self.ln_q(x).reshape(-1, self.wide)
        return self.mlp_out(jax.nn.gelu(self.mlp_in(x), approximate=False))


class VisionTower(nnx.Module):
    """Patches -> merged vision features, one per image/video pad token."""

    def __init__(
        self, cfg: VisionConfig, *, param_dtype=jnp.float32, dtype=jnp.float32, rngs: nnx.Rngs
    ):
        self.cfg = cfg
        self.dtype = dtype
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.patch_embed = Dense(
            cfg.patch_dim,
            cfg.hidden_size,
            axes=(None, "embed"),
            use_bias=False,
            init_std=cfg.initializer_range,
            **kw,
        )
        self.blocks = nnx.List([VisionBlock(cfg, **kw) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, **kw)
        self.query_chunk = 512  # queries per attention block (segment_attention)

    def __call__(self, vision: dict[str, jnp.ndarray]) -> jnp.ndarray:
        """vision: the dict of model/packing.py (patches [N, patch_dim], pos_hw [N, 2],
        segment_ids [N], window_ids [N], window_index [N/4]).

        Returns [N/4, out_hidden_size]: merged features in the original item order.
        """
        cfg = self.cfg
        unit = cfg.merge_unit
        x = self.patch_embed(vision["patches"].astype(self.dtype))
        n = x.shape[0]
        cos, sin = vision_cos_sin(vision["pos_hw"], cfg.head_dim, cfg.rope_theta)
        segments, windows = vision["segment_ids"], vision["window_ids"]
        order = vision["window_index"]
        if cfg.is_windowed:
            # Put each attention window's merge units next to each other (Qwen2.5-VL); the
            # attention masks are by id, so the permutation only matters for the merger's grouping
            # and for matching the reference's order exactly.
            def permute(a):
                return a.reshape(n // unit, unit, *a.shape[1:])[order].reshape(a.shape)

            x, cos, sin, segments, windows = map(permute, (x, cos, sin, segments, windows))
        for i, block in enumerate(self.blocks):
            full = (not cfg.is_windowed) or i in cfg.fullatt_block_indexes
            x = block(x, cos, sin, segments if full else windows, self.query_chunk)
        merged = self.merger(x)
        if cfg.is_windowed:
            merged = merged[jnp.argsort(order)]
        return merged
