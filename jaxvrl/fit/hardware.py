"""Accelerators the fit check compiles for and the perf/mfu metric divides by: memory per chip,
peak bfloat16 FLOP/s, and how to get a compile-only device list for each from a CPU host.

    target = compile_target("v5p:2x2x1")    # TPU slice: libtpu's topology, 4 chips
    target = compile_target("h100x8")       # GPU node: our XLA target description, 8 GPUs
    target = compile_target("cpu")          # this host's CPU devices
    peak_flops("TPU v5")                    # a device_kind -> bf16 FLOP/s, or None

TPU names are `<generation>:<topology>` as libtpu spells them (v4:2x2x1, v5e:2x2, v5p:2x2x1,
v6e:2x4). GPU nodes are `<gpu>x<count>`; their descriptions (gpu_targets/*.txtpb) hold the
card's compute capability, SM count, clocks and memory, from the vendor's data sheets.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip: its memory for a program (bytes), its peak bf16 FLOP/s, its HBM
    bandwidth and its interconnect bandwidth to the other chips (bytes/s; None where no figure
    is published)."""

    name: str
    memory_bytes: int
    peak_bf16_flops: float
    device_kinds: tuple[str, ...]  # jax Device.device_kind values of this chip
    hbm_bytes_per_second: float | None = None
    interconnect_bytes_per_second: float | None = None


# Memory: the HBM a program may use (v5p: what the TPU compiler reports as available; H100 /
# A100: the 76 GiB of an 80 GB card left after the CUDA context and XLA's reserve, the limit the
# project plans with). Peaks: dense bf16 from the vendors' data sheets. Bandwidths: HBM per chip,
# and the chip's bidirectional inter-chip bandwidth (TPU ICI; GPU NVLink), from:
# - v4: cloud.google.com/tpu/docs/v4 (275 TFLOP/s, 32 GiB, 1,200 GB/s; the page gives no ICI
#   figure per chip, so none here);
# - v5e: cloud.google.com/tpu/docs/v5e (197 TFLOP/s, 16 GB, 819 GB/s, ICI 400 GB/s);
# - v5p: cloud.google.com/tpu/docs/v5p (459 TFLOP/s, 95 GB, 2,765 GB/s, ICI 1,200 GB/s);
# - v6e: cloud.google.com/tpu/docs/v6e (918 TFLOP/s, 32 GB, 1,638 GB/s, ICI 800 GB/s);
# - H100 SXM5: NVIDIA H100 Tensor Core GPU data sheet (989 TFLOP/s dense bf16, 3.35 TB/s HBM3,
#   NVLink 900 GB/s);
# - A100 SXM4 80GB: NVIDIA A100 data sheet (312 TFLOP/s bf16, 2,039 GB/s HBM2e, NVLink 600 GB/s).
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, ("TPU v4",), 1200e9, None),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, ("TPU v5 lite", "TPU v5e"), 819e9, 400e9),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, ("TPU v5", "TPU v5p"), 2765e9, 1200e9),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, ("TPU v6 lite", "TPU v6e"), 1638e9, 800e9),
    "h100": Chip(
        "H100 80GB", 76 * GIB, 989e12, ("NVIDIA H100 80GB HBM3", "NVIDIA H100"), 3.35e12, 900e9
    ),
    "a100": Chip(
        "A100 80GB", 76 * GIB, 312e12, ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB"), 2039e9, 600e9
    ),
}

GPU_TARGETS = os.path.join(os.path.dirname(__file__), "gpu_targets")


class UnknownTarget(ValueError):
    """A topology name the fit check cannot compile for (the message says which are known)."""


def peak_flops(device_kind: str) -> float | None:
    """Peak bf16 FLOP/s of one device of this kind, None when the kind is not in the table."""
    for chip in CHIPS.values():
        if any(device_kind.startswith(kind) for kind in chip.device_kinds):
            return chip.peak_bf16_flops
    return None


def model_flops_utilisation(flops: float, seconds: float, devices: Sequence[Any]) -> float | None:
    """FLOPs / (seconds x devices x the devices' peak bf16 FLOP/s): the perf/mfu metric. None
    when the device kind has no known peak (e.g. a CPU) or nothing was measured."""
    peak = peak_flops(devices[0].device_kind)
    if peak is None or flops <= 0 or seconds <= 0:
        return None
    return flops / (seconds * len(devices) * peak)


@dataclasses.dataclass
class Target:
    """Compile-only devices of a named topology and what each chip holds."""

    name: str
    platform: str  # "tpu", "gpu" or "cpu"
    devices: list[Any]
    chip: Chip
    # Whether the compiler itself refuses a program that does not fit (TPU does; GPU and CPU
    # compile anything, so the fit check compares the memory analysis with the chip).
    compiler_checks_memory: bool


def _tpu_target(name: str) -> Target:
    generation = name.split(":", 1)[0]
    if generation not in ("v4", "v5e", "v5p", "v6e"):
        raise UnknownTarget(f"unknown TPU generation {generation!r} (v4, v5e, v5p, v6e)")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # Another process (a test, a second fit) may hold libtpu: compile-only use needs no lock.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise UnknownTarget(
            f"{name}: libtpu is not installed (pip install -r requirements-fit.txt)"
        ) from e
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(name, "tpu")
    except Exception as e:  # libtpu's error for a shape it does not know
        raise UnknownTarget(f"{name}: libtpu does not know this topology ({e})") from e
    return Target(name, "tpu", list(topology.devices), CHIPS[generation], True)


def _gpu_target(name: str, gpu: str, count: int) -> Target:
    path = os.path.join(GPU_TARGETS, f"{gpu}.txtpb")
    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError as e:
        raise UnknownTarget(
            f"{name}: the CUDA compiler plugin is not installed "
            "(pip install -r requirements-fit.txt)"
        ) from e
    from jax.experimental import topologies

    with open(path) as f:
        description = f.read()
    topology = topologies.get_topology_desc(
        "cuda", "cuda", target_config=description, topology=f"1x1x{count}"
    )
    return Target(name, "gpu", list(topology.devices), CHIPS[gpu], False)


def compile_target(name: str, cpu_memory_bytes: int | None = None) -> Target:
    """The compile-only devices of `name` (module docstring). `cpu` is this process's CPU
    devices, with `cpu_memory_bytes` per device (default: the host's memory / device count)."""
    if name == "cpu":
        import jax

        devices = jax.devices("cpu")
        if cpu_memory_bytes is None:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            cpu_memory_bytes = total // len(devices)
        chip = Chip("CPU", int(cpu_memory_bytes), 0.0, ("cpu",))
        return Target(name, "cpu", list(devices), chip, False)
    gpu = re.fullmatch(r"(h100|a100)x(\d+)", name)
    if gpu:
        return _gpu_target(name, gpu.group(1), int(gpu.group(2)))
    if re.fullmatch(r"v[0-9][a-z]?:[0-9x]+", name):
        return _tpu_target(name)
    raise UnknownTarget(
        f"unknown topology {name!r}: use cpu, a TPU slice such as v5p:2x2x1 or v6e:2x4 "
        "(v4, v5e, v5p, v6e), or a GPU node h100x8 / a100x8"
    )
