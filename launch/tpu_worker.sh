#!/usr/bin/env bash
# The part of launch/tpu_pod.sh that runs on each TPU worker (it arrives there with the code):
#
#   tpu_worker.sh setup  WORKER COMMIT REPO VENV JAX_VERSION   (in the home directory) the code
#                                     unpacked in REPO.new becomes REPO; the virtual environment
#   tpu_worker.sh stop   WORKER                                stop the run; free the TPU
#   tpu_worker.sh start  WORKER RUN PYTHON ARGS...             (in the repository) stop, start
#                                     PYTHON ARGS detached, follow
#   tpu_worker.sh follow WORKER                                the current run's log, to its end
#
# The run's files: ~/jaxvrl_logs/RUN/worker<WORKER>.log, its exit status in .../status, the
# process group of the current run in ~/jaxvrl_logs/run.pid, ~/jaxvrl_logs/current -> RUN.
# start and follow exit with the trainer's status (1 when it has none: stopped, killed).
set -euo pipefail
logs=$HOME/jaxvrl_logs
action=${1:?action} worker=${2:?worker}
shift 2

running() { [[ -f $logs/run.pid ]] && kill -0 "$(cat "$logs/run.pid")" 2>/dev/null; }

# Our previous run (its process group), then any process with a TPU device open (/dev/accel* on
# v2-v4, /dev/vfio/* from v5e on: a run started by hand, a notebook), then the lock file libtpu
# leaves behind, which makes the next start fail.
stop() {
  local pid holders
  if running; then
    pid=$(cat "$logs/run.pid")
    echo "worker $worker: stopping the run (process group $pid)" >&2
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  holders=$(sudo lsof -t -w /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | tr '\n' ' ' || true)
  if [[ -n ${holders// /} ]]; then
    echo "worker $worker: killing the processes holding the TPU: $holders" >&2
    # shellcheck disable=SC2086  # one pid a word
    sudo kill -9 $holders 2>/dev/null || true
    sleep 1
  fi
  sudo rm -f /tmp/libtpu_lockfile
}

follow() {
  if [[ ! -e $logs/current || ! -f $logs/run.pid ]]; then
    echo "worker $worker: no run was started here" >&2
    exit 3
  fi
  tail -n +1 -s 0.5 -F --pid="$(cat "$logs/run.pid")" "$logs/current/worker$worker.log" \
    2>/dev/null || true
  if [[ -s $logs/current/status ]]; then
    exit "$(cat "$logs/current/status")"
  fi
  echo "worker $worker: the run ended without an exit status (stopped or killed)" >&2
  exit 1
}

case $action in
  setup)
    commit=${1:?commit} repo=${2:?repo} venv=${3:?venv} jax=${4:?jax version}
    if running; then
      echo "worker $worker: a run is in progress; end it first (launch/tpu_pod.sh stop)" >&2
      exit 3
    fi
    echo "$commit" >"$repo.new/.jaxvrl_commit"
    rm -rf -- "$repo"
    mv -- "$repo.new" "$repo"
    export PATH=$HOME/.local/bin:$PATH
    if ! command -v uv >/dev/null; then
      python3 -m pip install --user --quiet uv || curl -LsSf https://astral.sh/uv/install.sh | sh
    fi
    # Python >= 3.11 (jax 0.10.2); uv fetches it where the image has an older one.
    if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      rm -rf -- "$venv"
      uv venv --seed --python 3.11 "$venv"
    fi
    uv pip install --quiet --python "$venv/bin/python" -r "$repo/requirements.txt" "jax[tpu]==$jax"
    "$venv/bin/python" -c \
      'import sys, jax; print("ready: Python", sys.version.split()[0], "jax", jax.__version__)'
    ;;
  stop)
    stop
    ;;
  start)
    run=${1:?run} python=${2:?python}
    shift 2
    stop
    mkdir -p "$logs/$run"
    rm -f "$logs/$run/status"
    # Its own session (setsid), immune to the hang-up (nohup): the run outlives the ssh session.
    # shellcheck disable=SC2016  # expanded by the inner bash
    setsid nohup bash -c '"$@"; echo $? >"$0"' "$logs/$run/status" "$python" "$@" \
      >"$logs/$run/worker$worker.log" 2>&1 </dev/null &
    echo $! >"$logs/run.pid"
    ln -sfn "$run" "$logs/current"
    follow
    ;;
  follow)
    follow
    ;;
  *)
    echo "usage: $0 setup|stop|start|follow WORKER ..." >&2
    exit 2
    ;;
esac
