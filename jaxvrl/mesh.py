"""The device mesh (axes data, fsdp, tensor), the logical-axis rules and multi-host start-up.

One mesh serves every step. Its shape and the rules that map logical parameter axes onto it are
config data (`config.mesh`), so changing parallelism never touches the model or the trainer.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from model.sharding import DEFAULT_RULES, Rules

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")


def launched_on_a_cluster() -> bool:
    """Whether the environment says we are one of several processes (JAX coordinator variables,
    a multi-task SLURM job, or a multi-host TPU slice)."""
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def initialize_distributed(enabled: bool | None = None) -> None:
    """Starts multi-host JAX (one process per host); `None` decides from the environment."""
    if enabled is None:
        enabled = launched_on_a_cluster()
    if enabled and not jax.distributed.is_initialized():
        jax.distributed.initialize()
        log.info(
            "jax.distributed: process %d of %d, %d local / %d global devices",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )


def mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves one -1 entry to the devices left over; checks the product."""
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise ValueError(f"mesh shape {dict(shape)}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(f"mesh shape {dict(shape)} does not divide {num_devices} devices")
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} "
            f"devices, {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes (data, fsdp, tensor)."""
    devices = list(jax.devices() if devices is None else devices)
    fixed = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if -1 not in fixed and math.prod(fixed) < len(devices):
        # A mesh smaller than the machine (e.g. the demo's single device): the first devices.
        log.info("mesh %s uses %d of %d devices", dict(shape), math.prod(fixed), len(devices))
        devices = devices[: math.prod(fixed)]
    sizes = mesh_shape(shape, len(devices))
    if len(devices) == jax.device_count() and devices == list(jax.devices()):
        # Auto axes: shardings propagate through the program (the model and sampler annotate
        # inputs and parameters; jax.make_mesh would default to explicit sharding types).
        return jax.make_mesh(
            sizes, MESH_AXES, devices=devices, axis_types=(AxisType.Auto,) * len(MESH_AXES)
        )
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES)


def rules_from_config(rules: Sequence[Sequence] | None) -> Rules:
    """Logical-axis rules from config: a list of [logical name, mesh axis | [axes] | None]."""
    if not rules:
        return DEFAULT_RULES
    out = []
    for rule in rules:
        name, target = rule[0], rule[1]
        if isinstance(target, list | tuple):
            target = tuple(target)
        if target is not None and not set((target,) if isinstance(target, str) else target) <= set(
            MESH_AXES
        ):
            raise ValueError(f"rule {list(rule)}: mesh axes are {MESH_AXES}")
        out.append((str(name), target))
    return tuple(out)
