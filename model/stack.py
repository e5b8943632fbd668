"""Repeated layers as one module over stacked parameters, run by a scan (config
`model.scan_layers`).

A stack holds the parameters of `count` identical layers in one module whose every variable has
a leading axis of that length (logical axis `LAYERS`, replicated by the sharding rules). A forward
pass is one `lax.scan` over that axis, so the compiled program holds the layer once, whatever the
depth: compile time no longer grows with the number of layers. Activations a backward pass needs
are the scan's per-layer carries, as with the unrolled loop; with remat the body is checkpointed.

    layers = stack.stacked([DecoderLayer(...) for _ in range(n)])
    x, ys = stack.scan(layers, lambda layer, x, inputs: (layer(x), None), x)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from model.layers import REMAT_POLICIES

# The logical axis name of the stacked layers' leading axis (model.sharding: no rule maps it, so
# every device holds all layers of its shard of each parameter).
LAYERS = "layers"


def stacked(modules: Sequence[nnx.Module]) -> nnx.Module:
    """One module of the first's structure whose variables hold all `modules`' values stacked on
    a new leading axis, their logical axes prefixed with LAYERS. The modules must be identical in
    structure (same static attributes)."""
    graphdef, _ = nnx.split(modules[0])
    states = [nnx.split(m)[1] for m in modules]
    values = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def with_layers_axis(var: nnx.Variable) -> nnx.Variable:
        value = var.get_value()
        axes = var.get_metadata().get("axes") or (None,) * (value.ndim - 1)
        return var.replace(value, axes=(LAYERS, *axes))

    values = jax.tree.map(with_layers_axis, values, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, values)


def layer(stack: nnx.Module, index: int | jnp.ndarray) -> nnx.Module:
    """Layer `index` of a stack, as a module of its own (a Python int or a traced index)."""
    graphdef, state = nnx.split(stack)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[index], state))


def scan(
    stack: nnx.Module,
    body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any = None,
    *,
    remat_policy: str | None = None,
) -> tuple[Any, Any]:
    """`lax.scan` over the layers: body(layer, carry, x) -> (carry, y), `layer` the module of
    one layer's slice of the parameters and `x` that layer's slice of `xs` (None: no per-layer
    input). With `remat_policy` (model.layers.REMAT_POLICIES) each layer's activations are
    recomputed in the backward pass, keeping what the policy names. Returns (carry, stacked ys).
    Functional (split state, merge inside the body), so it works under any enclosing transform.
    """
    graphdef, state = nnx.split(stack)

    def step(carry, inputs):
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), carry, x)

    if remat_policy is not None:
        step = jax.checkpoint(step, policy=_policy(remat_policy), prevent_cse=False)
    return jax.lax.scan(step, carry, (state, xs))


def unrolled(
    layers: Sequence[nnx.Module],
    body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any = None,
    *,
    remat_policy: str | None = None,
) -> tuple[Any, Any]:
    """`scan`'s loop written out: one copy of `body` per layer in the program (config
    `model.scan_layers=false`). Same arguments and results as `scan`, for a list of layers."""
    ys = []
    for i, module in enumerate(layers):
        x = jax.tree.map(lambda a, i=i: a[i], xs)
        if remat_policy is None:
            carry, y = body(module, carry, x)
        else:
            carry, y = _checkpointed(body, module, carry, x, remat_policy)
        ys.append(y)
    if not ys or all(y is None for y in ys):
        return carry, None
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)


def run(
    layers: nnx.Module,
    body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any = None,
    *,
    remat_policy: str | None = None,
) -> tuple[Any, Any]:
    """`scan` over a stack, or `unrolled` over an nnx.List of layers: the layout decides."""
    if isinstance(layers, nnx.List):
        return unrolled(list(layers), body, carry, xs, remat_policy=remat_policy)
    return scan(layers, body, carry, xs, remat_policy=remat_policy)


def run_range(
    layers: nnx.Module,
    start: int,
    stop: int,
    body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any = None,
    *,
    remat_policy: str | None = None,
) -> tuple[Any, Any]:
    """`run` over layers [start, stop) only (`xs` given for all layers): a scan over that slice
    of a stack, or the unrolled loop over those layers. For reading outputs between layers
    (Qwen3-VL's DeepStack taps) without carrying them through every step of one scan."""
    xs = None if xs is None else jax.tree.map(lambda a: a[start:stop], xs)
    if isinstance(layers, nnx.List):
        return unrolled(list(layers)[start:stop], body, carry, xs, remat_policy=remat_policy)
    graphdef, state = nnx.split(layers)
    part = nnx.merge(graphdef, jax.tree.map(lambda a: a[start:stop], state))
    return scan(part, body, carry, xs, remat_policy=remat_policy)


def _checkpointed(body, module: nnx.Module, carry, x, policy: str):
    """body(module, carry, x) under jax.checkpoint (functional: split, checkpoint, merge). `x` is
    closed over, so a NumPy value in it stays static (decided when tracing)."""
    graphdef, state = nnx.split(module)

    def run(state, carry):
        return body(nnx.merge(graphdef, state), carry, x)

    return jax.checkpoint(run, policy=_policy(policy))(state, carry)


def _policy(name: str):
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; known: {sorted(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]
