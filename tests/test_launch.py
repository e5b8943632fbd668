"""Launching on real clusters (launch/*, jaxvrl/run_paths.py), with stand-ins for `gcloud`,
`srun`, `scontrol`, `sudo`, `uv` and `python`: small bash scripts first on PATH that record the
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

from jaxvrl import run_paths

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# An override a shell would mangle: spaces, quotes of both kinds, braces, a dollar, a backslash.
HOSTILE = """--config.data.prompt=Say "hi" {x} 'y' $HOME \\n"""


def _executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def _records(path: Path) -> list[str]:
    """Arguments a stand-in wrote NUL-separated."""
    return path.read_text().split("\0")[:-1]


def _environ(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in _records(path))


def _base_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------
# Run directories: a URL is refused before any work (jaxvrl/run_paths.py).


def test_a_url_is_refused_in_one_line_that_says_what_to_do():
    line = run_paths.refusal("--workdir", "gs://my-bucket/runs/r1")
    assert line is not None and "\n" not in line
    assert line.startswith("--workdir=gs://my-bucket/runs/r1 is a URL (gs://)")
    assert "gcsfuse --implicit-dirs my-bucket /mnt/my-bucket" in line
    assert "Filestore" in line and "(--workdir=/mnt/my-bucket/runs/r1)" in line
    assert "mount it on every host" in run_paths.refusal("--out", "s3://b/x")
    for path in ("/runs/r1", "runs/r1", "./gs/x", "C:/x", "", "mnt/gs:/x"):
        assert run_paths.refusal("--workdir", path) is None, path


def test_the_places_a_run_writes_include_the_export_and_a_synthetic_set():
    from configs import demo

    config = demo.get_config()
    config.export.hf_dir = "gs://b/hf"
    paths = run_paths.run_outputs("/runs/r1", config)
    assert paths["--workdir"] == "/runs/r1"
    assert paths["--config.export.hf_dir"] == "gs://b/hf"
    assert paths["--config.data.synthetic.directory"] == str(config.data.synthetic.directory)


def test_require_local_ends_the_command_with_status_2(capsys):
    run_paths.require_local({"--workdir": "/runs/r1", "--out": ""})  # nothing to refuse
    with pytest.raises(SystemExit) as exit_:
        run_paths.require_local({"--workdir": "/runs/r1", "--out": "gs://b/hf"})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out=gs://b/hf is a URL") and err.count("\n") == 1


def test_no_command_creates_a_local_gs_directory(tmp_path, monkeypatch, capsys):
    """python -m jaxvrl.train and jaxvrl.evaluate (started in an empty directory), and the
    checkpoint export and evaluation report, given a gs:// path, end with status 2 and one line,
    and nothing named gs: appears anywhere."""
    from jaxvrl import checkpoint, evaluate

    config = f"--config={REPO / 'configs/demo.py'}"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    procs = {}
    for module in ("jaxvrl.train", "jaxvrl.evaluate"):
        cwd = tmp_path / module
        cwd.mkdir()
        procs[module] = subprocess.Popen(
            [sys.executable, "-m", module, config, "--workdir=gs://b/runs/r1"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    in_process = {
        "export": lambda: checkpoint.main(["export", "--workdir=/r", "--out=gs://b/hf"]),
        "report": lambda: evaluate.cli(["report", "--workdir=gs://b/runs/r1"]),
    }
    for name, command in in_process.items():
        with pytest.raises(SystemExit) as exit_:
            command()
        assert exit_.value.code == 2, name
        err = capsys.readouterr().err
        flag = "--out=gs://b/hf" if name == "export" else "--workdir=gs://b/runs/r1"
        assert err.startswith(f"error: {flag} is a URL (gs://)") and err.count("\n") == 1
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, (name, err)
        assert len(errors) == 1, (name, err)
        assert errors[0].startswith("error: --workdir=gs://b/runs/r1 is a URL (gs://)"), err
    made = [p for p in tmp_path.rglob("*") if p.name.startswith("gs:")]
    assert made == [] and not (REPO / "gs:").exists()


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
        _executable(checkout / "launch" / name, "").write_text((REPO / "launch" / name).read_text())
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
    _executable(bin_dir / "gcloud", GCLOUD)
    _executable(bin_dir / "sudo", SUDO)
    _executable(bin_dir / "uv", UV)
    for worker in ("0", "1"):
        (fake / "workers" / worker).mkdir(parents=True)
    env = _base_env(bin_dir, FAKE=str(fake), FAKE_ENDPOINTS="10.0.0.2;10.0.0.3")
    return checkout, commit, fake, env


def _install_worker(fake: Path, worker: str, commit: str) -> Path:
    """A worker after `setup`: the repository at `commit`, a virtual environment's python."""
    home = fake / "workers" / worker
    shutil.copytree(REPO / "launch", home / "jaxvrl" / "launch")
    (home / "jaxvrl" / ".jaxvrl_commit").write_text(commit + "\n")
    _executable(home / "jaxvrl-venv" / "bin" / "python", TRAINER)
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
    return [_records(p) for p in sorted((fake / "calls").iterdir())]


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
        assert _records(home / "python.argv") == [
            "-m",
            "jaxvrl.train",
            "--config=configs/video_r1.py",
            "--workdir=/mnt/bucket/runs/r1",
            "--config.mesh.distributed=true",
            HOSTILE,
        ]
        assert _environ(home / "python.env") == FORWARDED
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


