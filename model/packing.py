"""Host-side packing of vision items (images and videos) into the static-shape arrays the vision
tower consumes.

Every item arrives as flattened patches in the processor's order (see `vision_patch_positions`):
[t*h*w, channels*temporal_patch*patch*patch] with its grid (t, h, w) in patches. Items of a whole
batch are concatenated in the order their pad tokens appear in the flattened token sequence
(row by row, left to right), then padded to `num_patches` so that jit sees a few fixed shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.config import VisionConfig
from model.rope import vision_patch_positions


def window_layout(grid_thw: np.ndarray, config: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL window attention layout.

    Windows are `window_size` pixels square, i.e. `window_size / patch / merge` merge units per
    side, tiled from the top-left of each temporal slice (the last row and column of windows may be
    partial). Returns the permutation of merge units that makes windows contiguous [units] and the
    window id of every merge unit in the original order [units] (1-based, unique per window).
    """
    m = config.spatial_merge_size
    side = config.window_size // m // config.patch_size
    perms, window_ids = [], []
    unit_offset, window_offset = 0, 0
    for t, h, w in np.asarray(grid_thw, np.int64).reshape(-1, 3):
        gh, gw = h // m, w // m
        rows = np.arange(gh)[:, None] // side
        cols = np.arange(gw)[None, :] // side
        nwh, nww = -(-gh // side), -(-gw // side)
        win = np.broadcast_to(rows * nww + cols, (gh, gw))
        win = (np.arange(t)[:, None, None] * nwh * nww + win[None]).reshape(-1)
        # Stable sort by window keeps row-major order inside each window.
        perm = np.argsort(win, kind="stable")
        perms.append(perm + unit_offset)
        window_ids.append(win + window_offset + 1)
        unit_offset += t * gh * gw
        window_offset += t * nwh * nww
    if not perms:
        return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
    return np.concatenate(perms), np.concatenate(window_ids)


def pack_vision(
    patches: Sequence[np.ndarray] | np.ndarray,
    grid_thw: np.ndarray,
    config: VisionConfig,
    num_patches: int | None = None,
) -> dict[str, np.ndarray]:
    """Concatenates and pads vision items into one static-shape record.

    patches: one [t*h*w, patch_dim] array per item, or all of them already concatenated.
    grid_thw: [items, 3] in patches. num_patches: padded length (a multiple of the merge unit);
    defaults to the exact total.

    Returns a dict of NumPy arrays:
      patches      [N, patch_dim] float32, zeros at padding
      pos_hw       [N, 2] int32, (row, column) of each patch for the 2-D RoPE
      segment_ids  [N] int32, one id per temporal slice of each item (block-diagonal attention),
                   0 at padding
      window_ids   [N] int32, Qwen2.5-VL attention window of each patch (= segment_ids for
                   Qwen2-VL), 0 at padding
      window_index [N / merge_unit] int32, permutation of merge units into window order
                   (identity for Qwen2-VL and for padding)
      grid_hw      [N, 2] int32, Qwen3-VL only: the height and width in patches of each
                   patch's item (for its interpolated position embedding), 1 at padding
    """
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    if isinstance(patches, np.ndarray):
        flat = patches
    else:
        flat = (
            np.concatenate(list(patches), axis=0)
            if len(patches)
            else np.zeros((0, config.patch_dim), np.float32)
        )
    total = int(np.prod(grid_thw, axis=1).sum()) if len(grid_thw) else 0
    if flat.shape != (total, config.patch_dim):
        raise ValueError(
            f"patches of shape {flat.shape} do not match grids {grid_thw.tolist()} "
            f"(expected {(total, config.patch_dim)})"
        )
    unit = config.merge_unit
    if np.any(grid_thw[:, 1:] % config.spatial_merge_size):
        raise ValueError(f"grid h, w must be multiples of {config.spatial_merge_size}: {grid_thw}")
    n = total if num_patches is None else int(num_patches)
    if n < total or n % unit:
        raise ValueError(f"num_patches {n} must be >= {total} and a multiple of {unit}")

    out_patches = np.zeros((n, config.patch_dim), np.float32)
    out_patches[:total] = flat
    pos_hw = np.zeros((n, 2), np.int32)
    pos_hw[:total] = vision_patch_positions(grid_thw, config.spatial_merge_size)
    slices = np.prod(grid_thw[:, 1:], axis=1)
    segment_ids = np.zeros((n,), np.int32)
    segment_ids[:total] = np.repeat(
        np.arange(1, int(grid_thw[:, 0].sum()) + 1), np.repeat(slices, grid_thw[:, 0])
    )
    window_index = np.arange(n // unit, dtype=np.int32)
    if config.is_windowed:
        perm, unit_windows = window_layout(grid_thw, config)
        window_index[: total // unit] = perm
        window_ids = np.zeros((n,), np.int32)
        window_ids[:total] = np.repeat(unit_windows, unit)
    else:
        window_ids = segment_ids.copy()
    out = {
        "patches": out_patches,
        "pos_hw": pos_hw,
        "segment_ids": segment_ids,
        "window_ids": window_ids,
        "window_index": window_index,
    }
    if config.has_pos_embed:
        grid_hw = np.ones((n, 2), np.int32)
        grid_hw[:total] = np.repeat(grid_thw[:, 1:], np.prod(grid_thw, axis=1), axis=0)
        out["grid_hw"] = grid_hw
    return out
