"""Logical axis names -> mesh axes.

Every parameter carries logical axis names in its `axes` metadata. One table of rules (config data)
maps each logical name to a mesh axis (or a tuple of them, or None for replicated); changing the
parallelism means changing that table, not the model.

Activations are pinned the same way: under `activation_layout(mesh, rules)` the model's
`constrain(x, axes)` calls become sharding constraints (batch over the batch axes, heads and MLP
columns over `tensor`); outside one they do nothing. Without them the partitioner is free to
keep an activation whole on every device and shard the weights' contraction dimension instead,
all-reducing full-batch MLP activations: on an 8-GPU node that tripled the RL step's memory
(bench/RESULTS.md, fit check).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# FSDP over `fsdp` on the embedding dimension, Megatron-style tensor parallelism over `tensor` on
# heads / MLP / vocab. Batch dimensions go over (data, fsdp).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("qkv", "tensor"),
    ("vocab", "tensor"),
)


def mesh_axes(entry: str | Sequence[str] | None) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry or rule target: a name, a tuple of names, or
    None (no axis)."""
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def axis_size(mesh: Mesh, entry: str | Sequence[str] | None) -> int:
    """Devices along one PartitionSpec entry (1 for None)."""
    return math.prod(mesh.shape[name] for name in mesh_axes(entry))


def logical_to_spec(axes: Iterable[str | None], rules: Rules, mesh: Mesh) -> PartitionSpec:
    """Maps logical names to a PartitionSpec; a mesh axis is used at most once per array and
    axes of size 1 or missing from the mesh are dropped."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in axes:
        target = table.get(name) if name is not None else None
        names = tuple(
            n for n in mesh_axes(target) if n in mesh.shape and mesh.shape[n] > 1 and n not in used
        )
        used.update(names)
        spec.append(names[0] if len(names) == 1 else (names or None))
    return PartitionSpec(*spec)


def fit_spec(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """Drops sharding on dimensions that the mesh axes do not divide (e.g. 2 kv heads on 4)."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        size = axis_size(mesh, entry)
        out.append(entry if size and dim % size == 0 else None)
    return PartitionSpec(*out)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """A NamedSharding for every variable of `state` (abstract or concrete), from its `axes`."""

    def one(var):
        axes = var.get_metadata().get("axes")
        shape = var.get_value().shape
        spec = logical_to_spec(axes, rules, mesh) if axes else PartitionSpec()
        return var.replace(NamedSharding(mesh, fit_spec(shape, spec, mesh)))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Moves a model's parameters onto the mesh according to the rules (in place); returns it."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model


def batch_sharding(mesh: Mesh, rank: int, batch_axis: int = 0, rules: Rules = DEFAULT_RULES):
    """Sharding for an input array whose `batch_axis` is the batch dimension."""
    axes = [None] * rank
    axes[batch_axis] = "batch"
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh))


# The rules `constrain` maps logical names with; the mesh is JAX's context mesh (jax.set_mesh),
# which is part of the key under which jit caches a trace: a function traced outside a layout is
# traced again inside one, and the other way round.
_RULES: contextvars.ContextVar[tuple] = contextvars.ContextVar(
    "activation_rules", default=DEFAULT_RULES
)


