"""Launching on Cloud TPU slices and GPU nodes (launch/tpu_pod.sh, gpu_node.sh), with stand-ins for
`gcloud`, `sudo`, `uv` and `python`: small bash scripts first on PATH that record the
arguments and environment they receive, and for `gcloud ... ssh` run the command in a directory
that plays the worker's home. No network, no cluster; a few seconds in all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
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
# launch/tpu_pod.sh: a checkout with the launcher, workers played by directories.

GCLOUD = r"""
printf '%s\0' "$@" >"$(mktemp "$FAKE/calls/XXXXXX")"
case "$1 $2 $3 $4" in
  "compute tpus tpu-vm describe") echo "$FAKE_ENDPOINTS" ;;
  "compute tpus tpu-vm scp")
    for home in "$FAKE"/workers/*; do cp "$5" "$home/${6#*:}"; done ;;
  "compute tpus tpu-vm ssh")
    for arg in "$@"; do
      case $arg in
        --worker=*) worker=${arg#--worker=} ;;
        --command=*) command=${arg#--command=} ;;
      esac
    done
    cd "$FAKE/workers/$worker"
    # A login on the worker: none of this machine's environment.
    exec env -i HOME="$PWD" PATH="$PATH" bash -c "$command" ;;
  *) exit 9 ;;
esac
"""
SUDO = r"""
echo "sudo $*" >>"$HOME/events"
if [[ $1 == lsof ]]; then cat "$HOME/tpu_holders" 2>/dev/null; fi
exit 0
"""
UV = r"""
echo "$*" >>"$HOME/uv.log"
if [[ $1 == venv ]]; then
  mkdir -p "${@: -1}/bin"
  printf '#!/usr/bin/env bash\necho "Python 3.11 stand-in"\n' >"${@: -1}/bin/python"
  chmod +x "${@: -1}/bin/python"
fi
"""
TRAINER = r"""
printf '%s\0' "$@" >"$HOME/python.argv"
for name in LIBTPU_INIT_ARGS XLA_FLAGS HF_HOME JAX_COMPILATION_CACHE_DIR JAX_PLATFORMS; do
  if [[ -n ${!name+set} ]]; then printf '%s=%s\0' "$name" "${!name}"; fi
done >"$HOME/python.env"
pwd >"$HOME/python.cwd"
echo "python" >>"$HOME/events"
echo "training on worker ${HOME##*/}"
echo "a warning from ${HOME##*/}" >&2
if [[ -f $HOME/hang ]]; then
  echo $$ >"$HOME/python.pid"
  while [[ -f $HOME/hang ]]; do sleep 0.05; done
fi
exit "$(cat "$HOME/exit_status" 2>/dev/null || echo 0)"
"""
FORWARDED = {
    "LIBTPU_INIT_ARGS": "--xla_tpu_enable_latency_hiding_scheduler=true --b='x y'",
    "XLA_FLAGS": '--xla_dump_to=/tmp/dump {a} "q"',
    "HF_HOME": "/data/hf home",
    "JAX_COMPILATION_CACHE_DIR": "/cache/jax",
}


@pytest.fixture
def tpu(tmp_path):
    """(checkout, commit, fake, env): a git checkout holding the launchers, and two workers."""
    checkout = tmp_path / "checkout"
    for name in ("tpu_pod.sh", "tpu_worker.sh"):
        executable(checkout / "launch" / name, "").write_text((REPO / "launch" / name).read_text())
    (checkout / "requirements.txt").write_text("jax==0.10.2\njaxlib==0.10.2\n")
    (checkout / "jaxvrl").mkdir()
    (checkout / "jaxvrl" / "train.py").write_text("")
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "launchers"], check=True)
    commit = subprocess.run(
        git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    fake = tmp_path / "fake"
    (fake / "calls").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    executable(bin_dir / "gcloud", GCLOUD)
    executable(bin_dir / "sudo", SUDO)
    executable(bin_dir / "uv", UV)
    for worker in ("0", "1"):
        (fake / "workers" / worker).mkdir(parents=True)
    env = base_env(bin_dir, FAKE=str(fake), FAKE_ENDPOINTS="10.0.0.2;10.0.0.3")
    return checkout, commit, fake, env


def _install_worker(fake: Path, worker: str, commit: str) -> Path:
    """A worker after `setup`: the repository at `commit`, a virtual environment's python."""
    home = fake / "workers" / worker
    shutil.copytree(REPO / "launch", home / "jaxvrl" / "launch")
    (home / "jaxvrl" / ".jaxvrl_commit").write_text(commit + "\n")
    executable(home / "jaxvrl-venv" / "bin" / "python", TRAINER)
    return home


