"""Several processes, one global batch: each process holds and feeds only its own rows.

With P processes, a global batch of B rows is split into P contiguous blocks of B / P rows; the
process p reads, decodes, samples, scores and stacks block p only, and the arrays the programs
see are global arrays assembled from those blocks (`jax.make_array_from_process_local_data`).
What the processes must agree on is exchanged as small integer vectors: padded lengths, chunk
counts, sample counts, whether the data ran out, and the vision feature index (the row of each
merged vision feature in the chunk outputs; a few thousand integers, never pixels).

With one process every function here is the identity or a local computation, so the
single-process code path is the same code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding


def count() -> int:
    return jax.process_count()


def index() -> int:
    return jax.process_index()


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier `name`."""
    if count() > 1:
        multihost_utils.sync_global_devices(name)


def allgather(x: np.ndarray) -> np.ndarray:
    """`x` of every process, stacked [P, ...] (the same shape on all processes)."""
    x = np.asarray(x)
    if count() == 1:
        return x[None]
    return np.asarray(multihost_utils.process_allgather(x))


def agree_max(values: Mapping[str, int]) -> dict[str, int]:
    """The largest value of each key over the processes (every process passes the same keys)."""
    keys = sorted(values)
    if count() == 1:
        return {k: int(values[k]) for k in keys}
    local = np.array([int(values[k]) for k in keys], np.int64)
    gathered = allgather(local).max(axis=0)
    return {k: int(v) for k, v in zip(keys, gathered, strict=True)}


def agree_any(flag: bool) -> bool:
    """Whether `flag` holds on any process."""
    return bool(allgather(np.array([bool(flag)], np.int32)).max())


def gather_objects(obj: Any) -> list[Any]:
    """A JSON-serialisable value of every process, in process order (small values: metrics,
    counts, texts of a batch)."""
    if count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    # Sizes rounded to powers of two: one compiled gather serves many calls.
    size = 1 << (agree_max({"size": data.size})["size"] - 1).bit_length()
    padded = np.zeros(size + 8, np.uint8)
    padded[:8] = np.frombuffer(np.int64(data.size).tobytes(), np.uint8)
    padded[8 : 8 + data.size] = data
    out = []
    for row in allgather(padded):
        n = int(np.frombuffer(row[:8].tobytes(), np.int64)[0])
        out.append(json.loads(row[8 : 8 + n].tobytes().decode("utf-8")))
    return out


def sum_over_processes(values: Mapping[str, float]) -> dict[str, float]:
    """Each key summed over the processes (a key a process lacks counts 0 there)."""
    if count() == 1:
        return {k: float(v) for k, v in values.items()}
    out: dict[str, float] = {}
    for part in gather_objects({k: float(v) for k, v in values.items()}):
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


def max_over_processes(*values: float) -> tuple[float, ...]:
    if count() == 1:
        return tuple(float(v) for v in values)
    return tuple(float(v) for v in allgather(np.array(values, np.float64)).max(axis=0))


