"""Launching on SLURM (launch/slurm.sbatch), with stand-ins for `srun`, `scontrol` and `python`
first on PATH. No cluster; a few seconds in all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from launch_fixtures import (
    HOSTILE,
    REPO,
    base_env,
    executable,
    read_environ,
    records,
    skip_without_bash,
)

pytestmark = skip_without_bash


# ------------------------------------------------------------------------------------------------
# launch/slurm.sbatch, run as sbatch runs it: a copy in a spool directory, started in the
# directory the job was submitted from.

SCONTROL = r"""
case $1 in
  show)
    if [[ $2 == hostnames ]]; then printf '%s\n' node-a node-b node-c; fi
    if [[ $2 == job ]]; then
      printf '   JobId=%s JobName=jaxvrl\n   Command=%s\n   WorkDir=%s\n' \
        "$3" "$FAKE_COMMAND" "$FAKE_WORKDIR"
    fi ;;
  requeue) echo "requeue $2" >>"$FAKE/scontrol.log" ;;
esac
"""
# srun: records itself, then runs the command once per task (tasks per node x the job's nodes)
# with the variables srun gives each task of a step, each line labelled as --label does.
SRUN = r"""
printf '%s\0' "$@" >"$FAKE/srun.argv"
printf 'SRUN_CPUS_PER_TASK=%s\0' "${SRUN_CPUS_PER_TASK:-}" >"$FAKE/srun.env"
per_node=1
while [[ $1 == --* ]]; do
  case $1 in --ntasks-per-node=*) per_node=${1#*=} ;; esac
  shift
done
total=$((per_node * SLURM_JOB_NUM_NODES))
status=0
for ((rank = 0; rank < total; rank++)); do
  env SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=$total SLURM_NTASKS=$total SLURM_PROCID=$rank \
    SLURM_LOCALID=$((rank % per_node)) SLURM_STEP_NODELIST="$SLURM_JOB_NODELIST" \
    ${FAKE_CUDA:+"CUDA_VISIBLE_DEVICES=$FAKE_CUDA"} "$@" 2>&1 | sed "s/^/$rank: /" || status=1
done
exit $status
"""
TASK = r"""
printf '%s\0' "$@" >"$FAKE/task$SLURM_PROCID.argv"
for name in JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID JAX_LOCAL_DEVICE_IDS \
  XLA_PYTHON_CLIENT_MEM_FRACTION XLA_FLAGS; do
  if [[ -n ${!name+set} ]]; then printf '%s=%s\0' "$name" "${!name}"; fi
done >"$FAKE/task$SLURM_PROCID.env"
pwd >"$FAKE/task$SLURM_PROCID.cwd"
echo "task $SLURM_PROCID trains"
if [[ -n ${FAKE_HANG:-} ]]; then
  touch "$FAKE/started"
  while [[ ! -f $FAKE/release ]]; do sleep 0.05; done
fi
"""


@pytest.fixture
def slurm(tmp_path):
    """(spool script, submit directory, fake, env) of a two-node job, one task per node."""
    spool = tmp_path / "spool" / "job4242" / "slurm_script"
    spool.parent.mkdir(parents=True)
    shutil.copy(REPO / "launch" / "slurm.sbatch", spool)
    submit = tmp_path / "submit"
    submit.mkdir()
    (submit / "my_config.py").write_text("")
    fake = tmp_path / "fake"
    fake.mkdir()
    bin_dir = tmp_path / "bin"
    executable(bin_dir / "scontrol", SCONTROL)
    executable(bin_dir / "srun", SRUN)
    executable(bin_dir / "python", TASK)
    env = base_env(
        bin_dir,
        FAKE=str(fake),
        FAKE_COMMAND=str(REPO / "launch" / "slurm.sbatch"),
        FAKE_WORKDIR=str(submit),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="node-[a-b]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NTASKS="2",
        SLURM_TASKS_PER_NODE="1(x2)",
        SLURM_CPUS_PER_TASK="32",
        SLURM_GPUS_ON_NODE="8",
        SLURM_SUBMIT_DIR=str(submit),
    )
    return spool, submit, fake, env


def _sbatch(spool: Path, submit: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(spool), *args], cwd=submit, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


COORDINATOR = f"node-a:{4242 % 4096 + 61440}"


@pytest.mark.parametrize("found_by", ["command-absolute", "command-relative", "JAXVRL_REPO"])
def test_slurm_runs_one_task_per_node_from_the_repository(slurm, found_by):
    spool, submit, fake, env = slurm
    if found_by == "command-relative":
        env["FAKE_COMMAND"] = os.path.relpath(REPO / "launch" / "slurm.sbatch", submit)
    if found_by == "JAXVRL_REPO":
        env.update(JAXVRL_REPO=str(REPO), FAKE_COMMAND="(null)")
    result = _sbatch(spool, submit, env, "my_config.py", "runs/r1", HOSTILE)
    assert result.returncode == 0, result.stderr
    srun = records(fake / "srun.argv")
    assert srun[:5] == [
        "--label",
        "--kill-on-bad-exit=1",
        "--ntasks-per-node=1",
        "--cpus-per-task=32",
        "bash",
    ]
    assert read_environ(fake / "srun.env") == {"SRUN_CPUS_PER_TASK": "32"}
    for rank in (0, 1):
        assert (fake / f"task{rank}.cwd").read_text().strip() == str(REPO)
        assert records(fake / f"task{rank}.argv") == [
            "-m",
            "jaxvrl.train",
            f"--config={submit}/my_config.py",  # the submitter's, not the repository's
            f"--workdir={submit}/runs/r1",
            "--config.mesh.distributed=true",
            HOSTILE,
        ]
        assert read_environ(fake / f"task{rank}.env") == {
            "JAX_COORDINATOR_ADDRESS": COORDINATOR,
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(rank),
            "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9",
        }
        assert f"{rank}: task {rank} trains" in result.stdout


@pytest.mark.parametrize("bound", ["", "3"], ids=["all-gpus-visible", "slurm-bound-one-gpu"])
def test_slurm_runs_one_task_per_gpu_each_with_its_own_gpu(slurm, bound):
    spool, submit, fake, env = slurm
    env.update(SLURM_TASKS_PER_NODE="8(x2)", SLURM_NTASKS="16", SLURM_CPUS_PER_TASK="12")
    env["FAKE_CUDA"] = bound
    result = _sbatch(spool, submit, env, "configs/demo.py", "/shared/r1")
    assert result.returncode == 0, result.stderr
    srun = records(fake / "srun.argv")
    assert "--ntasks-per-node=8" in srun and "--cpus-per-task=12" in srun
    for rank in range(16):
        argv = records(fake / f"task{rank}.argv")
        assert argv[2] == f"--config={REPO}/configs/demo.py"  # only in the repository
        environ = read_environ(fake / f"task{rank}.env")
        assert environ["JAX_NUM_PROCESSES"] == "16" and environ["JAX_PROCESS_ID"] == str(rank)
        # Each task's own GPU: its local id, or the one GPU Slurm left visible to it.
        assert environ.get("JAX_LOCAL_DEVICE_IDS") == (None if bound else str(rank % 8))


@pytest.mark.parametrize(
    "tasks_per_node, said",
    [
        ("2(x2)", "2 tasks per node on nodes of 8 GPUs: run one task per node"),
        ("8,4", "every node must run the same number of tasks"),
    ],
)
def test_slurm_refuses_other_layouts(slurm, tasks_per_node, said):
    spool, submit, fake, env = slurm
    env["SLURM_TASKS_PER_NODE"] = tasks_per_node
    result = _sbatch(spool, submit, env, "configs/demo.py", "/shared/r1")
    assert result.returncode == 2
    assert said in result.stderr
    assert not (fake / "srun.argv").exists()


def test_slurm_refuses_a_url_workdir_and_an_unknown_repository(slurm):
    spool, submit, fake, env = slurm
    result = _sbatch(spool, submit, env, "configs/demo.py", "gs://b/r1")
    assert result.returncode == 2 and "is a URL" in result.stderr
    env["FAKE_COMMAND"] = "/var/spool/slurmd/job4242/slurm_script"
    result = _sbatch(spool, submit, env, "configs/demo.py", "/shared/r1")
    assert result.returncode == 2 and "set JAXVRL_REPO" in " ".join(result.stderr.split())
    assert not (fake / "srun.argv").exists()


def test_slurm_dry_run_prints_the_step_it_would_run(slurm):
    spool, submit, fake, env = slurm
    result = _sbatch(spool, submit, env, "--dry-run", "my_config.py", "runs/r1", HOSTILE)
    assert result.returncode == 0, result.stderr
    assert not (fake / "srun.argv").exists()
    lines = result.stdout.splitlines()
    assert lines[0] == "# layout: one task per node, each driving its node's 8 GPUs"
    assert lines[1] == f"cd {REPO}"
    assert f"export JAX_COORDINATOR_ADDRESS={COORDINATOR}" in lines
    # The printed step, pasted into a shell with the printed environment, runs what a job runs.
    script = "\n".join(line for line in lines if not line.startswith("#"))
    subprocess.run(["bash", "-c", script], env=env, check=True, capture_output=True, timeout=30)
    assert records(fake / "task1.argv")[2:] == [
        f"--config={submit}/my_config.py",
        f"--workdir={submit}/runs/r1",
        "--config.mesh.distributed=true",
        HOSTILE,
    ]
    assert read_environ(fake / "task1.env")["JAX_PROCESS_ID"] == "1"
    # Outside a job (the login node): placeholders where the job's values go.
    outside = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    result = _sbatch(REPO / "launch" / "slurm.sbatch", submit, outside, "--dry-run", "c.py", "/r")
    assert result.returncode == 0, result.stderr
    assert "export JAX_COORDINATOR_ADDRESS=FIRST_NODE:PORT" in result.stdout.splitlines()


@pytest.mark.parametrize("new_checkpoint", [True, False])
def test_slurm_requeues_near_the_time_limit_once_a_checkpoint_is_written(slurm, new_checkpoint):
    spool, submit, fake, env = slurm
    env.update(FAKE_HANG="1", SLURM_JOB_NUM_NODES="1", SLURM_TASKS_PER_NODE="1")
    workdir = submit / "runs" / "r1"
    (workdir / "checkpoints" / "3").mkdir(parents=True)  # from before this job
    job = subprocess.Popen(
        ["bash", str(spool), "configs/demo.py", str(workdir)], cwd=submit, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (fake / "started").exists():
            assert time.monotonic() < deadline and job.poll() is None
            time.sleep(0.05)
        if new_checkpoint:
            (workdir / "checkpoints" / "10").mkdir()
        (workdir / "checkpoints" / "12.orbax-checkpoint-tmp-1").mkdir()  # not complete
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends
        time.sleep(0.5)
        (fake / "release").touch()
        _, err = job.communicate(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err
    requeued = (fake / "scontrol.log").read_text() if (fake / "scontrol.log").exists() else ""
    if new_checkpoint:
        assert requeued == "requeue 4242\n"
        assert "resumes from the checkpoint of step 10" in err
    else:
        assert requeued == ""
        assert "no checkpoint was written in this job (newest: step 3); not requeued" in err
