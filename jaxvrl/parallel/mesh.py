"""The device mesh (axes data, fsdp, tensor), the logical-axis rules and multi-host start-up.

One mesh serves every step. Its shape and the rules that map logical parameter axes onto it are
config data (`config.mesh`), so changing parallelism never touches the model or the trainer.

Multi-host start-up (`initialize_distributed`, one process per host, before any JAX call that
creates a backend) takes its coordinates from, in this order:

  1. `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`:
     plain multi-node GPU runs, `launch/local.sh`, `launch/slurm.sbatch` and the tests. With all
     three set, JAX's cluster detection is off, so every process sees all its host's devices
     (`JAX_LOCAL_DEVICE_IDS` still restricts them: launch/slurm.sbatch sets it to the task's
     `SLURM_LOCALID` when it runs one task per GPU).
  2. A task of an `srun` job step: JAX's SLURM detection (the coordinator on the step's first
     node, each task only the GPU numbered by its `SLURM_LOCALID`, which suits one task per GPU),
     with the step's own task count. Only a real step counts (`SLURM_STEP_ID` of a step srun
     started, `SLURM_STEP_NUM_TASKS`): the batch script and an salloc shell also carry
     `SLURM_NTASKS`, but there the tasks have not been started, and this one process is alone.
  3. JAX's other cluster detection: a Cloud TPU VM pod slice (the TPU metadata), Open MPI,
     Kubernetes.

On the CPU the cross-process collectives go through gloo (`jax_cpu_collectives_implementation`).
`mesh.heartbeat_timeout` bounds how long the others wait for a process that died or hangs: after
that many seconds without a heartbeat the coordination service ends every process.
`mesh.initialization_timeout` bounds how long every process waits at start-up for the others to
connect to the coordinator. A process
whose main program raises exits at once (after its traceback, and a line naming the lost process
where the error is one: `lost_process_message`, which also shows what JAX prints), so the others
see the loss in their next collective.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from model.sharding import DEFAULT_RULES, Rules, mesh_axes

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")


# The explicit start-up variables (module docstring, 1).
COORDINATOR_VARIABLE = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_VARIABLE = "JAX_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "JAX_PROCESS_ID"


def _count(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, "") or 1)
    except ValueError:
        return 1


# The variables srun gives every task of a job step, and that JAX's SLURM detection reads
# (jax/_src/clusters/slurm_cluster.py: SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS,
# SLURM_PROCID, SLURM_LOCALID). The batch script and an salloc shell have SLURM_NTASKS (the job's
# tasks) but no SLURM_STEP_ID or SLURM_STEP_NUM_TASKS.
SLURM_STEP_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)
# Step ids above this one are Slurm's own steps (batch script, extern, interactive: slurm.h).
SLURM_MAX_NORMAL_STEP_ID = 0xFFFFFFF0


def slurm_step_tasks(environ: Mapping[str, str] | None = None) -> int:
    """The number of tasks of the srun job step this process is one of; 0 outside a step (no
    SLURM job, the batch script, an salloc shell, Slurm's own steps)."""
    environ = os.environ if environ is None else environ
    if not all(environ.get(name, "").strip() for name in SLURM_STEP_VARIABLES):
        return 0
    try:
        step_id = int(environ["SLURM_STEP_ID"])
        tasks = int(environ["SLURM_STEP_NUM_TASKS"])
        int(environ["SLURM_PROCID"])
    except ValueError:
        return 0
    if not 0 <= step_id <= SLURM_MAX_NORMAL_STEP_ID:
        return 0
    return max(tasks, 0)


def launched_on_a_cluster(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment says we are one of several processes (JAX coordinator variables,
    a task of an srun job step of several tasks, or a multi-host TPU slice)."""
    environ = os.environ if environ is None else environ
    if environ.get(COORDINATOR_VARIABLE):
        return True
    if _count(environ, NUM_PROCESSES_VARIABLE) > 1:
        return True
    if slurm_step_tasks(environ) > 1:
        return True
    hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def distributed_arguments(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The arguments of `jax.distributed.initialize` that the explicit variables give (module
    docstring, 1); in an srun job step without them, JAX's SLURM detection with the step's task
    count and this task's rank (2); {} otherwise (JAX's cluster detection then finds them).
    Raises ValueError, naming the variable, for a value that cannot be right."""
    environ = os.environ if environ is None else environ
    args: dict[str, Any] = {}
    address = environ.get(COORDINATOR_VARIABLE, "").strip()
    if address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{COORDINATOR_VARIABLE}={address!r}: expected HOST:PORT")
        args["coordinator_address"] = address
    for name, key, lowest in (
        (NUM_PROCESSES_VARIABLE, "num_processes", 1),
        (PROCESS_ID_VARIABLE, "process_id", 0),
    ):
        value = environ.get(name, "").strip()
        if not value:
            continue
        try:
            args[key] = int(value)
        except ValueError:
            raise ValueError(f"{name}={value!r}: expected an integer") from None
        if args[key] < lowest:
            raise ValueError(f"{name}={value!r}: expected an integer >= {lowest}")
    process_id, num_processes = args.get("process_id", 0), args.get("num_processes")
    if num_processes is not None and process_id >= num_processes:
        raise ValueError(
            f"{PROCESS_ID_VARIABLE}={process_id} is not below "
            f"{NUM_PROCESSES_VARIABLE}={num_processes}"
        )
    if ("num_processes" in args or "process_id" in args) and "coordinator_address" not in args:
        raise ValueError(
            f"{NUM_PROCESSES_VARIABLE} / {PROCESS_ID_VARIABLE} are set without "
            f"{COORDINATOR_VARIABLE} (HOST:PORT of process 0)"
        )
    if len(args) == 3:
        # All given: no cluster detection, which under SLURM would restrict each process to the
        # one GPU numbered SLURM_LOCALID (one process per host drives all its devices).
        args["cluster_detection_method"] = "deactivate"
    elif not args and (tasks := slurm_step_tasks(environ)):
        # JAX counts SLURM_NTASKS, which `srun --preserve-env` leaves at the job's count; the
        # step's own count is SLURM_STEP_NUM_TASKS.
        args = {
            "num_processes": tasks,
            "process_id": int(environ["SLURM_PROCID"]),
            "cluster_detection_method": "slurm",
        }
    return args


# What a process of a multi-host run sees when another one dies (observed with jax 0.10.2 on the
# CPU, tests/test_parallel_mesh.py):
#  - in a collective: at once, a Python exception from gloo that names no process, e.g.
#      jax.errors.JaxRuntimeError: UNKNOWN: Gloo AllGather failed:
#      [external/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer [127.0.0.1]:16259
#    or (an all-reduce in flight)
#      JaxRuntimeError: INTERNAL: Error dispatching computation: Gloo all-reduce failed:
#      [external/gloo/gloo/transport/tcp/pair.cc:538] Read error [127.0.0.1]:35474: Connection
#      reset by peer
#  - anywhere else (or with the dead process hung rather than gone): after `mesh.heartbeat_timeout`
#    seconds, an abort (SIGABRT, exit status 134) from the coordination service, whose
#    message does name it, across lines:
#      F... client.h:80] Terminating process because the JAX distributed service detected fatal
#      errors. This most likely indicates that another task died; ... absl::Status: UNAVAILABLE:
#      The following tasks are unhealthy (stopped sending heartbeats):
#      1
# Without the hook below, a Python exception is followed by the same wait and abort (in JAX's
# shutdown barrier), so every survivor took about heartbeat_timeout seconds to end.
_HEARTBEAT_LOST = (
    re.compile(r"tasks are unhealthy \(stopped sending heartbeats\):\s*([\d,\s]*\d)"),
    re.compile(r"Task (\d+) heartbeat timeout"),
)
_PEER_LOST = re.compile(
    r"Gloo (\w[\w -]*?) failed: (?:\[[^\]]*\] )?((?:Connection (?:closed|reset) by peer|Read error|"
    r"Write error|Timed out)[^\n]*)"
)


def lost_process_message(text: str, lost: Sequence[int] = ()) -> str | None:
    """One line for an error message that says another process of the run died (the comment
    above); None for any other message."""
    for pattern in _HEARTBEAT_LOST:
        match = pattern.search(text)
        if match:
            ids = ", ".join(re.findall(r"\d+", match.group(1)))
            return (
                f"lost process {ids} of the multi-host run (it stopped sending heartbeats: it "
                "died, was killed or hangs); its own output has the cause"
            )
    match = _PEER_LOST.search(text)
    if match:
        who = "another process" if not lost else "process " + ", ".join(map(str, lost))
        return (
            f"lost {who} of the multi-host run during a collective (gloo "
            f"{match.group(1)}: {match.group(2).strip()}); that process died or was killed, its "
            "own output has the cause"
        )
    return None


def missing_processes(wait_seconds: float = 10.0) -> list[int]:
    """The processes the coordination service no longer counts as alive, asked until one is
    missing or `wait_seconds` have passed (a dead process's connection to the service closes
    within about a second); [] where that cannot be asked."""
    try:
        from jax._src import distributed as jax_distributed

        client = jax_distributed.global_state.client
        n = jax.process_count()
    except Exception:  # noqa: BLE001 - best effort while reporting another error
        return []
    if client is None:
        return []
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            live = set(client.get_live_nodes(list(range(n))))
        except Exception:  # noqa: BLE001
            return []
        missing = [i for i in range(n) if i not in live]
        if missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.5)


_hook_installed = False


def _install_exit_hook() -> None:
    """After an uncaught exception in a multi-host process: the traceback, one line naming a lost
    process where the error says so, then exit at once. Ending normally would wait in JAX's
    shutdown barrier for the other processes, which a failed run never reaches, until the
    heartbeat timeout aborts it; exiting lets the others see the loss straight away."""
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        try:
            previous(kind, value, traceback)
            line = lost_process_line(value)
            if line:
                print(f"error: {line}", file=sys.stderr)
        finally:
            exit_now(130 if issubclass(kind, KeyboardInterrupt) else 1)

    sys.excepthook = hook


def lost_process_line(error: BaseException) -> str | None:
    """In a multi-host run, "process i of n: lost process j ..." for an error that says another
    process died (naming it, asked of the coordination service where the error does not); None
    otherwise."""
    if not jax.distributed.is_initialized():
        return None
    line = lost_process_message(str(error))
    if line and line.startswith("lost another process"):
        line = lost_process_message(str(error), missing_processes())
    return f"process {jax.process_index()} of {jax.process_count()}: {line}" if line else None


def exit_now(status: int) -> None:
    """Ends a multi-host process at once (JAX's shutdown barrier would wait for processes a
    failed run never brings there, until the heartbeat timeout); a single process exits as
    usual."""
    if not jax.distributed.is_initialized():
        sys.exit(status)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _detected_coordinator() -> str:
    """The address JAX's cluster detection chose (JAX keeps it in a private module)."""
    try:
        from jax._src import distributed as jax_distributed

        return str(jax_distributed.global_state.coordinator_address)
    except (ImportError, AttributeError):
        return "(found by JAX's cluster detection)"


_coordinator = ""


def distributed_summary(heartbeat_timeout_seconds: int | None = None) -> str:
    """One line on this process's place in the run: process i of n, local / global devices,
    coordinator (`initialize_distributed` logs it; a trainer may log it again once its own
    logging is set up)."""
    if not jax.distributed.is_initialized():
        return f"single process, {jax.device_count()} {jax.devices()[0].platform} devices"
    line = (
        f"jax.distributed: process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices "
        f"({jax.devices()[0].platform}), coordinator {_coordinator}, cpu collectives "
        f"{jax.config.values.get('jax_cpu_collectives_implementation')}"
    )
    if heartbeat_timeout_seconds is not None:
        line += f", heartbeat timeout {int(heartbeat_timeout_seconds)} s"
    return line


def initialize_distributed(
    enabled: bool | None = None,
    heartbeat_timeout_seconds: int = 100,
    initialization_timeout_seconds: int = 300,
) -> bool:
    """Starts multi-host JAX (one process per host, module docstring); `None` decides from the
    environment. Must run before any JAX call that creates a backend (jax.devices() among them).
    `heartbeat_timeout_seconds` (config `mesh.heartbeat_timeout`): how long a process may go
    silent before the coordination service ends every process. `initialization_timeout_seconds`
    (config `mesh.initialization_timeout`): how long each process waits at start-up for all of
    them to connect. Returns whether JAX runs distributed."""
    if enabled is None:
        enabled = launched_on_a_cluster()
    if not enabled:
        return False
    if jax.distributed.is_initialized():
        return True
    args = distributed_arguments()
    # gloo carries the cross-process collectives of the CPU backend (the only choice on a CPU
    # host; the CPU client a GPU / TPU process also creates uses it too). A user's explicit other
    # choice (mpi) is kept. Must be set before the backend exists.
    if jax.config.values.get("jax_cpu_collectives_implementation") in (None, "gloo"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            heartbeat_timeout_seconds=int(heartbeat_timeout_seconds),
            initialization_timeout=int(initialization_timeout_seconds),
            **args,
        )
    except (RuntimeError, ValueError) as e:
        where = args.get("coordinator_address", "from JAX's cluster detection")
        raise RuntimeError(
            f"multi-host start-up (coordinator {where}, waiting up to "
            f"{int(initialization_timeout_seconds)} s for every process: "
            f"mesh.initialization_timeout) failed: {e}"
        ) from e
    global _coordinator
    _coordinator = args.get("coordinator_address") or _detected_coordinator()
    _install_exit_hook()
    log.info("%s", distributed_summary(heartbeat_timeout_seconds))
    return True


def initialize_from_config(mesh: Mapping[str, Any]) -> bool:
    """`initialize_distributed` with the settings of a config's `mesh` section (distributed,
    heartbeat_timeout, initialization_timeout)."""
    return initialize_distributed(
        mesh.get("distributed"),
        int(mesh.get("heartbeat_timeout", 100)),
        int(mesh.get("initialization_timeout", 300)),
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


def _first_of_each_process(devices: Sequence[jax.Device], k: int) -> list[jax.Device]:
    """The first `k` of `devices` of each process, process by process."""
    processes = sorted({d.process_index for d in devices})
    return [d for p in processes for d in [d for d in devices if d.process_index == p][:k]]


def make_mesh(
    shape: Mapping[str, int],
    devices: Sequence[jax.Device] | None = None,
    devices_per_process: int = 0,
) -> Mesh:
    """A mesh over `devices` (default: all) with axes (data, fsdp, tensor); with
    `devices_per_process` k > 0, over the first k devices of each process."""
    devices = list(jax.devices() if devices is None else devices)
    if devices_per_process > 0:
        devices = _first_of_each_process(devices, devices_per_process)
    fixed = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if -1 not in fixed and math.prod(fixed) < len(devices):
        wanted, processes = math.prod(fixed), jax.process_count()
        log.info("mesh %s uses %d of %d devices", dict(shape), wanted, len(devices))
        if processes > 1 and len(devices) == jax.device_count():
            # Every process must hold its share: the same number of devices from each.
            if wanted % processes:
                raise ValueError(
                    f"mesh shape {dict(shape)} uses {wanted} of the {len(devices)} devices of a "
                    f"{processes}-process run, not the same number from each process: make one "
                    "axis -1 (e.g. --config.mesh.shape.data=-1) or the mesh a multiple of the "
                    "processes"
                )
            devices = _first_of_each_process(devices, wanted // processes)
        else:
            # A mesh smaller than the machine (e.g. the demo's single device): the first devices.
            devices = devices[:wanted]
    sizes = mesh_shape(shape, len(devices))
    if jax.process_count() > 1:
        # Process-major: each process's devices form one contiguous block of the mesh, so the
        # batch rows a process feeds (multihost.py) are one block of the global batch.
        # (jax.make_mesh would order a TPU slice by its torus, interleaving the hosts.)
        devices = sorted(devices, key=lambda d: (d.process_index, d.id))
        return Mesh(
            np.array(devices).reshape(sizes),
            MESH_AXES,
            axis_types=(AxisType.Auto,) * len(MESH_AXES),
        )
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
        if not set(mesh_axes(target)) <= set(MESH_AXES):
            raise ValueError(f"rule {list(rule)}: mesh axes are {MESH_AXES}")
        out.append((str(name), target))
    return tuple(out)


def mesh_from_config(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh a config's `mesh` section asks for (`shape`, `devices_per_process`)."""
    return make_mesh(
        dict(mesh_config.shape),
        devices=devices,
        devices_per_process=int(mesh_config.get("devices_per_process", 0)),
    )
