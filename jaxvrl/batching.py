"""Host-side stacking of micro-batches: pad each array to the largest shape among them (token
length, vision patches) and stack them on a new leading axis, so one jitted step scans over them.
Padding never changes a result: padded tokens are masked, padded patches belong to no segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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


def _pad_to(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return np.pad(x, widths)


def pad_vision(vision: dict[str, np.ndarray], num_patches: int, merge_unit: int) -> dict:
    """Pads a model.packing.pack_vision dict to `num_patches` (padding joins no segment)."""
    n = vision["patches"].shape[0]
    if n == num_patches:
        return vision
    out = {
        k: _pad_to(np.asarray(v), 0, num_patches) for k, v in vision.items() if k != "window_index"
    }
    out["window_index"] = np.concatenate(
        [
            vision["window_index"],
            np.arange(n // merge_unit, num_patches // merge_unit, dtype=np.int32),
        ]
    )
    return out


def stack(batches: Sequence[dict[str, Any]], merge_unit: int) -> dict[str, Any]:
    """Stacks device-bound arrays of several batches (host-only `meta` and `vision_shuffled` are
    dropped) on a new leading axis [M, ...], padding token and patch axes to the largest."""
    keys = [k for k in batches[0] if k not in ("meta", "vision_shuffled")]
    out: dict[str, Any] = {}
    for key in keys:
        values = [b[key] for b in batches]
        if key == "vision":
            if values[0] is None:
                continue
            n = max(v["patches"].shape[0] for v in values)
            padded = [pad_vision(v, n, merge_unit) for v in values]
            out[key] = {k: np.stack([p[k] for p in padded]) for k in padded[0]}
            continue
        arrays = [np.asarray(v) for v in values]
        if key in TOKEN_AXIS:
            size = max(a.shape[TOKEN_AXIS[key]] for a in arrays)
            arrays = [_pad_to(a, TOKEN_AXIS[key], size) for a in arrays]
        out[key] = np.stack(arrays)
    return out
