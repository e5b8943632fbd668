"""The vision tower of Qwen2-VL, Qwen2.5-VL and Qwen3-VL: patch embedding (Qwen3-VL: plus learned
position embeddings interpolated to each image), transformer blocks with 2-D RoPE and
block-diagonal (or windowed) attention, the 2x2 patch merger, and Qwen3-VL's DeepStack mergers of
intermediate blocks' outputs.

It consumes the packed arrays of model/packing.py: all images and videos of a batch in one
sequence of patches, padded to a static length, or such sequences in chunks of whole temporal
slices (a leading chunk axis, jaxvrl.rollout.vision_chunks): attention never crosses a slice,
so a chunk is attended on its own and memory and work grow with chunks x chunk length instead of
with the square of all patches.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import stack
from model.config import VisionConfig
from model.flash import Mask, implementation_for
from model.layers import (
    MASK_VALUE,
    Dense,
    LayerNorm,
    RMSNorm,
    activation,
    in_query_blocks,
    normal_init,
    softmax_parts,
)
from model.rope import apply_rotary, vision_cos_sin
from model.splash import efficient_attention


def segment_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    segments: jnp.ndarray,
    scale: float,
    query_chunk: int,
    implementation: str = "auto",
) -> jnp.ndarray:
    """Attention restricted to equal, non-zero segment ids (block-diagonal), softmax in float32.

    q, k, v: [patches, heads, head_dim]; segments: [patches] int (0 = padding).
    Queries are processed `query_chunk` at a time. "xla_flash" (model.flash): one key block's
    scores at a time, also in the backward pass. "dense": a forward pass holds the scores of one
    query block (under differentiation the map keeps every block's weights).
    """
    if implementation_for(implementation) != "dense":
        mask = Mask.segments(segments[None])
        return efficient_attention(
            q[None], k[None], v[None], mask, scale, query_chunk, implementation
        )[0]
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


def window_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    windows: jnp.ndarray,
    scale: float,
    reach: int,
    implementation: str = "auto",
) -> jnp.ndarray:
    """Attention restricted to equal, non-zero window ids, for ids that form contiguous runs of at
    most `reach` patches (Qwen2.5-VL's windows after the window permutation); softmax in float32.

    q, k, v: [patches, heads, head_dim]; windows: [patches] int (0 = padding). Queries go in blocks
    of `reach`; block b scores only the keys [(b - 1) * reach, (b + 2) * reach), which hold every
    window that touches the block: 3 * reach keys per query instead of all patches. "xla_flash"
    (model.flash) goes over those keys in blocks with its own backward pass; "dense" holds
    [blocks, heads, reach, 3 * reach] scores (under differentiation too).
    """
    n, heads, dim = q.shape
    blocks = -(-n // reach)
    pad = blocks * reach - n

    def in_blocks(x, before, after):  # [n, ...] -> [blocks + before + after, reach, ...]
        x = jnp.pad(x, [(before * reach, (after * reach) + pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(-1, reach, *x.shape[1:])

    def neighbourhood(x):  # [n, ...] -> [blocks, 3 * reach, ...]: each block with its neighbours
        x = in_blocks(x, 1, 1)
        return jnp.concatenate([x[:-2], x[1:-1], x[2:]], axis=1)

    ids_q = in_blocks(windows, 0, 0)  # [blocks, reach]
    ids_k = neighbourhood(windows)  # [blocks, 3 * reach]
    if implementation_for(implementation) != "dense":
        out = efficient_attention(
            in_blocks(q, 0, 0),
            neighbourhood(k),
            neighbourhood(v),
            Mask(ids_k > 0, ids_q, ids_k),
            scale,
            implementation=implementation,
        )  # [blocks, reach, heads, dim]
        return out.reshape(blocks * reach, heads, dim)[:n]
    q_blk = (in_blocks(q, 0, 0) * scale).transpose(0, 2, 1, 3)  # [blocks, heads, reach, dim]
    k_blk = neighbourhood(k).transpose(0, 2, 1, 3)  # [blocks, heads, 3 * reach, dim]
    v_blk = neighbourhood(v).transpose(0, 2, 1, 3)
    allowed = (ids_q[:, :, None] == ids_k[:, None, :]) & (ids_q[:, :, None] > 0)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q_blk, k_blk, preferred_element_type=jnp.float32)
    weights, total = softmax_parts(jnp.where(allowed[:, None], scores, MASK_VALUE))
    out = jnp.einsum(
        "bhqk,bhkd->bhqd", weights.astype(v.dtype), v_blk, preferred_element_type=jnp.float32
    )
    out = (out / total).astype(v.dtype).transpose(0, 2, 1, 3)  # [blocks, reach, heads, dim]
    return out.reshape(blocks * reach, heads, dim)[:n]


class VisionAttention(nnx.Module):
    """Multi-head attention over one sequence of patches: among equal segment ids (temporal
    slices; `window_reach` 0), or among equal window ids whose windows hold at most `window_reach`
    patches (Qwen2.5-VL's window layers)."""

    def __init__(
        self,
        cfg: VisionConfig,
        *,
        param_dtype,
        dtype,
        window_reach: int,
        implementation: str = "auto",
        rngs,
    ):
        d = cfg.hidden_size
        kw = dict(param_dtype=param_dtype, dtype=dtype, init_std=cfg.initializer_range, rngs=rngs)
        self.qkv = Dense(d, 3 * d, axes=("embed", "qkv"), **kw)
        self.proj = Dense(d, d, axes=("qkv", "embed"), **kw)
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.window_reach = window_reach
        self.query_chunk = 512  # queries per block of segment_attention
        self.implementation = implementation  # config `model.attention` (model.flash)

    def __call__(self, x, cos, sin, segments, windows, windowed):
        """segments, windows: segment and window ids [patches]; windowed: whether this block
        attends within windows (a Python bool, or a traced one inside the scan over blocks:
        then both kinds are in the program and one runs)."""
        n = x.shape[0]
        q, k, v = jnp.split(self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim), 3, axis=1)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        scale = self.head_dim**-0.5

        def in_windows(q, k, v):
            return window_attention(q, k, v, windows, scale, self.window_reach, self.implementation)

        def in_segments(q, k, v):
            return segment_attention(
                q, k, v, segments, scale, self.query_chunk, self.implementation
            )

        if not self.window_reach or windowed is False:
            out = in_segments(q, k, v)
        elif windowed is True:
            out = in_windows(q, k, v)
        else:
            out = jax.lax.cond(windowed, in_windows, in_segments, q, k, v)
        return self.proj(out.reshape(n, -1))


class VisionMLP(nnx.Module):
    """Qwen2-VL: fc1 -> QuickGELU -> fc2. Qwen2.5-VL: SwiGLU (gate, up, down). Qwen3-VL:
    linear_fc1 -> tanh GELU -> linear_fc2. All with bias; the names are the checkpoints'."""

    def __init__(self, cfg: VisionConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(param_dtype=param_dtype, dtype=dtype, init_std=cfg.initializer_range, rngs=rngs)
        self.gated = cfg.is_windowed
        self.qwen3 = cfg.generation == "qwen3_vl"
        if self.gated:
            self.gate_proj = Dense(d, f, axes=("embed", "mlp"), **kw)
            self.up_proj = Dense(d, f, axes=("embed", "mlp"), **kw)
            self.down_proj = Dense(f, d, axes=("mlp", "embed"), **kw)
        elif self.qwen3:
            self.linear_fc1 = Dense(d, f, axes=("embed", "mlp"), **kw)
            self.linear_fc2 = Dense(f, d, axes=("mlp", "embed"), **kw)
        else:
            self.fc1 = Dense(d, f, axes=("embed", "mlp"), **kw)
            self.fc2 = Dense(f, d, axes=("mlp", "embed"), **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        if self.qwen3:
            return self.linear_fc2(self.act(self.linear_fc1(x)))
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nnx.Module):
    def __init__(
        self,
        cfg: VisionConfig,
        *,
        param_dtype,
        dtype,
        window_reach: int,
        attention: str = "auto",
        rngs,
    ):
        norm = RMSNorm if cfg.is_windowed else LayerNorm
        self.norm1 = norm(cfg.hidden_size, 1e-6, param_dtype=param_dtype)
        self.norm2 = norm(cfg.hidden_size, 1e-6, param_dtype=param_dtype)
        self.attn = VisionAttention(
            cfg,
            param_dtype=param_dtype,
            dtype=dtype,
            window_reach=window_reach,
            implementation=attention,
            rngs=rngs,
        )
        self.mlp = VisionMLP(cfg, param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segments, windows, windowed):
        """VisionAttention's ids and flag: attention within windows or within segments."""
        x = x + self.attn(self.norm1(x), cos, sin, segments, windows, windowed)
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


class Qwen3PatchMerger(nnx.Module):
    """Qwen3-VL's merger: LayerNorm over each patch (the main merger) or over each concatenated
    2x2 window (`postshuffle`: the DeepStack mergers), then linear_fc1 -> GELU -> linear_fc2 to
    the text width."""

    def __init__(self, cfg: VisionConfig, *, postshuffle: bool, param_dtype, dtype, rngs):
        wide = cfg.hidden_size * cfg.merge_unit
        kw = dict(param_dtype=param_dtype, dtype=dtype, init_std=cfg.initializer_range, rngs=rngs)
        self.norm = LayerNorm(
            wide if postshuffle else cfg.hidden_size, 1e-6, param_dtype=param_dtype
        )
        self.linear_fc1 = Dense(wide, wide, axes=("embed", "mlp"), **kw)
        self.linear_fc2 = Dense(wide, cfg.out_hidden_size, axes=("mlp", "embed"), **kw)
        self.postshuffle = postshuffle
        self.wide = wide

    def __call__(self, x):
        if self.postshuffle:
            x = self.norm(x.reshape(-1, self.wide))
        else:
            x = self.norm(x).reshape(-1, self.wide)
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=False))


def interpolated_pos_embed(
    table: jnp.ndarray, pos_hw: jnp.ndarray, grid_hw: jnp.ndarray
) -> jnp.ndarray:
    """Qwen3-VL's learned position embeddings resampled to each image's patch grid: a bilinear
    interpolation with aligned corners (torch `F.interpolate(..., align_corners=True)`) of the
    side x side table at every patch's (row, column).

    table: [side * side, hidden]; pos_hw: [N, 2] (row, column); grid_hw: [N, 2] the height and
    width of the patch's slice, in patches. Returns [N, hidden] in the table's dtype.
    """
    side = math.isqrt(table.shape[0])
    size = jnp.maximum(grid_hw.astype(jnp.float32) - 1, 1)
    src = pos_hw.astype(jnp.float32) * (side - 1) / size  # [N, 2] in table cells
    low = jnp.floor(src)
    frac = src - low
    low = low.astype(jnp.int32)
    taps = (jnp.clip(low, 0, side - 1), jnp.clip(low + 1, 0, side - 1))
    weights = (1 - frac, frac)
    out = 0
    for th, wh in zip(taps, weights, strict=True):
        for tw, ww in zip(taps, weights, strict=True):
            rows = table[th[:, 0] * side + tw[:, 1]].astype(jnp.float32)
            out = out + rows * (wh[:, 0] * ww[:, 1])[:, None]
    return out.astype(table.dtype)


class VisionTower(nnx.Module):
    """Patches -> merged vision features, one per image/video pad token."""

    def __init__(
        self,
        cfg: VisionConfig,
        *,
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        remat: bool = False,
        remat_policy: str = "full",
        attention: str = "auto",
        scan_blocks: bool = True,
        rngs: nnx.Rngs,
    ):
        """remat: recompute each block's activations in the backward pass, keeping what
        `remat_policy` names (model.layers.REMAT_POLICIES). attention: the blocks' attention
        implementation (model.flash). scan_blocks: the blocks as one stack run by a scan
        (model/stack.py), else one copy of each in the program."""
        self.cfg = cfg
        self.dtype = dtype
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        qwen3 = cfg.generation == "qwen3_vl"
        self.patch_embed = Dense(
            cfg.patch_dim,
            cfg.hidden_size,
            axes=(None, "embed"),
            use_bias=qwen3,
            init_std=cfg.initializer_range,
            **kw,
        )
        self.pos_embed = (
            nnx.Param(
                normal_init(cfg.initializer_range)(
                    rngs.params(), (cfg.num_position_embeddings, cfg.hidden_size), param_dtype
                ),
                axes=(None, "embed"),
            )
            if cfg.has_pos_embed
            else None
        )
        # A Qwen2.5-VL window is `side` x `side` merge units (partial at the right and bottom).
        side = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size
        window_patches = side * side * cfg.merge_unit
        # Every block knows the window size; `_windowed(i)` says which blocks use windows.
        blocks = [
            VisionBlock(
                cfg,
                window_reach=window_patches if cfg.is_windowed else 0,
                attention=attention,
                **kw,
            )
            for _ in range(cfg.depth)
        ]
        self.blocks = stack.stacked(blocks) if scan_blocks else nnx.List(blocks)
        if qwen3:
            self.merger = Qwen3PatchMerger(cfg, postshuffle=False, **kw)
            self.deepstack_merger_list = nnx.List(
                [Qwen3PatchMerger(cfg, postshuffle=True, **kw) for _ in range(cfg.deepstack)]
            )
        else:
            self.merger = PatchMerger(cfg, **kw)
        self.remat = remat
        self.remat_policy = remat_policy

    def _windowed(self, block: int) -> bool:
        return self.cfg.is_windowed and block not in self.cfg.fullatt_block_indexes

    def __call__(self, vision: dict[str, jnp.ndarray]) -> jnp.ndarray:
        """vision: the dict of model/packing.py (patches [N, patch_dim], pos_hw [N, 2],
        segment_ids [N], window_ids [N], window_index [N/4]); or chunks of whole temporal slices
        (jaxvrl.rollout.vision_chunks: the same arrays with a leading chunk axis [K, C, ...]
        and feature_index [F], each merged feature's row in the chunks' flattened outputs).

        Qwen3-VL also needs grid_hw [N, 2] (each patch's slice height and width, for the
        position embeddings).

        Returns the merged features in the original item order: [N/4, width], or [F, width]
        from chunks (attended chunk by chunk, side by side). width is out_hidden_size; with
        DeepStack (Qwen3-VL) (1 + deepstack) x out_hidden_size: the merger's features, then
        each DeepStack merger's, side by side along the last axis.
        """
        if vision["patches"].ndim == 2:
            return self._features(vision)
        chunks = {k: v for k, v in vision.items() if k != "feature_index"}
        features = jax.vmap(self._features)(chunks)  # [K, C/4, out_hidden_size]
        return features.reshape(-1, features.shape[-1])[vision["feature_index"]]

    def _features(self, vision: dict[str, jnp.ndarray]) -> jnp.ndarray:
        """The tower on one packed sequence (no chunk axis) -> [N/4, width] (`__call__`)."""
        cfg = self.cfg
        unit = cfg.merge_unit
        x = self.patch_embed(vision["patches"].astype(self.dtype))
        if self.pos_embed is not None:
            table = self.pos_embed[...].astype(self.dtype)
            x = x + interpolated_pos_embed(table, vision["pos_hw"], vision["grid_hw"])
        n = x.shape[0]
        cos, sin = vision_cos_sin(vision["pos_hw"], cfg.head_dim, cfg.rope_theta)
        segments, windows = vision["segment_ids"], vision["window_ids"]
        order = vision["window_index"]
        if cfg.is_windowed:
            # Put each attention window's merge units next to each other (Qwen2.5-VL): window
            # attention needs its windows contiguous, and the merger groups units in this order
            # as the reference does.
            def permute(a):
                return a.reshape(n // unit, unit, *a.shape[1:])[order].reshape(a.shape)

            x, cos, sin, segments, windows = map(permute, (x, cos, sin, segments, windows))

        def body(block, x, windowed):
            if windowed is None or isinstance(windowed, np.bool_):
                windowed = bool(windowed)  # decided when tracing: one kind in the program
            return block(x, cos, sin, segments, windows, windowed), None

        # Which blocks attend within windows (Qwen2-VL: none, so no flag and no cond). A scan
        # traces the flag per block; the unrolled loop gets NumPy values, each block's kind
        # decided when tracing.
        kinds = np.array([self._windowed(i) for i in range(cfg.depth)])
        flags = kinds if kinds.any() else None
        policy = self.remat_policy if self.remat else None
        if not cfg.deepstack:
            x, _ = stack.run(self.blocks, body, x, flags, remat_policy=policy)
            merged = self.merger(x)
            if cfg.is_windowed:
                merged = merged[jnp.argsort(order)]
            return merged
        # DeepStack: the blocks run in ranges ending at each tapped block, whose output goes
        # through its own merger.
        # In depth order, as transformers: the j-th tapped block in depth goes to decoder layer
        # j, through the merger at the block's place in the list.
        taps = cfg.deepstack_visual_indexes
        deep, start = [], 0
        for j in sorted(range(len(taps)), key=taps.__getitem__):
            x, _ = stack.run_range(
                self.blocks, start, taps[j] + 1, body, x, flags, remat_policy=policy
            )
            deep.append(self.deepstack_merger_list[j](x))
            start = taps[j] + 1
        x, _ = stack.run_range(self.blocks, start, cfg.depth, body, x, flags, remat_policy=policy)
        return jnp.concatenate([self.merger(x), *deep], axis=-1)
