"""Stacked micro-batches [M, ...] on the mesh: the batch dimension (and the vision chunks) split
over the batch axes, and with several processes each process's block of rows assembled into the
global batch (multihost.py)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxvrl.parallel import multihost
from model.sharding import axis_size, logical_to_spec

STACKED_BATCH_AXIS = {"positions": 2, "prompt_positions": 2}  # default: axis 1 of [M, rows, ...]


def stacked_shardings(stacked: dict[str, Any], mesh, rules) -> dict[str, Any]:
    """Shardings of stacked micro-batches [M, ...] (arrays or anything with .shape): batch
    dimension over (data, fsdp) where it divides; vision chunks [M, K, C, ...] split over the
    same axes (jaxvrl.microbatches.chunk_vision makes K a multiple of their size), the feature index
    replicated. jaxvrl.fit lays its abstract batches out with it."""

    def one(key, x):
        if key == "vision":
            return {
                k: NamedSharding(mesh, PartitionSpec()) if k == "feature_index" else one(k, v)
                for k, v in x.items()
            }
        axis = STACKED_BATCH_AXIS.get(key, 1)
        axes = [None] * len(x.shape)
        axes[axis] = "batch"
        spec = logical_to_spec(axes, rules, mesh)
        if x.shape[axis] % axis_size(mesh, spec[axis]):
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)

    return {k: one(k, v) for k, v in stacked.items()}


def place_stacked(stacked: dict[str, Any], mesh, rules, merge_unit: int = 4) -> dict[str, Any]:
    """Stacked micro-batches [M, ...] onto the mesh (`stacked_shardings`). With several
    processes `stacked` is this process's block of rows (and of vision chunks) of the global
    batch: each array becomes a global array of every process's block, prompt indices
    (`sample_to_prompt`) are offset to the global rows, and the vision feature index is
    assembled from every process's (multihost.global_feature_index)."""
    n = multihost.count()
    if n == 1:
        return jax.device_put(stacked, stacked_shardings(stacked, mesh, rules))

    def scaled(shape, axis):
        shape = list(shape)
        shape[axis] *= n
        return jax.ShapeDtypeStruct(tuple(shape), np.int32)

    shapes: dict[str, Any] = {}
    for key, x in stacked.items():
        if key == "vision":
            shapes[key] = {k: scaled(v.shape, 1) for k, v in x.items()}
        else:
            shapes[key] = scaled(np.shape(x), STACKED_BATCH_AXIS.get(key, 1))
    shardings = stacked_shardings(shapes, mesh, rules)
    out: dict[str, Any] = {}
    for key, x in stacked.items():
        if key == "vision":
            chunks = {k: v for k, v in x.items() if k != "feature_index"}
            out[key] = {
                k: multihost.global_array(v, shardings[key][k], 1) for k, v in chunks.items()
            }
            real = (np.asarray(x["segment_ids"]) != 0).sum(axis=(1, 2)) // merge_unit
            rows = x["patches"].shape[1] * x["patches"].shape[2] // merge_unit
            index = multihost.global_feature_index(x["feature_index"], real, rows)
            out[key]["feature_index"] = multihost.global_array(
                index, shardings[key]["feature_index"], None
            )
            continue
        x = np.asarray(x)
        if key == "sample_to_prompt":
            x = x + multihost.index() * np.shape(stacked["prompt_ids"])[1]
        out[key] = multihost.global_array(x, shardings[key], STACKED_BATCH_AXIS.get(key, 1))
    return out


def batch_axis_size(mesh, rules) -> int:
    """Devices the batch dimension is split over (the mesh axes `batch` maps to)."""
    return axis_size(mesh, logical_to_spec(["batch"], rules, mesh)[0])
