"""Multi-host start-up (jaxvrl/parallel/mesh.py, launch/local.sh): the decisions as pure
functions, the launcher with a stand-in for Python, and two real two-process runs on the CPU (gloo
collectives; a process that dies)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from demo_fixtures import QUICK_COMPILE

from configs import base
from jaxvrl.parallel import mesh
from jaxvrl.parallel.mesh import (
    distributed_arguments,
    launched_on_a_cluster,
    lost_process_message,
    slurm_step_tasks,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# When to start, and with what.

# What srun gives task 2 of a 4-task job step (Slurm's env_array_for_step and slurmstepd).
SRUN_TASK = {
    "SLURM_JOB_ID": "7",
    "SLURM_JOB_NODELIST": "node-[1-2]",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NODELIST": "node-[1-2]",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_PROCID": "2",
    "SLURM_LOCALID": "0",
}
# The batch script of a 4-task job (sbatch): the job's task count, no step (and srun not yet run).
SBATCH_BODY = {
    "SLURM_JOB_ID": "7",
    "SLURM_JOB_NODELIST": "node-[1-2]",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}
# An salloc shell of a 4-task allocation.
SALLOC_SHELL = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node-[1-2]", "SLURM_NTASKS": "4"}


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"JAX_COORDINATOR_ADDRESS": ""}, False),
        ({"JAX_NUM_PROCESSES": "2"}, True),
        ({"JAX_NUM_PROCESSES": "1"}, False),
        (SRUN_TASK, True),
        ({**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}, False),
        (SBATCH_BODY, False),  # the job's tasks, not processes that run
        (SALLOC_SHELL, False),
        # Slurm's own steps (batch 0xfffffffb, interactive 0xfffffffa) are no srun step.
        ({**SRUN_TASK, "SLURM_STEP_ID": str(0xFFFFFFFB)}, False),
        ({**SRUN_TASK, "SLURM_STEP_ID": str(0xFFFFFFFA)}, False),
        ({**SRUN_TASK, "SLURM_STEP_ID": ""}, False),
        ({**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "not a number"}, False),
        ({"SLURM_NTASKS": "not a number"}, False),
        ({"TPU_WORKER_HOSTNAMES": "t1k-0,t1k-1,t1k-2,t1k-3"}, True),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
        ({"TPU_PROCESS_ADDRESSES": "10.0.0.2:8476,10.0.0.3:8476"}, True),
        ({"TPU_WORKER_HOSTNAMES": ""}, False),
    ],
)
def test_launched_on_a_cluster(environ, expected):
    assert launched_on_a_cluster(environ) is expected


def test_all_three_variables_give_every_argument_and_turn_cluster_detection_off():
    environ = {
        "JAX_COORDINATOR_ADDRESS": "node-0:4321",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3",
        # Ignored once the variables are all there: no SLURM_LOCALID GPU restriction.
        "SLURM_JOB_ID": "7",
        "SLURM_NTASKS": "4",
    }
    assert distributed_arguments(environ) == {
        "coordinator_address": "node-0:4321",
        "num_processes": 4,
        "process_id": 3,
        "cluster_detection_method": "deactivate",
    }


def test_no_variables_leave_everything_to_jax_cluster_detection():
    assert distributed_arguments({}) == {}
    assert distributed_arguments(SBATCH_BODY) == {}
    assert distributed_arguments(SALLOC_SHELL) == {}


def test_an_srun_task_counts_the_tasks_of_its_step():
    """JAX's SLURM detection (the coordinator, the task's GPU) with the step's own task count:
    `srun --preserve-env` leaves SLURM_NTASKS at the job's."""
    assert slurm_step_tasks(SRUN_TASK) == 4
    assert slurm_step_tasks(SBATCH_BODY) == slurm_step_tasks(SALLOC_SHELL) == 0
    expected = {"num_processes": 4, "process_id": 2, "cluster_detection_method": "slurm"}
    assert distributed_arguments(SRUN_TASK) == expected
    assert distributed_arguments({**SRUN_TASK, "SLURM_NTASKS": "16"}) == expected
    # Every JAX variable given (launch/slurm.sbatch): those, and no detection.
    explicit = {"JAX_COORDINATOR_ADDRESS": "node-1:1", "JAX_NUM_PROCESSES": "4"}
    explicit["JAX_PROCESS_ID"] = "2"
    assert distributed_arguments({**SRUN_TASK, **explicit})["cluster_detection_method"] == (
        "deactivate"
    )


