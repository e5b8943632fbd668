"""Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention) behind model.flash's
Mask, and the choice between it and model.flash's XLA version.

The kernel's mask is static: which [query block, key block] tiles it computes is fixed when the
program is traced, and per-token segment ids decide inside a tile. A `Mask` maps onto it when its
causal condition is a fixed diagonal (`Mask.causal_offset`: causal self-attention, completions
after a shared prompt) or when it has no positions (packed vision segments, Qwen2.5-VL's
windows); the validity and the segment ids become the kernel's segment ids. A cache's mask (the
query's slot is a traced index) does not map, and stays on the XLA version.

Outputs at padding queries (valid False, id 0) differ from the XLA version's, which gives a query
that sees nothing the mean of all values: here a padding query sees the padding before it. Real
queries, and every gradient that reaches real outputs, are the same (tests/test_model_splash.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import PartitionSpec

from model import sharding
from model.flash import Mask, flash_attention

# A TPU vector register's lanes: the kernel's blocks are multiples of it, and so are the padded
# lengths.
LANES = 128
# Queries / keys per kernel block at most (MaxText's default); smaller when the length is.
MOST = 512
# The segment id of the padding that rounds a length up to LANES: seen by no real query.
PADDING_ID = -1


def maps_onto_kernel(mask: Mask) -> bool:
    """Whether the kernel computes `mask`: positions absent, or causal on a fixed diagonal."""
    return mask.q_pos is None or mask.causal_offset is not None


def efficient_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    mask: Mask,
    scale: float,
    query_chunk: int = 0,
    implementation: str = "auto",
) -> jnp.ndarray:
    """Attention without the [queries, keys] scores, by `implementation` (config
    `model.attention`): "xla_flash" (model.flash, every backend), "splash" (this kernel; TPU, or
    the CPU in interpret mode), or "auto": the kernel when the program is for a TPU
    (target_platform: also a TPU slice compiled from a CPU host) and the mask maps onto it,
    model.flash otherwise. Shapes as model.flash.flash_attention."""
    maps = maps_onto_kernel(mask)
    if implementation == "splash" and not maps:
        raise ValueError("splash attention takes no mask with traced positions (a KV cache)")
    on_tpu = target_platform() == "tpu"
    if implementation == "splash" or (implementation == "auto" and maps and on_tpu):
        return splash_attention(q, k, v, mask, scale, interpret=not on_tpu)
    return flash_attention(q, k, v, mask, scale, query_chunk)


def target_platform() -> str:
    """The platform the program being traced is for: the context mesh's devices (an
    activation_layout's mesh; for the fit check, a TPU slice described from a CPU host), else
    this process's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None:
        return mesh.abstract_device.platform
    return jax.default_backend()


def splash_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    mask: Mask,
    scale: float,
    interpret: bool = False,
) -> jnp.ndarray:
    """The kernel on `mask` (maps_onto_kernel). q: [batch, q_len, heads, head_dim]; k, v:
    [batch, kv_len, kv_heads, head_dim]. Returns [batch, q_len, heads, head_dim] in q's dtype.
    Under an activation layout (model.sharding) the kernel runs per device on its batch rows and
    heads (shard_map): a Pallas call is not partitioned by XLA."""
    b, lq, h, _ = q.shape
    lk, kvh = k.shape[1], k.shape[2]
    pq, pk = _round_up(lq), _round_up(lk)
    q_ids, kv_ids = _segment_ids(mask, lq)
    q_ids = jnp.pad(q_ids, ((0, 0), (0, pq - lq)), constant_values=PADDING_ID)
    kv_ids = jnp.pad(kv_ids, ((0, 0), (0, pk - lk)), constant_values=PADDING_ID)

    def heads_first(x, length):  # [b, len, heads, d] -> [b, heads, padded len, d]
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    qh, kh, vh = heads_first(q * scale, pq), heads_first(k, pk), heads_first(v, pk)

    def per_device(qh, kh, vh, q_ids, kv_ids):
        local = _kernel(qh.shape[1], pq, pk, mask.causal_offset, interpret)
        ids = kernel_lib.SegmentIds(q=q_ids, kv=kv_ids)
        return jax.vmap(local)(qh, kh, vh, ids)

    out = _on_the_mesh(per_device, (qh, kh, vh, q_ids, kv_ids), b, h, kvh)
    return out[:, :, :lq].transpose(0, 2, 1, 3).astype(q.dtype)


def _round_up(length: int) -> int:
    return -(-length // LANES) * LANES


def _block(length: int) -> int:
    """The largest multiple of LANES up to MOST that divides `length` (a multiple of LANES)."""
    return max(size for size in range(LANES, MOST + 1, LANES) if length % size == 0)


def _segment_ids(mask: Mask, lq: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """[batch, q_len] and [batch, kv_len] int32 ids: equal ids may attend. A key not valid gets id
    0; a query gets its own id (mask.q_ids) or 1 (causal: every query sees the valid keys)."""
    kv = mask.kv_ids if mask.kv_ids is not None else jnp.ones(mask.kv_valid.shape, jnp.int32)
    kv = jnp.where(mask.kv_valid, kv, 0).astype(jnp.int32)
    if mask.q_ids is not None:
        q = mask.q_ids.astype(jnp.int32)
    else:
        q = jnp.ones((mask.kv_valid.shape[0], lq), jnp.int32)
    return q, kv


def _kernel(heads: int, pq: int, pk: int, causal_offset: int | None, interpret: bool):
    """The splash kernel for one sequence: [heads, pq, d] queries over [kv_heads, pk, d] keys,
    causal on the diagonal `causal_offset` (None: every tile)."""
    if causal_offset is None:
        one = mask_lib.FullMask((pq, pk))
    else:
        one = mask_lib.CausalMask((pq, pk), offset=causal_offset)
    bq, bk = _block(pq), _block(pk)
    blocks = kernel_lib.BlockSizes(
        block_q=bq,
        block_kv=bk,
        block_kv_compute=bk,
        block_q_dkv=bq,
        block_kv_dkv=bk,
        block_kv_dkv_compute=bk,
        block_q_dq=bq,
        block_kv_dq=bk,
    )
    # Built in each trace: its mask tables become that program's constants (a kernel cached
    # across traces would carry one trace's values into another).
    return kernel_lib.make_splash_mha(
        mask_lib.MultiHeadMask([one] * heads),
        block_sizes=blocks,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _on_the_mesh(fn, args, batch: int, heads: int, kv_heads: int):
    """fn(qh, kh, vh, q_ids, kv_ids) per device of the context mesh (shard_map): batch rows over
    the batch axes and heads over the heads' axes where those divide them (else every device
    takes them all); directly without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(*args)
    rows = sharding.activation_entry("batch", batch, mesh)
    head_axes = sharding.activation_entry("heads", heads, mesh)
    if head_axes != sharding.activation_entry("kv_heads", kv_heads, mesh):
        head_axes = None  # the query heads of a kv head must stay on its device
    per_head = PartitionSpec(rows, head_axes, None, None)
    per_token = PartitionSpec(rows, None)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(per_head, per_head, per_head, per_token, per_token),
        out_specs=per_head,
        check_vma=False,
    )(*args)
