"""Building blocks shared by the vision tower and the decoder: dense layers, norms, activations
and masked multi-head attention. Every parameter names its logical axes in the `axes` metadata
(see model/sharding.py for the rules that map them to mesh axes)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

# MASK_VALUE: large negative instead of -inf, so a fully masked row (padding) softmaxes to a
# harmless uniform distribution rather than NaN.
from model.flash import MASK_VALUE, Mask, implementation_for
from model.splash import efficient_attention


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


# What a rematerialised layer keeps for the backward pass (config `model.remat_policy`): "full"
# keeps only its inputs and recomputes the rest; "dots" also keeps the outputs of matmuls without
# batch dimensions (the projections), so the backward pass recomputes only elementwise work and
# attention.
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def normal_init(std: float = 0.02) -> Callable:
    return jax.nn.initializers.normal(stddev=std)


class Dense(nnx.Module):
    """y = x @ kernel (+ bias). kernel: [in, out] with logical axes `axes`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str | None, str | None],
        use_bias: bool = True,
        param_dtype: jnp.dtype = jnp.float32,
        dtype: jnp.dtype = jnp.float32,
        init_std: float = 0.02,
        rngs: nnx.Rngs,
    ):
        self.kernel = nnx.Param(
            normal_init(init_std)(rngs.params(), (in_features, out_features), param_dtype),
            axes=axes,
        )
        self.bias = (
            nnx.Param(jnp.zeros((out_features,), param_dtype), axes=(axes[1],))
            if use_bias
            else None
        )
        self.dtype = dtype

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, scaled after casting back (as Qwen2's reference does). With
    an `offset` (Qwen3.5: 1) the parameter holds scale - offset (initialised to 0) and the norm
    scales in float32 before casting back, as Qwen3.5's reference does."""

    def __init__(
        self,
        dim: int,
        eps: float,
        *,
        param_dtype: jnp.dtype = jnp.float32,
        axis_name="embed",
        offset: float = 0.0,
    ):
        init = jnp.zeros if offset else jnp.ones
        self.scale = nnx.Param(init((dim,), param_dtype), axes=(axis_name,))
        self.eps = eps
        self.offset = offset

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.offset:
            return (x32 * (self.offset + self.scale[...].astype(jnp.float32))).astype(dtype)
        return self.scale[...].astype(dtype) * x32.astype(dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias (Qwen2-VL vision blocks and merger), computed in float32."""

    def __init__(
        self, dim: int, eps: float, *, param_dtype: jnp.dtype = jnp.float32, axis_name="embed"
    ):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=(axis_name,))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), axes=(axis_name,))
        self.eps = eps

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (
            y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        ).astype(dtype)


def quick_gelu(x: jnp.ndarray) -> jnp.ndarray:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "silu": jax.nn.silu,
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    mask: jnp.ndarray | Mask,
    scale: float,
    query_chunk: int = 0,
    implementation: str = "auto",
) -> jnp.ndarray:
    """Masked grouped-query attention, softmax in float32.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim];
    mask: a model.flash.Mask, or [batch, q_len, kv_len] bool (True = may attend; dense only).
    Returns [batch, q_len, heads, head_dim]. `implementation` (config `model.attention`,
    model.flash.IMPLEMENTATIONS): "xla_flash", "splash" and "auto" never hold the scores
    (model.splash.efficient_attention); "dense" below.

    Dense: with `query_chunk` > 0 and q_len above it, the queries go through in blocks of that many
    (a lax.map), so a forward pass holds the scores of one block, [batch, heads, query_chunk,
    kv_len], at a time: on the CPU the blocks stay in cache (a prefill of 4 x 1,088 tokens runs
    1.3x faster with blocks of 128, bench/RESULTS.md). Under differentiation the map keeps every
    block's weights for the backward pass, so training holds all pairs either way (plus the
    padding of the last block).
    """
    if isinstance(mask, Mask):
        if implementation_for(implementation) != "dense":
            return efficient_attention(q, k, v, mask, scale, query_chunk, implementation)
        mask = mask.allowed()
    return in_query_blocks(
        lambda q_blk, mask_blk: _attention_block(q_blk, k, v, mask_blk, scale),
        query_chunk,
        1,
        q,
        mask,
    )


def in_query_blocks(block: Callable, query_chunk: int, axis: int, *per_query: jnp.ndarray):
    """`block(*per_query)` computed `query_chunk` queries at a time (a lax.map over blocks).

    per_query: the queries and the arrays indexed by query (mask rows, segment ids), all with the
    query axis at `axis`; the last block is padded with zeros (False / segment 0: attends
    nowhere) and its padding dropped from the output. One call when query_chunk <= 0 or the
    queries fit in one block. Returns block's output, queries along `axis`.
    """
    n = per_query[0].shape[axis]
    if query_chunk <= 0 or n <= query_chunk:
        return block(*per_query)
    pad = (-n) % query_chunk
    blocks = (n + pad) // query_chunk

    def split(x):  # [..., n, ...] -> [blocks, ..., query_chunk, ...]
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        x = jnp.pad(x, widths)
        return jnp.moveaxis(
            x.reshape(*x.shape[:axis], blocks, query_chunk, *x.shape[axis + 1 :]), axis, 0
        )

    out = jnp.moveaxis(jax.lax.map(lambda a: block(*a), tuple(map(split, per_query))), 0, axis)
    out = out.reshape(*out.shape[:axis], blocks * query_chunk, *out.shape[axis + 2 :])
    return jax.lax.slice_in_dim(out, 0, n, axis=axis)


def softmax_parts(scores: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The softmax over the last axis as numerator exp(scores - max) and denominator (its sum,
    keepdims), for attention that divides its output instead of the probabilities. A fully
    masked row (all MASK_VALUE) gets uniform weights."""
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    return weights, weights.sum(axis=-1, keepdims=True)


def _attention_block(q, k, v, mask, scale):
    """`attention` without chunking. The matmuls run heads-first ([batch, kv_heads, group x
    q_len, head_dim] against [batch, kv_heads, kv_len, head_dim]: no transposes of the score
    matrix), and the softmax's normalisation divides the output instead of the probabilities
    (one pass less over the scores)."""
    b, lq, h, d = q.shape
    kvh = k.shape[2]
    g = h // kvh
    q = (q * scale).reshape(b, lq, kvh, g, d)  # scaling q: one pass less over the scores
    q = q.transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * lq, d)
    k = k.transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kvh, g, lq, -1)
    weights, total = softmax_parts(jnp.where(mask[:, None, None], scores, MASK_VALUE))
    out = jnp.einsum(
        "bkqs,bksd->bkqd",
        weights.reshape(b, kvh, g * lq, -1).astype(v.dtype),
        v,
        preferred_element_type=jnp.float32,
    )
    out = (out.reshape(b, kvh, g, lq, d) / total).astype(v.dtype)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d)