def test_the_slurm_step_variables_are_the_ones_jax_detection_reads():
    from jax._src.clusters import slurm_cluster

    jax_reads = {
        value
        for value in vars(slurm_cluster).values()
        if isinstance(value, str) and value.startswith("SLURM_")
    }
    assert "SLURM_STEP_NODELIST" in jax_reads  # a step's, absent from the batch script
    # All that its is_env_present asks for (the node count it reads only for its own use).
    assert jax_reads - {"SLURM_STEP_NUM_NODES"} <= set(mesh.SLURM_STEP_VARIABLES)


def test_a_coordinator_alone_lets_cluster_detection_fill_in_the_rest():
    args = distributed_arguments({"JAX_COORDINATOR_ADDRESS": "[::1]:4321"})
    assert args == {"coordinator_address": "[::1]:4321"}


@pytest.mark.parametrize(
    "environ, named",
    [
        ({"JAX_COORDINATOR_ADDRESS": "node-0"}, "JAX_COORDINATOR_ADDRESS"),
        ({"JAX_COORDINATOR_ADDRESS": "node-0:port"}, "JAX_COORDINATOR_ADDRESS"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "-1"}, "JAX_PROCESS_ID"),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
            "JAX_PROCESS_ID=2 is not below JAX_NUM_PROCESSES=2",
        ),
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "without JAX_COORDINATOR_ADDRESS"),
    ],
)
def test_a_wrong_variable_is_named(environ, named):
    with pytest.raises(ValueError, match=named):
        distributed_arguments(environ)


def test_config_has_jax_default_timeouts():
    config = base.get_config()
    assert config.mesh.heartbeat_timeout == 100
    assert config.mesh.initialization_timeout == 300
    assert config.mesh.distributed is None


def test_the_config_timeouts_reach_jax_distributed_initialize(monkeypatch):
    import jax

    seen = {}

    def initialize(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("Barrier timed out")  # as if a process never came

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # leave gloo off here
    config = base.get_config()
    config.mesh.distributed = True
    config.mesh.heartbeat_timeout = 240
    config.mesh.initialization_timeout = 900
    env = {"JAX_COORDINATOR_ADDRESS": "node-1:1234", "JAX_NUM_PROCESSES": "2"}
    env["JAX_PROCESS_ID"] = "1"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match="up to 900 s for every process") as error:
        mesh.initialize_from_config(config.mesh)
    assert "mesh.initialization_timeout" in str(error.value)
    assert seen == {
        "heartbeat_timeout_seconds": 240,
        "initialization_timeout": 900,
        "coordinator_address": "node-1:1234",
        "num_processes": 2,
        "process_id": 1,
        "cluster_detection_method": "deactivate",
    }


# What jax 0.10.2 printed in the runs below (process 1 gone, process 0 still running).
GLOO_ERROR = (
    "jax.errors.JaxRuntimeError: UNKNOWN: Gloo AllGather failed: "
    "[external/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer [127.0.0.1]:16259"
)
GLOO_ALL_REDUCE_ERROR = (
    "JaxRuntimeError: INTERNAL: Error dispatching computation: Gloo all-reduce failed: "
    "[external/gloo/gloo/transport/tcp/pair.cc:538] Read error [127.0.0.1]:35474: Connection "
    "reset by peer"
)
# The embedding's all-to-all (model.sharding.embedding_lookup) runs as a collective permute on gloo.
GLOO_PERMUTE_ERROR = (
    "error: JaxRuntimeError: UNKNOWN: Gloo collective permute failed: "
    "[external/gloo/gloo/transport/tcp/pair.cc:538] Read error [127.0.0.1]:28813: Connection "
    "reset by peer"
)
HEARTBEAT_ERROR = (
    "F1202 10:41:24.181418   25665 client.h:80] Terminating process because the JAX distributed "
    "service detected fatal errors. This most likely indicates that another task died; see the "
    "other task logs for more details. absl::Status: UNAVAILABLE: The following tasks are "
    "unhealthy (stopped sending heartbeats):\n1\nThe tasks have crashed."
)


