"""Memory-efficient attention in plain XLA: an online softmax over blocks of keys with a custom
VJP whose backward pass recomputes each block's scores (FlashAttention-2, Dao 2023).

Neither pass holds the [queries, keys] scores: the forward pass keeps a running maximum, sum and
output per query, the backward pass the gradient of the queries, and both hold one block's
scores, [batch, heads, queries, key_block], at a time. Which keys a query sees is a `Mask` of
per-token arrays (validity, segment ids, positions), never a [queries, keys] array.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

# Masked scores take this finite value, as in model.layers: a fully masked row softmaxes to
# uniform weights over its keys (the dense formulation's result) instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

# Keys per block: one block's scores are [batch, heads, queries, KEY_BLOCK] float32.
KEY_BLOCK = 512


@struct.dataclass
class Mask:
    """Which keys each query may attend, as per-token arrays: key j is visible to query i when
    kv_valid[j], and q_ids[i] == kv_ids[j] (when ids are given), and kv_pos[j] <= q_pos[i] (when
    positions are given: causal).

    kv_valid: [batch, kv_len] bool; q_ids, q_pos: [batch, q_len] int; kv_ids, kv_pos:
    [batch, kv_len] int.
    """

    kv_valid: jnp.ndarray
    q_ids: jnp.ndarray | None = None
    kv_ids: jnp.ndarray | None = None
    q_pos: jnp.ndarray | None = None
    kv_pos: jnp.ndarray | None = None
    # Static: when the positions say no more than "query i sees keys j <= i + causal_offset"
    # (self-attention: 0), a kernel with a static mask (model.splash) can use that diagonal.
    causal_offset: int | None = struct.field(pytree_node=False, default=None)

    @classmethod
    def causal(cls, valid: jnp.ndarray) -> Mask:
        """Each token sees the valid tokens up to and including itself. valid: [batch, seq]."""
        positions = jnp.broadcast_to(jnp.arange(valid.shape[1]), valid.shape)
        return cls(valid.astype(bool), q_pos=positions, kv_pos=positions, causal_offset=0)

    @classmethod
    def segments(cls, ids: jnp.ndarray) -> Mask:
        """Each token sees the tokens of its own segment; id 0 is padding (sees nothing, is seen
        by nothing). ids: [batch, seq] int."""
        return cls(ids > 0, q_ids=ids, kv_ids=ids)

    def allowed(self) -> jnp.ndarray:
        """The dense mask [batch, q_len, kv_len] bool (for the dense formulation and tests)."""
        allowed = self.kv_valid[:, None, :]
        if self.q_ids is not None:
            allowed = allowed & (self.q_ids[:, :, None] == self.kv_ids[:, None, :])
        if self.q_pos is not None:
            allowed = allowed & (self.kv_pos[:, None, :] <= self.q_pos[:, :, None])
        return allowed

    def pad_queries(self, pad: int) -> Mask:
        """The mask with `pad` more queries at the end (they see what query ids/positions 0 do;
        their outputs are dropped)."""
        widths = ((0, 0), (0, pad))
        return self.replace(
            q_ids=None if self.q_ids is None else jnp.pad(self.q_ids, widths),
            q_pos=None if self.q_pos is None else jnp.pad(self.q_pos, widths),
        )


def flash_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    mask: Mask,
    scale: float,
    query_chunk: int = 0,
    key_block: int | None = None,
) -> jnp.ndarray:
    """Masked grouped-query attention without the scores, softmax in float32.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim]. Returns
    [batch, q_len, heads, head_dim], equal to model.layers.attention with mask.allowed(); a query
    that sees no key gets the mean of all values, as there. With `query_chunk` > 0 the queries also
    go in blocks of that many (a lax.map), so a block's scores are [batch, heads, query_chunk,
    key_block]. `key_block`: keys per block (default KEY_BLOCK, read at each call).
    """
    b, lq, h, d = q.shape
    lk, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    block = _block_size(lk, key_block or KEY_BLOCK)
    pad_k = (-lk) % block
    # Heads first (no transposes of the scores); scaling q: one pass less over the scores.
    qh = (q * scale).reshape(b, lq, kvh, g, d).transpose(0, 2, 3, 1, 4)  # [b, kvh, g, lq, d]

    def keys_in_blocks(x):  # [b, lk, kvh, d] -> [blocks, b, kvh, block, d]
        x = jnp.pad(x, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
        return x.reshape(b, -1, block, kvh, d).transpose(1, 0, 3, 2, 4)

    def per_key_in_blocks(x):  # [b, lk] -> [blocks, b, block]
        if x is None:
            return None
        return jnp.pad(x, ((0, 0), (0, pad_k))).reshape(b, -1, block).transpose(1, 0, 2)

    kb, vb = keys_in_blocks(k), keys_in_blocks(v)
    key_parts = tuple(map(per_key_in_blocks, (mask.kv_valid, mask.kv_ids, mask.kv_pos)))
    real = (jnp.arange(lk + pad_k) < lk).reshape(-1, block)  # [blocks, block]: not key padding

    def run(qh_blk, q_ids, q_pos):
        return _flash(qh_blk, kb, vb, (q_ids, q_pos), key_parts, real)

    if query_chunk <= 0 or lq <= query_chunk:
        out = run(qh, mask.q_ids, mask.q_pos)
    else:
        pad_q = (-lq) % query_chunk
        n = (lq + pad_q) // query_chunk
        padded = mask.pad_queries(pad_q)
        q_blocks = jnp.pad(qh, ((0, 0),) * 3 + ((0, pad_q), (0, 0)))
        q_blocks = q_blocks.reshape(b, kvh, g, n, query_chunk, d).transpose(3, 0, 1, 2, 4, 5)

        def per_query_in_blocks(x):  # [b, lq + pad] -> [n, b, query_chunk]
            return None if x is None else x.reshape(b, n, query_chunk).transpose(1, 0, 2)

        out = jax.lax.map(
            lambda a: run(*a),
            (q_blocks, per_query_in_blocks(padded.q_ids), per_query_in_blocks(padded.q_pos)),
        )  # [n, b, kvh, g, query_chunk, d]
        out = out.transpose(1, 2, 3, 0, 4, 5).reshape(b, kvh, g, n * query_chunk, d)[:, :, :, :lq]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d)


def _block_size(length: int, most: int) -> int:
    """Keys per block, between half of `most` and `most`, in multiples of 128 (a TPU vector
    register's lanes) when `most` allows: the size that pads the last block least, the larger on
    a tie (600 keys: 2 x 384 = 768 padded, not 2 x 512 = 1,024)."""
    if length <= most:
        return length
    multiple = 128 if most >= 256 else 1
    sizes = range(max(multiple, most // 2 // multiple * multiple), most + 1, multiple)
    return min(sizes, key=lambda size: (-(-length // size) * size, -size))


# Checkpointed with nothing saved: when layers are scanned, JAX's linearisation of the layer scan
# would otherwise hoist the masks (computed only from loop-invariant per-token arrays) out of the
# loop as residuals, every key block's [queries, block] mask at once: pred[256, ..., 131072, 512],
# 128 GiB, at 131,072 tokens. Recomputed here, a block's mask exists one block at a time.
@functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
def _scores(qh, k_blk, query_parts, key_parts, real_blk):
    """One key block's masked scores [b, kvh, g, lq, block] float32 and where they are allowed."""
    s = jnp.einsum("bkgqd,bksd->bkgqs", qh, k_blk, preferred_element_type=jnp.float32)
    (q_ids, q_pos), (kv_valid, kv_ids, kv_pos) = query_parts, key_parts
    allowed = kv_valid[:, None, :]
    if q_ids is not None:
        allowed = allowed & (q_ids[:, :, None] == kv_ids[:, None, :])
    if q_pos is not None:
        allowed = allowed & (kv_pos[:, None, :] <= q_pos[:, :, None])
    allowed = allowed[:, None, None]  # [b, 1, 1, lq, block]
    s = jnp.where(allowed, s, MASK_VALUE)
    # Key padding: outside the softmax altogether, also for a fully masked row.
    return jnp.where(real_blk, s, -jnp.inf), allowed & real_blk


@jax.custom_vjp
def _flash(qh, kb, vb, query_parts, key_parts, real):
    """qh: [b, kvh, g, lq, d] scaled queries; kb, vb: [blocks, b, kvh, block, d]; the mask's
    per-query and per-key (in blocks) arrays; real: [blocks, block]. Returns [b, kvh, g, lq, d]."""
    return _flash_forward(qh, kb, vb, query_parts, key_parts, real)[0]


def _flash_forward(qh, kb, vb, query_parts, key_parts, real):
    stats = qh.shape[:-1]

    def step(carry, blk):
        m, total, acc = carry
        k_blk, v_blk, key_blk, real_blk = blk
        s, _ = _scores(qh, k_blk, query_parts, key_blk, real_blk)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.exp(s - m_new[..., None])
        correction = jnp.exp(m - m_new)
        total = total * correction + p.sum(axis=-1)
        pv = jnp.einsum(
            "bkgqs,bksd->bkgqd", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32
        )
        return (m_new, total, acc * correction[..., None] + pv), None

    init = (
        jnp.full(stats, MASK_VALUE, jnp.float32),
        jnp.zeros(stats, jnp.float32),
        jnp.zeros(qh.shape, jnp.float32),
    )
    (m, total, acc), _ = jax.lax.scan(step, init, (kb, vb, key_parts, real))
    out = (acc / total[..., None]).astype(vb.dtype)
    # The maximum and the sum are kept apart (not as log-sum-exp): for a fully masked row
    # MASK_VALUE + log(total) rounds to MASK_VALUE in float32 and would lose the 1 / total.
    return out, (qh, kb, vb, query_parts, key_parts, real, out, m, total)


def _flash_backward(residuals, d_out):
    qh, kb, vb, query_parts, key_parts, real, out, m, total = residuals
    d_out32 = d_out.astype(jnp.float32)
    delta = jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1)  # rowsum(dO * O)

    f32 = jnp.float32
    d_out = d_out.astype(vb.dtype)

    def step(dq, blk):
        # Every matmul takes its operands in the compute dtype and accumulates in float32 (as the
        # dense formulation's backward pass does); the softmax statistics stay float32.
        k_blk, v_blk, key_blk, real_blk = blk
        s, allowed = _scores(qh, k_blk, query_parts, key_blk, real_blk)
        p = jnp.exp(s - m[..., None]) / total[..., None]
        dv = jnp.einsum(
            "bkgqs,bkgqd->bksd", p.astype(v_blk.dtype), d_out, preferred_element_type=f32
        )
        dp = jnp.einsum("bkgqd,bksd->bkgqs", d_out, v_blk, preferred_element_type=f32)
        # Masked scores are constants in the dense formulation: no gradient through them.
        ds = jnp.where(allowed, p * (dp - delta[..., None]), 0.0)
        dq = dq + jnp.einsum(
            "bkgqs,bksd->bkgqd", ds.astype(k_blk.dtype), k_blk, preferred_element_type=f32
        )
        dk = jnp.einsum("bkgqs,bkgqd->bksd", ds.astype(qh.dtype), qh, preferred_element_type=f32)
        return dq, (dk.astype(k_blk.dtype), dv.astype(v_blk.dtype))

    dq, (dk, dv) = jax.lax.scan(step, jnp.zeros(qh.shape, jnp.float32), (kb, vb, key_parts, real))
    no_grad = jax.tree.map(_zero_cotangent, (query_parts, key_parts, real))
    return (dq.astype(qh.dtype), dk, dv, *no_grad)


def _zero_cotangent(x):
    return jnp.zeros(x.shape, jax.dtypes.float0)


_flash.defvjp(_flash_forward, _flash_backward)


# The implementations of config `model.attention` (model.layers.attention):
# "dense": the scores [batch, heads, q_len, kv_len] materialised, in the forward pass (in query
# blocks where asked) and in full under differentiation: memory grows with the square of the
# length; "xla_flash": this module, one key block's scores at a time in both passes, on every
# backend; "splash": the Pallas TPU kernel (model.splash; on a CPU in interpret mode, for tests);
# "auto": splash where the program is for a TPU (model.splash.target_platform) and the mask maps
# onto it, xla_flash elsewhere. cuDNN's fused attention is not wired in: it cannot be compiled
# ahead of time from a CPU host, so nothing here could check it (GPUs run xla_flash).
IMPLEMENTATIONS = ("auto", "dense", "xla_flash", "splash")


def implementation_for(name: str) -> str:
    """`name` checked against IMPLEMENTATIONS (config `model.attention`)."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention {name!r}; known: {', '.join(IMPLEMENTATIONS)}")
    return name