def test_tpu_run_outlives_the_session_here_and_attach_and_stop_reach_it(tpu, tmp_path):
    checkout, commit, fake, env = tpu
    homes = [_install_worker(fake, w, commit) for w in ("0", "1")]
    for home in homes:
        (home / "hang").write_text("")
    here = tmp_path / "here"
    here.mkdir()
    command = [str(checkout / "launch" / "tpu_pod.sh"), "run", "t", "z", "configs/demo.py", "/r"]
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
        assert _records(homes[worker] / "python.argv")[3:] == [
            f"--workdir={homes[worker]}/runs/r1",  # ~ is the worker's home
            "--config.mesh.distributed=true",
            HOSTILE,
        ]
        assert _environ(homes[worker] / "python.env") == FORWARDED


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
    _executable(bin_dir / "scontrol", SCONTROL)
    _executable(bin_dir / "srun", SRUN)
    _executable(bin_dir / "python", TASK)
    env = _base_env(
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
    srun = _records(fake / "srun.argv")
    assert srun[:5] == [
        "--label",
        "--kill-on-bad-exit=1",
        "--ntasks-per-node=1",
        "--cpus-per-task=32",
        "bash",
    ]
    assert _environ(fake / "srun.env") == {"SRUN_CPUS_PER_TASK": "32"}
    for rank in (0, 1):
        assert (fake / f"task{rank}.cwd").read_text().strip() == str(REPO)
        assert _records(fake / f"task{rank}.argv") == [
            "-m",
            "jaxvrl.train",
            f"--config={submit}/my_config.py",  # the submitter's, not the repository's
            f"--workdir={submit}/runs/r1",
            "--config.mesh.distributed=true",
            HOSTILE,
        ]
        assert _environ(fake / f"task{rank}.env") == {
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
    srun = _records(fake / "srun.argv")
    assert "--ntasks-per-node=8" in srun and "--cpus-per-task=12" in srun
    for rank in range(16):
        argv = _records(fake / f"task{rank}.argv")
        assert argv[2] == f"--config={REPO}/configs/demo.py"  # only in the repository
        environ = _environ(fake / f"task{rank}.env")
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
    assert _records(fake / "task1.argv")[2:] == [
        f"--config={submit}/my_config.py",
        f"--workdir={submit}/runs/r1",
        "--config.mesh.distributed=true",
        HOSTILE,
    ]
    assert _environ(fake / "task1.env")["JAX_PROCESS_ID"] == "1"
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


# ------------------------------------------------------------------------------------------------
# launch/gpu_node.sh and launch/local.sh: paths are the caller's.


def test_gpu_node_resolves_paths_where_it_was_started(tmp_path):
    bin_dir = tmp_path / "bin"
    _executable(bin_dir / "python", 'printf "%s\\0" "$@" >"$FAKE/argv"; pwd >"$FAKE/cwd"\n')
    caller = tmp_path / "caller"
    caller.mkdir()
    (caller / "mine.py").write_text("")
    env = _base_env(bin_dir, FAKE=str(tmp_path))
    for config, expected in [("mine.py", caller / "mine.py"), ("configs/demo.py", None)]:
        result = subprocess.run(
            [str(REPO / "launch" / "gpu_node.sh"), config, "./runs/r1", HOSTILE],
            cwd=caller, env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert _records(tmp_path / "argv") == [
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