def test_devices_per_process_takes_the_first_devices_of_each_process():
    import jax

    config = base.get_config().mesh
    config.devices_per_process = 2
    two = mesh.mesh_from_config(config)  # data -1: the devices it was given
    assert list(two.devices.reshape(-1)) == jax.devices()[:2] and two.shape["data"] == 2
    config.devices_per_process = 0
    assert mesh.mesh_from_config(config).devices.size == jax.device_count()


def test_lost_process_messages_become_one_line():
    line = lost_process_message(GLOO_ERROR)
    assert line is not None and "\n" not in line
    assert "lost another process" in line and "Connection closed by peer [127.0.0.1]:16259" in line
    line = lost_process_message(HEARTBEAT_ERROR)
    assert line is not None and line.startswith("lost process 1 of the multi-host run")
    assert lost_process_message("UNAVAILABLE: Task 3 heartbeat timeout. This indicates").startswith(
        "lost process 3"
    )
    line = lost_process_message(GLOO_ALL_REDUCE_ERROR, lost=[1])
    assert line is not None and line.startswith("lost process 1 of the multi-host run")
    assert "gloo all-reduce: Read error [127.0.0.1]:35474: Connection reset by peer" in line
    line = lost_process_message(GLOO_PERMUTE_ERROR, lost=[1])
    assert line is not None and "gloo collective permute: Read error" in line
    assert lost_process_message("ValueError: shapes do not match") is None


# ------------------------------------------------------------------------------------------------
# launch/local.sh, with a stand-in for Python (no JAX): arguments, logs, failures.

FAKE_PYTHON = """#!/usr/bin/env bash
if [[ $1 == -c ]]; then exec "$REAL_PYTHON" "$@"; fi
echo "process $JAX_PROCESS_ID of $JAX_NUM_PROCESSES devices=$JAX_NUM_CPU_DEVICES" \\
  "platforms=$JAX_PLATFORMS coordinator=$JAX_COORDINATOR_ADDRESS args: $*"
if [[ $JAX_PROCESS_ID == "${FAIL:-}" ]]; then echo "boom in $JAX_PROCESS_ID" >&2; exit 3; fi
if [[ -n ${FAIL:-} ]]; then sleep 60; fi
"""