def _tpu_pod(checkout: Path, env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [str(checkout / "launch" / "tpu_pod.sh"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie no longer does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _gcloud_calls(fake: Path) -> list[list[str]]:
    return [records(p) for p in sorted((fake / "calls").iterdir())]


def test_tpu_run_gives_every_worker_the_exact_command_and_environment(tpu, tmp_path):
    checkout, commit, fake, env = tpu
    homes = [_install_worker(fake, w, commit) for w in ("0", "1")]
    (homes[0] / "tpu_holders").write_text("4242\n4243\n")  # a stale process holding the TPU
    env.update(FORWARDED, JAX_PLATFORMS="cpu", JAX_PROCESS_ID="5")  # not sent: this machine's
    result = _tpu_pod(
        checkout, env, "run", "my-tpu", "us-east5-a", "configs/video_r1.py",
        "/mnt/bucket/runs/r1", HOSTILE, cwd=tmp_path / "elsewhere",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for worker, home in enumerate(homes):
        assert records(home / "python.argv") == [
            "-m",
            "jaxvrl.train",
            "--config=configs/video_r1.py",
            "--workdir=/mnt/bucket/runs/r1",
            "--config.mesh.distributed=true",
            HOSTILE,
        ]
        assert read_environ(home / "python.env") == FORWARDED
        assert (home / "python.cwd").read_text().strip() == str(home / "jaxvrl")
        # Each worker's output, prefixed here, copied here and kept on the worker.
        assert f"[worker {worker}] training on worker {worker}" in result.stdout.splitlines()
        assert f"[worker {worker}] a warning from {worker}" in result.stdout.splitlines()
        (local_log,) = (tmp_path / "elsewhere" / "tpu_logs" / "my-tpu").glob(
            f"*/worker{worker}.log"
        )
        assert f"training on worker {worker}" in local_log.read_text()
        remote_log = home / "jaxvrl_logs" / "current" / f"worker{worker}.log"
        assert f"training on worker {worker}" in remote_log.read_text()
        # Before the trainer: the stale holders killed, the lock file removed.
        events = (home / "events").read_text().splitlines()
        assert events[-2:] == ["sudo rm -f /tmp/libtpu_lockfile", "python"]
        assert events[0].startswith("sudo lsof -t -w")
    assert "sudo kill -9 4242 4243" in (homes[0] / "events").read_text()
    assert "sudo kill" not in (homes[1] / "events").read_text()
    calls = _gcloud_calls(fake)
    assert [c[:6] for c in calls if c[3] == "describe"] == [
        ["compute", "tpus", "tpu-vm", "describe", "my-tpu", "--zone=us-east5-a"]
    ]
    ssh = sorted(c for c in calls if c[3] == "ssh")
    assert [c[:7] for c in ssh] == [
        ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-east5-a", f"--worker={w}"]
        for w in (0, 1)
    ]
    sent = "LIBTPU_INIT_ARGS XLA_FLAGS HF_HOME JAX_COMPILATION_CACHE_DIR"
    assert f"sent to every worker: {sent}" in " ".join(result.stderr.split())


def test_tpu_run_names_the_first_worker_that_failed_and_stops_the_others(tpu, tmp_path):
    checkout, commit, fake, env = tpu
    homes = [_install_worker(fake, w, commit) for w in ("0", "1")]
    (homes[0] / "hang").write_text("")  # worker 0 trains on, as the others would after a loss
    (homes[1] / "exit_status").write_text("7")
    start = time.monotonic()
    result = _tpu_pod(
        checkout, env, "run", "my-tpu", "z", "configs/demo.py", "/mnt/r", cwd=tmp_path / "here"
    )
    assert result.returncode == 1
    assert "worker 1 of 2 failed (exit status 7)" in result.stderr
    assert "worker1.log" in result.stderr
    assert time.monotonic() - start < 30  # worker 0 (sleeping 30 s) was stopped
    stops = [c for c in _gcloud_calls(fake) if c[-1].endswith("tpu_worker.sh stop 0")]
    assert len(stops) == 1
    assert not _alive(int((homes[0] / "python.pid").read_text()))


# A command the test interrupts starts with a terminal's signal state whatever pytest's is: run
# in the background by a shell (`pytest ... &`), pytest and its children ignore SIGINT, and bash
# never traps a signal ignored when it started, so Ctrl-C could not reach tpu_pod.sh's handler.
DEFAULT_SIGNALS = [
    sys.executable,
    "-c",
    "import os, signal, sys\n"
    "for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP): signal.signal(s, signal.SIG_DFL)\n"
    "signal.pthread_sigmask(signal.SIG_SETMASK, [])\n"
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def test_tpu_run_outlives_the_session_here_and_attach_and_stop_reach_it(tpu, tmp_path):
    checkout, commit, fake, env = tpu
    homes = [_install_worker(fake, w, commit) for w in ("0", "1")]
    for home in homes:
        (home / "hang").write_text("")
    here = tmp_path / "here"
    here.mkdir()
    command = [*DEFAULT_SIGNALS, str(checkout / "launch" / "tpu_pod.sh"), "run", "t", "z"]
    command += ["configs/demo.py", "/r"]
    run = subprocess.Popen(command, env=env, cwd=here, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while not all((home / "python.pid").exists() for home in homes):
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)  # Ctrl-C here (or a dropped connection)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130
    assert "detached; the run goes on on the workers" in err
    pids = [int((home / "python.pid").read_text()) for home in homes]
    assert all(_alive(pid) for pid in pids)
    # attach follows the same run to its end, with its status.
    attach = subprocess.Popen(
        [str(checkout / "launch" / "tpu_pod.sh"), "attach", "t", "z"], env=env, cwd=here,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    (homes[1] / "hang").unlink()  # worker 1 ends by itself; worker 0 is stopped
    time.sleep(0.5)
    stop = _tpu_pod(checkout, env, "stop", "t", "z", cwd=here)
    assert stop.returncode == 0, stop.stderr
    assert "[worker 0] worker 0: stopping the run" in stop.stdout
    assert not any(_alive(pid) for pid in pids)
    out, err = attach.communicate(timeout=30)
    assert attach.returncode == 1, err  # worker 0 ended without an exit status: stopped
    assert "[worker 1] training on worker 1" in out
    assert "worker 0: the run ended without an exit status (stopped or killed)" in out


def test_tpu_run_refuses_a_worker_at_another_commit(tpu, tmp_path):
    checkout, commit, fake, env = tpu
    _install_worker(fake, "0", commit)
    home = _install_worker(fake, "1", commit)
    (home / "jaxvrl" / ".jaxvrl_commit").write_text("0123abc\n")
    result = _tpu_pod(checkout, env, "run", "t", "z", "configs/demo.py", "/mnt/r", cwd=tmp_path)
    assert result.returncode == 1
    assert f"[worker 1] worker 1: jaxvrl is missing or not at commit {commit}" in result.stdout
    assert "run launch/tpu_pod.sh setup" in result.stdout
    assert "worker 1 of 2 failed (exit status 3)" in result.stderr
    assert not (home / "python.argv").exists()


def test_tpu_dry_run_prints_the_commands_it_would_run_and_runs_none(tpu, tmp_path):
    checkout, commit, fake, env = tpu
    homes = [_install_worker(fake, w, commit) for w in ("0", "1")]
    env.update(FORWARDED, WORKERS="2", PROJECT="my-project")
    result = _tpu_pod(
        checkout, env, "--dry-run", "run", "t", "z", "configs/demo.py", "~/runs/r1", HOSTILE,
        cwd=tmp_path / "here",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _gcloud_calls(fake) == []  # WORKERS given: not even a describe
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == 2 and not (tmp_path / "here" / "tpu_logs").exists()
    for worker, line in enumerate(lines):
        argv = subprocess.run(
            ["bash", "-c", 'printf "%s\\0" ' + line], capture_output=True, text=True, check=True
        ).stdout.split("\0")[:-1]
        assert argv[:8] == [
            "gcloud", "compute", "tpus", "tpu-vm", "ssh", "t", "--zone=z", "--project=my-project"
        ]  # fmt: skip
        assert argv[8] == f"--worker={worker}" and argv[9].startswith("--command=cd ~ && cd --")
        # Pasted into a shell, each line does what a run does.
        subprocess.run(["bash", "-c", line], env=env, check=True, capture_output=True, timeout=30)
        assert records(homes[worker] / "python.argv")[3:] == [
            f"--workdir={homes[worker]}/runs/r1",  # ~ is the worker's home
            "--config.mesh.distributed=true",
            HOSTILE,
        ]
        assert read_environ(homes[worker] / "python.env") == FORWARDED


def test_tpu_setup_copies_the_commit_and_makes_a_python_311_environment(tpu, tmp_path):
    checkout, commit, fake, env = tpu
    result = _tpu_pod(checkout, env, "setup", "t", "z", cwd=tmp_path / "here")
    assert result.returncode == 0, result.stderr
    for worker in ("0", "1"):
        home = fake / "workers" / worker
        assert (home / "jaxvrl" / ".jaxvrl_commit").read_text().strip() == commit
        assert (home / "jaxvrl" / "launch" / "tpu_worker.sh").is_file()
        assert list(home.glob("*.tar.gz")) == [] and not (home / "jaxvrl.new").exists()
        assert (home / "uv.log").read_text().splitlines() == [
            "venv --seed --python 3.11 jaxvrl-venv",
            "pip install --quiet --python jaxvrl-venv/bin/python -r jaxvrl/requirements.txt "
            "jax[tpu]==0.10.2",
        ]
        assert f"[worker {worker}] Python 3.11 stand-in" in result.stdout
    (scp,) = [c for c in _gcloud_calls(fake) if c[3] == "scp"]
    assert scp[5:] == [f"t:jaxvrl-{commit}.tar.gz", "--zone=z", "--worker=all"]


@pytest.mark.parametrize(
    "workdir, said",
    [("gs://b/runs/r1", "is a URL"), ("runs/r1", "give a directory every worker writes to")],
)
def test_tpu_run_refuses_a_workdir_no_worker_can_share_before_any_gcloud_call(
    tpu, tmp_path, workdir, said
):
    checkout, _, fake, env = tpu
    result = _tpu_pod(checkout, env, "run", "t", "z", "configs/demo.py", workdir, cwd=tmp_path)
    assert result.returncode == 2
    assert said in result.stderr and result.stderr.count("\n") == 1
    assert _gcloud_calls(fake) == []


# ------------------------------------------------------------------------------------------------
# launch/gpu_node.sh and launch/local.sh: paths are the caller's.


def test_gpu_node_resolves_paths_where_it_was_started(tmp_path):
    bin_dir = tmp_path / "bin"
    executable(bin_dir / "python", 'printf "%s\\0" "$@" >"$FAKE/argv"; pwd >"$FAKE/cwd"\n')
    caller = tmp_path / "caller"
    caller.mkdir()
    (caller / "mine.py").write_text("")
    env = base_env(bin_dir, FAKE=str(tmp_path))
    for config, expected in [("mine.py", caller / "mine.py"), ("configs/demo.py", None)]:
        result = subprocess.run(
            [str(REPO / "launch" / "gpu_node.sh"), config, "./runs/r1", HOSTILE],
            cwd=caller, env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert records(tmp_path / "argv") == [
            "-m",
            "jaxvrl.train",
            f"--config={expected or REPO / 'configs/demo.py'}",
            f"--workdir={caller}/runs/r1",
            HOSTILE,
        ]
        assert (tmp_path / "cwd").read_text().strip() == str(REPO)
    dry = subprocess.run(
        [str(REPO / "launch" / "gpu_node.sh"), "--dry-run", "mine.py", "/runs/r1"],
        cwd=caller, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert dry.stdout.splitlines() == [
        f"cd {REPO}",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
        f"python -m jaxvrl.train --config={caller}/mine.py --workdir=/runs/r1",
    ]
    url = subprocess.run(
        [str(REPO / "launch" / "gpu_node.sh"), "mine.py", "gs://b/r1"],
        cwd=caller, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert url.returncode == 2 and "is a URL" in url.stderr
