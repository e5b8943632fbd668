"""Several processes train the model one process trains: 2 processes x 4 CPU devices against 1
process x 8 devices (mesh data 2 x fsdp 2 x tensor 2) through 2 SFT and 2 T-GRPO steps of a tiny
config; checkpoints restore into the other layout; a lost process ends the other with an error
that names it, and a restart resumes where the run stopped.

The runs are real `python -m jaxvrl.train` processes joined by jax.distributed (gloo collectives
on CPU). Tolerance 1e-5 on float32 parameters: the two layouts run the same programs on the same
global batches, so any difference is reassociation in the collectives.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from demo_fixtures import QUICK_COMPILE, shrunk_demo, trainer_env
from flax import nnx
from safetensors.numpy import load_file

from jaxvrl.checkpoint import Checkpointer
from jaxvrl.metrics import read_metrics
from jaxvrl.parallel import mesh
from model.config import ModelConfig
from model.qwen2_vl import Qwen2VL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900
LAST_STEP = 4
COMPARED = (
    "loss",
    "grad_norm",
    "reward/total",
    "accuracy",
    "completion_length",
    "train/kl",
    "train/entropy",
    "eval/video_r1/accuracy",
)


def overrides(root: str, workdir: str, *extra: str) -> list[str]:
    """The demo shrunk to seconds: 2 SFT + 2 T-GRPO steps, a checkpoint after each, 4 held-out
    videos evaluated at the start of RL and at the end, 8 devices in a data 2 x fsdp 2 x
    tensor 2 mesh."""
    return shrunk_demo(
        root,
        workdir,
        "--config.sft.batch_size=4",
        "--config.sft.steps=2",
        "--config.rl.steps=2",
        "--config.rl.dynamic_sampling.enabled=false",
        # The tiny model earns no reward yet: the entropy bonus (and then the KL term) gives the
        # RL steps a gradient to compare.
        "--config.rl.entropy_coef=0.01",
        "--config.checkpoint.every=1",
        "--config.checkpoint.keep=10",
        "--config.checkpoint.async_save=false",
        "--config.eval.num_examples=4",
        "--config.metrics.trackers=()",
        "--config.mesh.shape.data=2",
        "--config.mesh.shape.fsdp=2",
        "--config.mesh.shape.tensor=2",
        "--config.mesh.devices_per_process=0",  # every device (the demo takes one of each)
        *extra,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(root: str, workdir: str, processes: int, *extra: str) -> list[subprocess.Popen]:
    """`processes` trainer processes with 8 / processes CPU devices each."""
    port = free_port()
    os.makedirs(workdir, exist_ok=True)
    procs = []
    for i in range(processes):
        env = trainer_env(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes} {QUICK_COMPILE}",
        )
        if processes > 1:
            env.update(
                JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                JAX_NUM_PROCESSES=str(processes),
                JAX_PROCESS_ID=str(i),
            )
        # The child keeps its own copy of the file descriptor.
        with open(os.path.join(workdir, f"stderr_{i}.txt"), "a") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "jaxvrl.train", *overrides(root, workdir, *extra)],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
    return procs


def stderr_of(workdir: str, i: int) -> str:
    with open(os.path.join(workdir, f"stderr_{i}.txt")) as f:
        return f.read()


def run(root: str, workdir: str, processes: int, *extra: str) -> str:
    procs = start(root, workdir, processes, *extra)
    for i, p in enumerate(procs):
        code = p.wait(timeout=TIMEOUT)
        assert code == 0, stderr_of(workdir, i)[-4000:]
    return workdir


def final_params(workdir: str, step: int = LAST_STEP) -> dict[str, np.ndarray]:
    """The parameters of a checkpointed step, restored onto this process's first device."""
    with open(os.path.join(workdir, "model_config.json")) as f:
        config = ModelConfig.from_hf_dict(json.load(f)["hf_config"])
    abstract = nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0)))
    _, params = nnx.split(abstract, nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        restored = checkpointer.restore_params(step, params)
    finally:
        checkpointer.close()
    return {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(restored)
    }


def assert_params_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= atol, f"largest parameter difference {worst:.3g}"


def lost_process_line(message: str) -> str:
    """The first of our lines that names the lost process, else the coordination service's
    abort read by mesh.lost_process_message; "" when neither is there."""
    ours = [line for line in message.splitlines() if "lost process" in line]
    return ours[0] if ours else mesh.lost_process_message(message) or ""


@pytest.fixture(scope="module")
def root(small_demo_set):
    return small_demo_set


@pytest.fixture(scope="module")
def single(root, tmp_path_factory):
    return run(root, str(tmp_path_factory.mktemp("single")), 1)


@pytest.fixture(scope="module")
def two(root, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("two"))
    return run(root, workdir, 2, f"--config.export.hf_dir={workdir}/hf")


@pytest.mark.slow
def test_two_processes_train_the_parameters_and_metrics_of_one(single, two):
    assert_params_close(final_params(single), final_params(two))
    rows_1, rows_2 = read_metrics(single), read_metrics(two)
    assert [r["step"] for r in rows_1] == [r["step"] for r in rows_2] == [1, 2, 3, 4]
    for r1, r2 in zip(rows_1, rows_2, strict=True):
        for key in COMPARED:
            if key in r1:
                np.testing.assert_allclose(r2[key], r1[key], rtol=1e-4, atol=1e-6, err_msg=key)
        assert r1.get("tokens_per_second", 0) > 0 and r2.get("tokens_per_second", 0) > 0
    # The export gathers the sharded parameters to process 0, which writes them.
    exported = load_file(os.path.join(two, "hf", "model.safetensors"))
    embed = [v for k, v in final_params(two).items() if "embed_tokens" in k]
    np.testing.assert_array_equal(exported["model.embed_tokens.weight"], embed[0])


@pytest.mark.slow
def test_a_lost_process_ends_the_other_and_a_restart_resumes(root, single, tmp_path):
    # Two processes continue the single-process run from its SFT end (step 2) and are cut after
    # the first RL step's checkpoint; the restart ends where the single process ended.
    workdir = str(tmp_path / "killed")
    checkpoints = os.path.join(workdir, "checkpoints")
    os.makedirs(checkpoints)
    os.symlink(os.path.join(single, "checkpoints", "2"), os.path.join(checkpoints, "2"))
    procs = start(root, workdir, 2, "--config.mesh.heartbeat_timeout=10")  # the default: 100 s
    try:
        deadline = time.time() + TIMEOUT
        while not os.path.isdir(os.path.join(checkpoints, "3")):
            assert time.time() < deadline and procs[0].poll() is None, stderr_of(workdir, 0)[-3000:]
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        code = procs[0].wait(timeout=120)
        waited = time.time() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert code != 0
    assert waited <= 60, f"the surviving process took {waited:.0f} s to stop"
    # Our line (a collective failed) or the coordination service's abort, which names it too.
    # The abort's lines come through jaxvrl.native_logs' forwarding process, which may write
    # them just after process 0 ended.
    deadline = time.time() + 10
    while "lost process 1" not in (line := lost_process_line(stderr_of(workdir, 0))):
        assert time.time() < deadline, stderr_of(workdir, 0)[-3000:]
        time.sleep(0.2)
    print(f"process 0 ended {waited:.1f} s after process 1 was killed (exit {code}): {line}")
    run(root, workdir, 2)  # resumes from the newest complete checkpoint
    assert_params_close(final_params(single), final_params(workdir))