def mean_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Each numeric metric averaged over the processes that have a value for it (each process's
    value weighs the same: every process holds the same number of rows)."""
    if count() == 1:
        return dict(metrics)
    values: dict[str, list[float]] = {}
    for part in gather_objects({k: v for k, v in metrics.items() if v is not None}):
        for k, v in part.items():
            values.setdefault(k, []).append(float(v))
    return {k: float(np.mean(values[k])) if k in values else None for k in metrics}


def gather_params(tree: Any) -> Any:
    """A pytree of global arrays as host arrays on every process (one leaf at a time); with one
    process the tree itself."""
    if count() == 1:
        return tree
    return jax.tree.map(
        lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree
    )


def split_axis_processes(sharding: NamedSharding, axis: int, ndim: int) -> bool:
    """Whether `sharding` splits dimension `axis` of an array between the processes (then each
    process passes its own rows; otherwise every process passes the whole array)."""
    if count() == 1:
        return False
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    return spec[axis] is not None


def global_array(local: np.ndarray, sharding: NamedSharding, axis: int | None = 0) -> jax.Array:
    """A global array from this process's block of rows along `axis` (every process the same
    block size; the global size is P times it). `axis` None: the array is the same on every
    process and is placed as it is."""
    local = np.asarray(local)
    if axis is None or count() == 1:
        return jax.device_put(local, sharding)
    if not split_axis_processes(sharding, axis, local.ndim):
        raise ValueError(
            f"an input with {local.shape[axis]} rows per process is not split between the "
            f"{count()} processes by {sharding.spec} (mesh {dict(sharding.mesh.shape)}): make the "
            "batch a multiple of the devices its batch axis spans"
        )
    shape = list(local.shape)
    shape[axis] *= count()
    return jax.make_array_from_process_local_data(sharding, local, tuple(shape))


def local_block(x: jax.Array, axis: int = 0) -> np.ndarray:
    """This process's block of a global array along `axis` (its addressable shards, in order,
    replicas taken once). With one process: the whole array."""
    if count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    pieces: dict[int, np.ndarray] = {}
    for shard in x.addressable_shards:
        start = shard.index[axis].start or 0
        if start not in pieces:
            pieces[start] = np.asarray(shard.data)
    block = np.concatenate([pieces[s] for s in sorted(pieces)], axis=axis)
    if block.shape[axis] * count() != x.shape[axis]:
        raise ValueError(
            f"an output of shape {x.shape} is not split into one block of rows per process "
            f"along axis {axis} ({x.sharding})"
        )
    return block


def replicated_scalar(x: jax.Array) -> np.ndarray:
    """The value of a replicated (e.g. scalar) output, read from a local shard."""
    if count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(x.addressable_data(0))


def global_feature_index(
    local_index: np.ndarray, num_features: int, local_rows: int, axis: int = -1
) -> np.ndarray:
    """The feature index of the global batch from each process's own: process p's chunks are
    block p of the chunk axis (`local_rows` chunk output rows each), and the merged features of
    the batch are taken in pad-token order, i.e. process 0's, then process 1's... `local_index`
    [..., F_local] holds this process's `num_features` real entries first (the rest padding);
    the result [..., P * F_local] is the same on every process."""
    if count() == 1:
        return np.asarray(local_index)
    local_index = np.moveaxis(np.asarray(local_index), axis, -1)
    counts = np.atleast_1d(np.asarray(num_features))
    lead = local_index.shape[:-1]
    flat = local_index.reshape(-1, local_index.shape[-1])
    counts = np.broadcast_to(counts, (flat.shape[0],))
    every = allgather(flat)  # [P, R, F_local]
    every_counts = allgather(np.asarray(counts, np.int64))  # [P, R]
    width = flat.shape[-1] * count()
    out = np.zeros((flat.shape[0], width), np.int32)
    for r in range(flat.shape[0]):
        parts = [every[p, r, : every_counts[p, r]] + p * local_rows for p in range(every.shape[0])]
        joined = np.concatenate(parts)
        out[r, : joined.size] = joined
    return np.moveaxis(out.reshape(*lead, width), -1, axis)


def check_row_blocks(sharding: NamedSharding, rows: int, axis: int = 0, ndim: int = 1) -> None:
    """Raises unless `sharding` gives this process the rows [index * rows, (index + 1) * rows)
    of an array with `count() * rows` rows along `axis` (the layout every process's own rows
    assume; jaxvrl.parallel.mesh.make_mesh lays processes out in order)."""
    if count() == 1:
        return
    shape = [1] * ndim
    shape[axis] = rows * count()
    starts = {
        (index[axis].start or 0, index[axis].stop or shape[axis])
        for index in sharding.addressable_devices_indices_map(tuple(shape)).values()
    }
    lo, hi = min(a for a, _ in starts), max(b for _, b in starts)
    if (lo, hi) != (index() * rows, (index() + 1) * rows):
        raise RuntimeError(
            f"process {index()} holds rows {lo}..{hi} of the global batch, not its block "
            f"{index() * rows}..{(index() + 1) * rows}: the mesh does not put each process's "
            "devices together"
        )
