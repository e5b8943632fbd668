"""Rotary position embeddings: the text M-RoPE, the vision 2-D RoPE, and the host-side position
ids (`rope_index`) that place text and vision tokens on the (temporal, height, width) axes.

Host-side functions use NumPy (they run in data workers); device-side functions use jax.numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig

# ------------------------------------------------------------------------------------------------
# Device side.


def rotate_half(x: jnp.ndarray) -> jnp.ndarray:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotates `x` [..., seq, heads, head_dim] by angles given as cos/sin [..., seq, rotary]:
    the first `rotary` dims of each head rotate, the rest (partial rotary, Qwen3.5) pass."""
    cos = cos[..., None, :]
    sin = sin[..., None, :]
    rotary = cos.shape[-1]
    part = x[..., :rotary].astype(jnp.float32)
    out = (part * cos + rotate_half(part) * sin).astype(x.dtype)
    if rotary == x.shape[-1]:
        return out
    return jnp.concatenate([out, x[..., rotary:]], axis=-1)


def inverse_frequencies(dim: int, theta: float) -> np.ndarray:
    """Standard RoPE inverse frequencies for a rotary dimension `dim` (RoFormer)."""
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))


def mrope_axes(mrope_section: Sequence[int], interleaved: bool = False) -> np.ndarray:
    """The position axis (0 temporal, 1 height, 2 width) of each rotary frequency [head_dim/2].

    Qwen2-VL: contiguous sections, frequency i from axis (section number of i) % 3. Qwen3-VL
    (interleaved): T H W T H W ..., frequency i from axis i % 3 while that axis has frequencies
    left (its section size), the remaining ones from T."""
    if not interleaved:
        return np.repeat(np.arange(len(mrope_section)) % 3, mrope_section)
    index = np.arange(sum(mrope_section))
    axes = np.zeros_like(index)
    for axis in (1, 2):
        axes[(index % 3 == axis) & (index < 3 * mrope_section[axis])] = axis
    return axes