@contextlib.contextmanager
def activation_layout(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Programs traced inside lay their activations out by `rules` on `mesh` (`constrain`);
    `mesh` is JAX's context mesh meanwhile."""
    with activation_rules(rules), jax.set_mesh(mesh):
        yield


@contextlib.contextmanager
def activation_rules(rules: Rules) -> Iterator[None]:
    """Programs traced inside read `rules` (on the mesh of the `activation_layout` around them):
    the rollout's, whose weights are kept in the decode layout (the embedding whole)."""
    token = _RULES.set(tuple(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def activation_entry(name: str, size: int, mesh) -> str | tuple[str, ...] | None:
    """The mesh axes (one PartitionSpec entry) that logical `name` maps to under the current
    activation rules, for a dimension of `size`; None where they do not divide it."""
    return fit_spec((size,), logical_to_spec((name,), _RULES.get(), mesh), mesh)[0]


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """x laid out by logical `axes` (one name or None per dimension) on the context mesh of an
    `activation_layout`; unchanged without one. A one-device mesh adds nothing to the program.

    Where the mesh axes of a name do not divide its dimension (4 SFT sequences on 8 chips), that
    dimension and the ones named None are left to the partitioner (PartitionSpec.UNCONSTRAINED):
    pinning them whole would make every device compute every row (on v6e:2x4 it took Video-R1's
    SFT step from 19.17 to 41.83 GiB per chip, bench/RESULTS.md)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    spec = logical_to_spec(axes, _RULES.get(), mesh)
    fitted = tuple(fit_spec(x.shape, spec, mesh))
    if fitted != tuple(spec) + (None,) * (x.ndim - len(spec)):  # a name's axes did not divide
        fitted = tuple(PartitionSpec.UNCONSTRAINED if f is None else f for f in fitted)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*fitted))


def embedding_lookup(table: jax.Array, ids: jax.Array, dtype: jnp.dtype | str) -> jax.Array:
    """`table[ids]` in `dtype` ([*ids.shape, hidden]) for a table with logical axes ("vocab",
    "embed"), each device ending with whole rows of its share of the tokens, under an
    `activation_layout`; plain `jnp.take` outside one.

    The table is stored split along its embedding dimension (FSDP's "embed" rule) and perhaps
    along vocab. A plain gather gives rows split along the embedding too, and the partitioner can
    turn those into rows split by token only by replicating them ("Involuntary full
    rematerialization": an all-gather of the activation, and another of its gradient, in every
    program that embeds tokens). Here the flattened tokens are split over the batch's other mesh
    axes (data), each device gathers its columns of its tokens' rows (the vocab shards' partial
    rows summed), and one all-to-all over the embedding axes hands each device whole rows of its
    share: the tokens end split over the batch axes in their order, the activation's size moving
    once. The gradient takes the same path back. Where the table's embedding is whole (the
    rollout's decode layout), the batch rule does not end with the embedding's axes, or the
    token count does not divide, the plain gather."""
    mesh = jax.sharding.get_abstract_mesh()
    plain = lambda: jnp.take(table, ids, axis=0).astype(dtype)  # noqa: E731
    if mesh.empty or mesh.size == 1:
        return plain()
    rules = _RULES.get()
    spec = fit_spec(table.shape, logical_to_spec(("vocab", "embed"), rules, mesh), mesh)
    vocab_axes, embed_axes = mesh_axes(spec[0]), mesh_axes(spec[1])
    batch_axes = mesh_axes(logical_to_spec(("batch",), rules, mesh)[0])
    outer = tuple(a for a in batch_axes if a not in embed_axes)
    split = axis_size(mesh, spec[1])
    if split == 1 or batch_axes != outer + embed_axes or ids.size % axis_size(mesh, batch_axes):
        return plain()

    def local(shard: jax.Array, flat: jax.Array) -> jax.Array:
        if vocab_axes:  # this device's rows of the vocab; the others contribute zeros
            rows = shard.shape[0]
            here = flat - jax.lax.axis_index(vocab_axes) * rows
            inside = (here >= 0) & (here < rows)
            x = jnp.take(shard, jnp.where(inside, here, 0), axis=0).astype(dtype)
            x = jax.lax.psum(jnp.where(inside[:, None], x, jnp.zeros((), dtype)), vocab_axes)
        else:
            x = jnp.take(shard, flat, axis=0).astype(dtype)
        # [tokens, hidden / E] -> [tokens / E, hidden]
        return jax.lax.all_to_all(x, embed_axes, split_axis=0, concat_axis=1, tiled=True)

    rows = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(spec[0], spec[1]), PartitionSpec(outer or None)),
        out_specs=PartitionSpec(batch_axes),
    )(table, ids.reshape(-1))
    return rows.reshape(*ids.shape, table.shape[1])