def _run_local(tmp_path, fail: str = "") -> tuple[subprocess.CompletedProcess, float]:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(
        os.environ,
        PYTHON=str(fake),
        REAL_PYTHON=sys.executable,
        DEVICES="2",
        PORT="4321",
        FAIL=fail,
    )
    start = time.monotonic()
    # From another directory: WORKDIR is the caller's, configs/demo.py the repository's.
    result = subprocess.run(
        [str(REPO / "launch/local.sh"), "3", "configs/demo.py", "run", "--x=1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - start


def test_local_launcher_starts_every_process_with_its_coordinates(tmp_path):
    result, _ = _run_local(tmp_path)
    assert result.returncode == 0, result.stderr
    args = (
        f"args: -m jaxvrl.train --config={REPO / 'configs/demo.py'} "
        f"--workdir={tmp_path / 'run'} --config.mesh.distributed=true --x=1"
    )
    expected = "devices=2 platforms=cpu coordinator=127.0.0.1:4321 " + args
    assert result.stdout.strip() == f"process 0 of 3 {expected}"  # process 0: the terminal
    for i in (1, 2):
        log = (tmp_path / "run" / f"process_{i}.log").read_text()
        assert log.strip() == f"process {i} of 3 {expected}"


def test_local_launcher_stops_the_others_and_names_the_failed_process(tmp_path):
    result, seconds = _run_local(tmp_path, fail="2")
    assert result.returncode == 1
    assert "process 2 of 3 exited with status 3" in result.stderr
    assert "boom in 2" in result.stderr  # the tail of its log
    assert seconds < 30  # the others (sleeping 60 s) were stopped


# ------------------------------------------------------------------------------------------------
# Two real processes on the CPU, two devices each.

WORKER = """
import logging, os, sys, time
logging.basicConfig(level=logging.INFO)
from jaxvrl.parallel.mesh import initialize_distributed
mode, heartbeat = sys.argv[1], int(sys.argv[2])
assert initialize_distributed(True, heartbeat_timeout_seconds=heartbeat)
import jax, numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
me = jax.process_index()
ids = multihost_utils.process_allgather(np.int32(me))
from jaxvrl.parallel.mesh import make_mesh
mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})  # the trainer's mesh, over both processes
x = multihost_utils.host_local_array_to_global_array(
    np.full((jax.local_device_count(),), me + 1, np.float32), mesh, P("data"))
psum = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "data"), mesh=mesh, in_specs=P("data"),
                             out_specs=P()))
total = float(np.asarray(psum(x).addressable_data(0))[0])
try:
    make_mesh({"data": 1, "fsdp": 1, "tensor": 1})  # would leave process 1 out
    small = "built"
except ValueError as e:
    small = "refused" if "make one axis -1" in str(e) else str(e)
print(f"RESULT {me} {ids.tolist()} {jax.local_device_count()} {jax.device_count()} {total} "
      f"{small}", flush=True)
if mode == "ok":
    sys.exit(0)
if me == 1:
    os._exit(1)  # abruptly: no exception, no shutdown
while True:  # process 0
    if mode == "collective":
        multihost_utils.sync_global_devices("step")
    else:
        time.sleep(0.05)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(tmp_path, mode: str, heartbeat: int = 30) -> list[subprocess.Popen]:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    port = _free_port()
    procs = []
    for i in range(2):
        env = {**os.environ, "XLA_FLAGS": QUICK_COMPILE}  # JAX_NUM_CPU_DEVICES below
        env.update(
            JAX_PLATFORMS="cpu",
            JAX_NUM_CPU_DEVICES="2",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
        )
        out = open(tmp_path / f"out_{i}.txt", "w")  # noqa: SIM115 (closed with the process)
        err = open(tmp_path / f"err_{i}.txt", "w")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), mode, str(heartbeat)],
                env=env,
                stdout=out,
                stderr=err,
                cwd=tmp_path,
            )
        )
        out.close()
        err.close()
    return procs


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.slow  # about 5 s
def test_two_processes_gather_and_sum_over_gloo(tmp_path):
    procs = _start_two(tmp_path, "ok")
    try:
        codes = [_wait(p, 120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errs = [(tmp_path / f"err_{i}.txt").read_text() for i in range(2)]
    assert codes == [0, 0], errs
    for i in range(2):
        out = (tmp_path / f"out_{i}.txt").read_text()
        # its index, everybody's indices, 2 local / 4 global devices, 1 + 1 + 2 + 2, and a
        # mesh of one device refused
        assert f"RESULT {i} [0, 1] 2 4 6.0 refused" in out, (out, errs[i])
        assert f"process {i} of 2, 2 local / 4 global devices (cpu)" in errs[i]
        assert "cpu collectives gloo" in errs[i]


@pytest.mark.slow  # each about 15 s: the heartbeat timeout, then the exit
@pytest.mark.parametrize(
    "mode, heartbeat, expected",
    [
        # In a collective, gloo notices at once; the exit hook asks the coordination service
        # which process is gone, names it and ends.
        ("collective", 10, "error: process 0 of 2: lost process 1 of the multi-host run"),
        # Elsewhere, the coordination service aborts it after the heartbeat timeout.
        ("idle", 10, "The following tasks are unhealthy (stopped sending heartbeats):\n1\n"),
    ],
    ids=["in-a-collective", "idle"],
)
def test_a_lost_process_ends_the_others(tmp_path, mode, heartbeat, expected):
    procs = _start_two(tmp_path, mode, heartbeat)
    try:
        assert _wait(procs[1], 120) == 1
        lost = time.monotonic()
        code = _wait(procs[0], 60)
        seconds = time.monotonic() - lost
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    err = (tmp_path / "err_0.txt").read_text()
    assert code != 0, err
    assert expected in err, err
    assert seconds < heartbeat + 15, (seconds, err)
