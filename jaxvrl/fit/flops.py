"""Matmul FLOPs of a traced program, counted on its jaxpr with every loop's trip count.

XLA's `compiled.cost_analysis()` counts the body of a while loop once, whatever its trip count
(a scan over 4 micro-batches reports the FLOPs of one), and the GPU compiler gives none; the
train step is a scan over micro-batches, the log-probs and the vision tower map over chunks, and
the rollout decodes in a while loop. So the step's FLOPs are counted here instead:

    flops = matmul_flops(jax.jit(fn).trace(*abstract_args).jaxpr, while_trips=max_new_tokens)

Counted: dot_general (2 x output elements x contracted size) and convolutions, over the whole
program (all devices together: shapes inside shard_map are per shard and are multiplied by the
shards). Scans multiply their body by their length, while loops by `while_trips`, a cond takes
its most expensive branch. Elementwise work is not counted (it is a few percent of a
transformer's FLOPs). A backward pass and any rematerialised forward are counted as executed.
"""

from __future__ import annotations

import math
from typing import Any

from jax.extend import core as jex_core

from model.sharding import axis_size


def _inner_jaxprs(value: Any) -> list:
    if isinstance(value, jex_core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jex_core.Jaxpr):
        return [value]
    if isinstance(value, list | tuple):
        return [j for v in value for j in _inner_jaxprs(v)]
    return []


def _dot_flops(eqn) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape  # kernel [out_features, in_features / groups, *window]
    out = eqn.outvars[0].aval.shape
    return 2.0 * math.prod(out) * math.prod(rhs[1:])


def _shards(eqn) -> int:
    mesh = eqn.params.get("mesh")
    if mesh is None:
        return 1
    axes = eqn.params.get("manual_axes") or eqn.params.get("axis_names") or mesh.axis_names
    return axis_size(mesh, tuple(axes))


def matmul_flops(jaxpr, while_trips: int = 1) -> float:
    """Matmul FLOPs of a (Closed)Jaxpr, all devices together (module docstring)."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * matmul_flops(eqn.params["jaxpr"], while_trips)
        elif name == "while":
            total += while_trips * matmul_flops(eqn.params["body_jaxpr"], while_trips)
        elif name == "cond":
            total += max(matmul_flops(b, while_trips) for b in eqn.params["branches"])
        else:
            inner = [j for v in eqn.params.values() for j in _inner_jaxprs(v)]
            scale = _shards(eqn) if name == "shard_map" else 1
            total += scale * sum(matmul_flops(j, while_trips) for j in inner)
    return total