def mrope_cos_sin(
    positions: jnp.ndarray,
    head_dim: int,
    theta: float,
    mrope_section: Sequence[int],
    interleaved: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """M-RoPE angles (Qwen2-VL; Qwen3-VL with `interleaved`): each frequency of the half head dim
    is driven by the temporal, height or width position id (`mrope_axes`).

    positions: [3, batch, seq] int. Returns cos, sin: [batch, seq, head_dim] float32.
    """
    inv_freq = jnp.asarray(inverse_frequencies(head_dim, theta))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, B, L, head_dim/2]
    axis_of_freq = mrope_axes(mrope_section, interleaved)
    onehot = jnp.asarray(np.eye(3, dtype=np.float32)[axis_of_freq].T)  # [3, head_dim/2]
    freqs = jnp.einsum("abld,ad->bld", freqs, onehot)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def vision_cos_sin(
    pos_hw: jnp.ndarray, head_dim: int, theta: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """2-D vision RoPE (Qwen2-VL): a quarter of the head dim rotates with the patch row, a quarter
    with the column, repeated for the two halves.

    pos_hw: [patches, 2] int (row, column). Returns cos, sin: [patches, head_dim] float32.
    """
    inv_freq = jnp.asarray(inverse_frequencies(head_dim // 2, theta))
    freqs = pos_hw.astype(jnp.float32)[..., None] * inv_freq  # [N, 2, head_dim/4]
    freqs = freqs.reshape(freqs.shape[0], -1)  # rows' then columns' frequencies
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


# ------------------------------------------------------------------------------------------------
# Host side.


def vision_patch_positions(grid_thw: np.ndarray, spatial_merge_size: int) -> np.ndarray:
    """(row, column) of every patch in the processor's merge-window order (Qwen2-VL): patches come
    in 2x2 merge windows, windows in row-major order, one temporal slice after another.

    grid_thw: [items, 3]. Returns [sum(t*h*w), 2] int32.
    """
    out = []
    m = spatial_merge_size
    for t, h, w in np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3):
        rows = np.arange(h).reshape(h // m, m, 1, 1)
        cols = np.arange(w).reshape(1, 1, w // m, m)
        rows = np.broadcast_to(rows, (h // m, m, w // m, m)).transpose(0, 2, 1, 3).reshape(-1)
        cols = np.broadcast_to(cols, (h // m, m, w // m, m)).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([rows, cols], axis=-1), (t, 1)))
    if not out:
        return np.zeros((0, 2), np.int32)
    return np.concatenate(out).astype(np.int32)


def rope_index(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    config: ModelConfig,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    second_per_grid_ts: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE position ids (Qwen2-VL, Qwen2.5-VL and Qwen3-VL `get_rope_index`).

    Text tokens count up by one on all three axes. A vision item's pad tokens take its
    (t, h, w) grid indices (after the 2x2 merge) offset by the position before it; Qwen2.5-VL
    scales the temporal index by `second_per_grid_t * tokens_per_second` (absolute time). The next
    text token starts at the item's maximum position + 1, as in the released Qwen code (and vLLM).

    Vision items are consumed in order: images from `image_grid_thw`, videos from
    `video_grid_thw`, across the batch row by row; each covers t*h*w/merge^2 pad tokens. Qwen3-VL
    writes each temporal patch of a video as its own item after its timestamp, so a video grid
    (t, h, w) stands for t items (1, h, w), each placed as an image.

    input_ids: [batch, seq]; attention_mask: [batch, seq] (1 = token, 0 = padding) or None.
    Returns positions [3, batch, seq] int32 (0 at padding) and rope deltas [batch] int32: the
    offset from a token's index among the valid tokens to its text position, for decoding.
    """
    input_ids = np.asarray(input_ids)
    batch, seq = input_ids.shape
    mask = (
        np.ones_like(input_ids, bool) if attention_mask is None else np.asarray(attention_mask) > 0
    )
    m = config.vision.spatial_merge_size
    images = iter(np.asarray(image_grid_thw).reshape(-1, 3) if image_grid_thw is not None else [])
    video_grids = np.asarray(
        video_grid_thw if video_grid_thw is not None else [], np.int64
    ).reshape(-1, 3)
    if config.timestamped_videos:
        video_grids = np.repeat(video_grids, video_grids[:, 0], axis=0)
        video_grids[:, 0] = 1
    videos = iter(video_grids)
    video_seconds = iter(second_per_grid_ts if second_per_grid_ts is not None else [])
    windowed = config.vision.is_windowed
    positions = np.zeros((3, batch, seq), np.int64)
    deltas = np.zeros((batch,), np.int64)
    for b in range(batch):
        ids = input_ids[b][mask[b]]
        n = len(ids)
        row = np.zeros((3, n), np.int64)
        i, next_pos = 0, 0
        while i < n:
            tok = ids[i]
            if tok == config.image_token_id or tok == config.video_token_id:
                is_video = tok == config.video_token_id
                try:
                    t, h, w = (int(x) for x in next(videos if is_video else images))
                except StopIteration:
                    kind = "video" if is_video else "image"
                    raise ValueError(f"more {kind} pad tokens than {kind} grids") from None
                interval = 1.0
                if is_video and windowed:
                    interval = float(next(video_seconds, 1.0)) * config.vision.tokens_per_second
                gh, gw = h // m, w // m
                count = t * gh * gw
                if i + count > n or not np.all(ids[i : i + count] == tok):
                    raise ValueError(
                        f"row {b}: expected {count} consecutive pad tokens for a grid {(t, h, w)}"
                    )
                tt = (np.arange(t) * interval).astype(np.int64)
                grid = np.stack(np.meshgrid(tt, np.arange(gh), np.arange(gw), indexing="ij"))
                row[:, i : i + count] = grid.reshape(3, -1) + next_pos
                next_pos = int(row[:, i : i + count].max()) + 1
                i += count
            else:
                row[:, i] = next_pos
                next_pos += 1
                i += 1
        positions[:, b, mask[b]] = row
        deltas[b] = (row.max() + 1 - n) if n else 0
    return positions.astype(np.int32), deltas.astype(np.int32)
