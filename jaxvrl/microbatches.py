"""Host-side stacking of a training step's micro-batches: pad each array to the largest shape
among them (token length, vision chunks) and stack them on a new leading axis, so one jitted step
scans over them (jaxvrl/parallel/placement.py then puts them on the mesh as the global batch).
Padding never changes a result: padded tokens are masked, padded patches belong to no segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxvrl.data.batching import pad_to
from jaxvrl.rollout.vision_chunks import chunk_layout, empty_vision, vision_chunks, vision_slices
from model.config import VisionConfig

# Which axis of each array is the token axis (padded to the longest) in the two batch layouts.
TOKEN_AXIS = {
    "input_ids": 1,
    "attention_mask": 1,
    "positions": 2,
    "loss_mask": 1,
    "prompt_ids": 1,
    "prompt_mask": 1,
    "prompt_positions": 2,
}


def chunk_vision(
    visions: Sequence[dict[str, np.ndarray]],
    config: VisionConfig,
    patch_buckets: Sequence[int],
    num_chunks_multiple: int = 1,
    chunk_patches: int = 0,
    num_chunks: int = 0,
) -> dict[str, np.ndarray]:
    """Each micro-batch's packed vision (model.packing.pack_vision) in chunks of whole temporal
    slices (jaxvrl.rollout.vision_chunks), stacked: one chunk size C for all (fitted to their
    largest slice, or `chunk_patches` when given) and one chunk count K (the largest needed,
    bucketed by `patch_buckets`, at least `num_chunks`, a multiple of `num_chunks_multiple` so
    chunks split evenly over the batch axes). Several processes pass the sizes they agreed on.

    Returns patches [M, K, C, patch_dim], pos_hw [M, K, C, 2], segment_ids and window_ids
    [M, K, C], window_index [M, K, C / merge_unit] and feature_index [M, K * C / merge_unit]
    (model.vision.VisionTower's chunked input). Attention then costs K x C^2 per micro-batch
    instead of (K x C)^2 over one packed sequence.
    """
    c = chunk_patches or chunk_size(visions, config, patch_buckets)
    chunked = [
        vision_chunks(v, config, c, patch_buckets, num_chunks_multiple, num_chunks) for v in visions
    ]
    k = max(chunks["patches"].shape[0] for chunks, _ in chunked)
    k = -(-k // num_chunks_multiple) * num_chunks_multiple
    unit = config.merge_unit
    out: dict[str, list[np.ndarray]] = {}
    for chunks, index in chunked:
        extra = k - chunks["patches"].shape[0]
        for key, value in chunks.items():
            if key == "window_index":  # empty chunks: the identity permutation
                filler = np.broadcast_to(
                    np.arange(c // unit, dtype=value.dtype), (extra, c // unit)
                )
                value = np.concatenate([value, filler])
            else:
                value = pad_to(value, 0, k)
            out.setdefault(key, []).append(value)
        out.setdefault("feature_index", []).append(pad_to(index, 0, k * c // unit))
    return {key: np.stack(values) for key, values in out.items()}


def chunk_size(
    visions: Sequence[dict[str, np.ndarray]], config: VisionConfig, patch_buckets: Sequence[int]
) -> int:
    """The chunk size C fitted to the largest temporal slice of the micro-batches (from their
    slices alone: no patch is copied)."""
    return max(
        chunk_layout(vision_slices(v), config.merge_unit, 0, patch_buckets)[0] for v in visions
    )


def stack_sizes(
    batches: Sequence[dict[str, Any]],
    vision_config: VisionConfig,
    patch_buckets: Sequence[int],
    num_chunks_multiple: int = 1,
    chunk_patches: int = 0,
) -> dict[str, int]:
    """What `stack` pads these batches to: the longest token axis of each key, and for vision
    the chunk size and count (0 without vision). Processes agree on the largest of each
    (jaxvrl.parallel.multihost.agree_max) and pass them back to `stack`."""
    sizes = {
        key: max(np.asarray(b[key]).shape[axis] for b in batches)
        for key, axis in TOKEN_AXIS.items()
        if key in batches[0]
    }
    visions = [b.get("vision") for b in batches]
    sizes["chunk_patches"] = sizes["num_chunks"] = 0
    if any(v is not None for v in visions):
        visions = [empty_vision(vision_config) if v is None else v for v in visions]
        c = chunk_patches or chunk_size(visions, vision_config, patch_buckets)
        unit = vision_config.merge_unit
        sizes["chunk_patches"] = c
        sizes["num_chunks"] = max(
            len(chunk_layout(vision_slices(v), unit, c, patch_buckets, num_chunks_multiple)[1])
            for v in visions
        )
    return sizes


def stack(
    batches: Sequence[dict[str, Any]],
    vision_config: VisionConfig,
    patch_buckets: Sequence[int],
    num_chunks_multiple: int = 1,
    sizes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Stacks device-bound arrays of several batches (host-only `meta` and `vision_shuffled` are
    dropped) on a new leading axis [M, ...], padding token axes to the longest (or to
    `sizes[key]`, see `stack_sizes`); vision goes in chunks (`chunk_vision`)."""
    keys = [k for k in batches[0] if k not in ("meta", "vision_shuffled")]
    sizes = sizes or {}
    out: dict[str, Any] = {}
    for key in keys:
        values = [b[key] for b in batches]
        if key == "vision":
            if all(v is None for v in values) and not sizes.get("num_chunks"):
                continue
            values = [empty_vision(vision_config) if v is None else v for v in values]
            out[key] = chunk_vision(
                values,
                vision_config,
                patch_buckets,
                num_chunks_multiple,
                sizes.get("chunk_patches", 0),
                sizes.get("num_chunks", 0),
            )
            continue
        arrays = [np.asarray(v) for v in values]
        if key in TOKEN_AXIS:
            size = max(sizes.get(key, 0), *(a.shape[TOKEN_AXIS[key]] for a in arrays))
            arrays = [pad_to(a, TOKEN_AXIS[key], size) for a in arrays]
        out[key] = np.stack(arrays)
    return out
