"""Vision in chunks of whole temporal slices (host side).

Vision attention is block-diagonal per temporal slice of an item (and Qwen2.5-VL's windows lie
inside slices), so the tower gives the same features when each slice, or a few whole slices, run
as a separate chunk. `vision_chunks` repacks a packed vision input (model.packing.pack_vision)
into [chunks, chunk_patches], so attention costs sum(chunk^2) instead of N^2 over the whole packed
sequence (8x less for 8 slices). The rollout program runs the tower on them
(group_decode.vision_features), and the training step's micro-batches are stacked in them
(jaxvrl/microbatches.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxvrl.data.batching import bucket
from model.config import VisionConfig
from model.packing import pack_vision


def vision_slices(vision: dict[str, np.ndarray]) -> list[tuple[int, int, int]]:
    """(first patch, grid rows, grid columns) of every temporal slice of a packed vision input
    (model.packing.pack_vision), in order. Slices are the runs of equal non-zero segment ids."""
    seg = np.asarray(vision["segment_ids"])
    total = int(np.count_nonzero(seg))
    if total and not (seg[:total] > 0).all():
        raise ValueError("packed vision input has padding before its last patch")
    starts = np.flatnonzero(np.diff(seg[:total], prepend=-1) != 0)
    ends = np.append(starts[1:], total)
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        rows = int(vision["pos_hw"][s:e, 0].max()) + 1
        cols = int(vision["pos_hw"][s:e, 1].max()) + 1
        if rows * cols != e - s:
            raise ValueError(f"slice at patch {s} is not a full {rows}x{cols} grid")
        out.append((s, rows, cols))
    return out


def vision_chunks(
    vision: dict[str, np.ndarray],
    config: VisionConfig,
    chunk_patches: int,
    patch_buckets: Sequence[int],
    num_chunks_multiple: int = 1,
    min_chunks: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Repacks a packed vision input into chunks of whole temporal slices.

    Consecutive slices fill chunks of C = `chunk_patches` patches (raised to the largest slice,
    then rounded up to a multiple of 1024). `chunk_patches` = 0 fits C to the largest slice: the
    next power of two from 256 to 1024, a multiple of 1024 above (attention costs C per patch, so
    a chunk no larger than the slices wastes least: 16-frame 224x448 videos, slices of 512
    patches, run their tower 1.5x faster in chunks of 512 than of 1024). The number of chunks K
    is bucket(needed chunks x C, patch_buckets) / C, at least `min_chunks` (several processes
    agree on one count), rounded up to `num_chunks_multiple`.
    Returns the stacked pack_vision dicts (patches [K, C, patch_dim], pos_hw [K, C, 2], ...) and,
    for each merged feature of the original packing in order, its row in the flattened chunk
    outputs [K * C / merge_unit]: `index` [K * C / merge_unit], padded with 0.
    """
    unit = config.merge_unit
    c, groups = chunk_layout(
        vision_slices(vision), unit, chunk_patches, patch_buckets, num_chunks_multiple, min_chunks
    )
    packed, index = [], []
    for i, group in enumerate(groups):
        patches = [vision["patches"][s : s + h * w] for s, h, w in group]
        grids = np.array([(1, h, w) for _, h, w in group], np.int64).reshape(-1, 3)
        flat = np.concatenate(patches) if patches else np.zeros((0, config.patch_dim), np.float32)
        packed.append(pack_vision(flat.astype(np.float32), grids, config, num_patches=c))
        index.append(i * (c // unit) + np.arange(sum(h * w for _, h, w in group) // unit))
    stacked = {key: np.stack([p[key] for p in packed]) for key in packed[0]}
    flat_index = np.concatenate(index).astype(np.int32)
    return stacked, np.pad(flat_index, (0, len(groups) * c // unit - flat_index.size))


def chunk_layout(
    slices: Sequence[tuple[int, int, int]],
    merge_unit: int,
    chunk_patches: int,
    patch_buckets: Sequence[int],
    num_chunks_multiple: int = 1,
    min_chunks: int = 0,
) -> tuple[int, list[list[tuple[int, int, int]]]]:
    """Where `vision_chunks` puts each slice (`vision_slices`' tuples), without touching a patch:
    the chunk size C and the K chunks' slices (empty lists for the padding chunks)."""
    largest = max((h * w for _, h, w in slices), default=merge_unit)
    if chunk_patches <= 0 and largest <= 1024:
        c = max(256, 1 << (largest - 1).bit_length())
    elif largest <= chunk_patches:
        c = chunk_patches
    else:
        c = -(-largest // 1024) * 1024
    groups: list[list[tuple[int, int, int]]] = [[]]
    used = 0
    for s, h, w in slices:
        if used + h * w > c:
            groups.append([])
            used = 0
        groups[-1].append((s, h, w))
        used += h * w
    size = bucket(len(groups) * c, patch_buckets, past_largest="size")
    k = max(-(-size // c), min_chunks)
    k = -(-k // num_chunks_multiple) * num_chunks_multiple
    return c, groups + [[] for _ in range(k - len(groups))]


def empty_vision(config: VisionConfig) -> dict[str, np.ndarray]:
    """A packed vision input without patches (a batch whose rows hold no image or video, beside
    processes whose rows do)."""
    return pack_vision(
        np.zeros((0, config.patch_dim), np.float32), np.zeros((0, 3), np.int64), config
    )
