#!/usr/bin/env bash
# A jaxvrl run on every host (worker) of a Cloud TPU VM slice: one process per host, each reading
# its own share of every global batch (jax.distributed starts from the TPU metadata).
#
#   launch/tpu_pod.sh setup  TPU_NAME ZONE                  once, and again after a new commit
#   launch/tpu_pod.sh run    TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#   launch/tpu_pod.sh attach TPU_NAME ZONE                  follow the current run again
#   launch/tpu_pod.sh stop   TPU_NAME ZONE                  end it
#   launch/tpu_pod.sh --dry-run setup|run|attach|stop ...   print the commands instead
#
# setup copies this repository's HEAD commit (git archive: commit what you want to run) to every
# worker, into JAXVRL_REPO (default: jaxvrl in the home directory), and makes a virtual
# environment with Python 3.11 there (JAXVRL_VENV, default jaxvrl-venv; uv installs the
# interpreter, which TPU images before Ubuntu 24.04 lack) holding requirements.txt and jax[tpu] of
# the same version.
#
# run, on every worker (launch/tpu_worker.sh): checks that the repository there is at this
# repository's HEAD; stops a previous run and any process holding the TPU, and removes
# /tmp/libtpu_lockfile; starts the trainer detached from the ssh session (setsid nohup: a dropped
# connection or Ctrl-C here leaves it running), writing ~/jaxvrl_logs/<run>/worker<i>.log there.
# Here it follows every worker's log, prints each line after "[worker i]", keeps a copy of each
# in LOGS (default tpu_logs/TPU_NAME/<run>), and when a worker fails, stops the run on all of them
# and exits with status 1 naming the first that failed.
#
# CONFIG is a path in the repository on the workers (configs/video_r1.py). WORKDIR must be a
# directory every worker writes to: an absolute path on a mount they share (gcsfuse, Filestore;
# docs/launch.md), or ~/... on a one-host slice; a URL (gs://...) is refused.
#
# Environment: FORWARD_ENV lists the variables sent to every worker when they are set here
# (names, or patterns such as JAX_*; default below). XLA and libtpu flags go in XLA_FLAGS and
# LIBTPU_INIT_ARGS, e.g. LIBTPU_INIT_ARGS='--xla_tpu_enable_latency_hiding_scheduler=true'.
# PROJECT: gcloud's --project; WORKERS: the number of hosts (default: asked of gcloud);
# SSH_FLAGS: more flags for `gcloud compute tpus tpu-vm ssh` and `scp` (--tunnel-through-iap).
set -euo pipefail
me=launch/tpu_pod.sh
default_forward="LIBTPU_INIT_ARGS XLA_FLAGS TPU_STDERR_LOG_LEVEL TPU_MIN_LOG_LEVEL TPU_VMODULE \
HF_HOME HF_HUB_OFFLINE HF_DATASETS_OFFLINE JAX_*"
# Never sent: the per-process start-up variables; and settings of this machine rather than the
# TPU hosts, which a pattern skips (named in FORWARD_ENV, JAX_PLATFORMS and the like are sent).
per_process=" JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID "
this_machine=" JAX_PLATFORMS JAX_NUM_CPU_DEVICES JAX_LOCAL_DEVICE_IDS JAX_COORDINATOR_PORT "

usage() {
  sed -n '5,9p' "$0" | sed 's/^# \{0,1\}/usage: /' >&2
  exit 2
}
dry_run=false
if [[ ${1:-} == --dry-run ]]; then
  dry_run=true
  shift
fi
action=${1:-}
case $action in
  setup | attach | stop) [[ $# -eq 3 ]] || usage ;;
  run) [[ $# -ge 5 ]] || usage ;;
  *) usage ;;
esac
tpu=$2 zone=$3
shift 3
local_repo=$(cd "$(dirname "$0")/.." && pwd)
repo=${JAXVRL_REPO:-jaxvrl}
venv=${JAXVRL_VENV:-jaxvrl-venv}
gcloud_flags=(--zone="$zone")
if [[ -n ${PROJECT:-} ]]; then
  gcloud_flags+=(--project="$PROJECT")
fi
read -r -a ssh_flags <<<"${SSH_FLAGS:-}"

fail() {
  echo "$me: error: $*" >&2
  exit 2
}
quote() { # one word for bash: as it is where that is safe, else in single quotes
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
remote_path() { # PATH: one word for the worker's shell (a relative path is under its home)
  if [[ $1 == /* ]]; then
    quote "$1"
  else
    # shellcheck disable=SC2016  # the worker's $HOME
    printf '"$HOME"/%s' "$(quote "${1#\~/}")"
  fi
}
show() { # a command as it would run (--dry-run)
  local word line=
  for word in "$@"; do
    line+="${line:+ }$(quote "$word")"
  done
  echo "$line"
}

if [[ $action == run ]]; then
  workdir=$2
  if [[ $workdir =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]]; then
    fail "WORKDIR=$workdir is a URL: the run writes with local file operations; mount the" \
      "bucket on every worker (gcsfuse or a Filestore mount, docs/launch.md) and pass the" \
      "mounted path"
  fi
  # shellcheck disable=SC2088  # ~/ is the worker's home, expanded there
  case $workdir in
    /* | "~/"*) ;;
    *) fail "WORKDIR=$workdir: give a directory every worker writes to, as an absolute path" \
      "(a shared mount) or ~/... (one-host slices)" ;;
  esac
fi
commit=$(git -C "$local_repo" rev-parse HEAD 2>/dev/null) || fail "$local_repo is not a git checkout"
q_repo=$(quote "$repo") q_worker_script=$(quote "$repo/launch/tpu_worker.sh")

# ---- What each worker runs (its login shell, in the home directory). ------------------------

setup_command() { # WORKER
  local archive
  archive=$(quote "jaxvrl-$commit.tar.gz")
  echo "cd ~ && rm -rf -- $q_repo.new && mkdir -p -- $q_repo.new" \
    "&& tar -xzf $archive -C $q_repo.new && rm -f -- $archive" \
    "&& bash $q_repo.new/launch/tpu_worker.sh setup $1 $commit $q_repo $(quote "$venv")" \
    "$(quote "$jax_version")"
}
stop_command() { # WORKER
  echo "cd ~ && bash $q_worker_script stop $1"
}
follow_command() { # WORKER
  echo "cd ~ && exec bash $q_worker_script follow $1"
}
run_command() { # WORKER: in the repository at this commit, the forwarded variables, the run
  local wrong
  wrong="worker $1: $repo is missing or not at commit $commit (HEAD where $me runs): run $me setup"
  echo "cd ~ && cd -- $q_repo && [ \"\$(cat .jaxvrl_commit 2>/dev/null)\" = $commit ]" \
    "|| { echo $(quote "$wrong") >&2; exit 3; }; ${exports}exec bash launch/tpu_worker.sh" \
    "start $1 $(quote "$run_id") $(remote_path "$venv/bin/python") $run_args"
}

# ---- Here. ----------------------------------------------------------------------------------------

forwarded_names() { # the variables of FORWARD_ENV that are set here, each once
  local pattern name seen=" "
  for pattern in ${FORWARD_ENV-$default_forward}; do
    if [[ $pattern == *'*'* ]]; then
      for name in $(compgen -e); do
        # shellcheck disable=SC2053  # a pattern, on purpose
        if [[ $name == $pattern && $per_process$this_machine != *" $name "* ]]; then
          [[ $seen == *" $name "* ]] || seen="$seen$name "
        fi
      done
    elif [[ ! $pattern =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
      fail "FORWARD_ENV: $pattern is not a variable name"
    elif [[ $per_process == *" $pattern "* ]]; then
      fail "FORWARD_ENV: $pattern is set per process on the TPU slice, not sent"
    elif [[ -n ${!pattern+set} ]]; then
      [[ $seen == *" $pattern "* ]] || seen="$seen$pattern "
    fi
  done
  echo "$seen"
}

worker_count() {
  if [[ -n ${WORKERS:-} ]]; then
    [[ $WORKERS =~ ^[1-9][0-9]*$ ]] || fail "WORKERS=$WORKERS is not a positive number"
    echo "$WORKERS"
    return
  fi
  local endpoints count
  endpoints=$(gcloud compute tpus tpu-vm describe "$tpu" "${gcloud_flags[@]}" \
    --format='value(networkEndpoints[].ipAddress)') || fail "gcloud could not describe $tpu"
  # shellcheck disable=SC2020  # both separators become line breaks
  count=$(tr ';,' '\n\n' <<<"$endpoints" | grep -c '[^[:space:]]' || true)
  ((count > 0)) || fail "gcloud lists no workers of $tpu"
  echo "$count"
}

prefix() { # WORKER: each line of stdin after "[worker i] "
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    printf '[worker %s] %s\n' "$1" "$line"
  done
}

followers=()
stop_following() {
  local pid
  for pid in ${followers[@]+"${followers[@]}"}; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in ${followers[@]+"${followers[@]}"}; do
    wait "$pid" 2>/dev/null || true
  done
  followers=()
}

failed_worker='' failed_status=''
# Runs `COMMAND_FUNCTION WORKER` on every worker at once, each worker's output prefixed (and
# copied to LOG_DIR/worker<i>.log when LOG_DIR is set). Returns 1 at the first worker that exits
# non-zero, after stopping the others' sessions here (failed_worker, failed_status).
on_every_worker() { # COMMAND_FUNCTION
  local i command status_dir done_count=0 status
  local -a gcloud_ssh finished=()
  status_dir=$(mktemp -d)
  failed_worker='' failed_status=''
  for ((i = 0; i < workers; i++)); do
    command=$("$1" "$i")
    gcloud_ssh=(gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}"
      ${ssh_flags[@]+"${ssh_flags[@]}"} --worker="$i" --command="$command")
    if $dry_run; then
      show "${gcloud_ssh[@]}"
      continue
    fi
    set -m # each session in its own process group: stopping it stops its gcloud and ssh
    (
      set +e
      if [[ -n ${LOG_DIR:-} ]]; then
        "${gcloud_ssh[@]}" 2>&1 </dev/null | tee "$LOG_DIR/worker$i.log" | prefix "$i"
      else
        "${gcloud_ssh[@]}" 2>&1 </dev/null | prefix "$i"
      fi
      echo "${PIPESTATUS[0]}" >"$status_dir/$i"
    ) &
    set +m
    followers+=($!)
  done
  if $dry_run; then
    rm -rf "$status_dir"
    return 0
  fi
  while ((done_count < workers)); do
    for ((i = 0; i < workers; i++)); do
      if [[ -z ${finished[i]:-} && -s $status_dir/$i ]]; then
        finished[i]=1
        done_count=$((done_count + 1))
        status=$(cat "$status_dir/$i")
        if [[ $status != 0 ]]; then
          failed_worker=$i failed_status=$status
          stop_following
          rm -rf "$status_dir"
          return 1
        fi
      fi
    done
    sleep 0.2
  done
  stop_following
  rm -rf "$status_dir"
}

on_interrupt() {
  trap - INT TERM
  stop_following
  case $action in
    run | attach)
      echo "$me: detached; the run goes on on the workers. Follow it again: $me attach $tpu" \
        "$zone; end it: $me stop $tpu $zone" >&2
      ;;
    *) echo "$me: interrupted" >&2 ;;
  esac
  exit 130
}
trap on_interrupt INT TERM

report_failure() { # WHAT...
  echo "$me: worker $failed_worker of $workers failed (exit status $failed_status)$*" >&2
}

# ---- The actions. ---------------------------------------------------------------------------------

workers=$(worker_count)
if $dry_run; then
  echo "# $workers workers; commit $commit"
fi

case $action in
  setup)
    jax_version=$(sed -n 's/^jax==\([^[:space:];#]*\).*/\1/p' "$local_repo/requirements.txt")
    jax_version=${jax_version%%$'\n'*}
    [[ -n $jax_version ]] || fail "requirements.txt pins no jax==VERSION"
    if [[ -n $(git -C "$local_repo" status --porcelain --untracked-files=no) ]]; then
      echo "$me: warning: uncommitted changes are not copied; the workers get commit $commit" >&2
    fi
    archive=${TMPDIR:-/tmp}/jaxvrl-$commit.tar.gz
    archive_command=(git -C "$local_repo" archive --format=tar.gz -o "$archive" "$commit")
    scp_command=(gcloud compute tpus tpu-vm scp "$archive" "$tpu:jaxvrl-$commit.tar.gz"
      "${gcloud_flags[@]}" ${ssh_flags[@]+"${ssh_flags[@]}"} --worker=all)
    if $dry_run; then
      show "${archive_command[@]}"
      show "${scp_command[@]}"
    else
      "${archive_command[@]}"
      "${scp_command[@]}" || fail "copying the code to the workers failed"
      rm -f "$archive"
    fi
    if ! on_every_worker setup_command; then
      report_failure " during setup: its lines above start with [worker $failed_worker]"
      exit 1
    fi
    $dry_run || echo "$me: $workers workers ready at commit $commit" >&2
    ;;
  stop)
    if ! on_every_worker stop_command; then
      report_failure " while stopping"
      exit 1
    fi
    ;;
  attach | run)
    run_id=$(date -u +%Y%m%d-%H%M%S)
    if [[ $action == run ]]; then
      config=$1 workdir=$2
      shift 2
      run_args="-m jaxvrl.train $(quote "--config=$config") --workdir=$(remote_path "$workdir")"
      if ((workers > 1)); then
        run_args+=" --config.mesh.distributed=true"
      fi
      for arg in "$@"; do
        run_args+=" $(quote "$arg")"
      done
      exports=
      names=$(forwarded_names)
      for name in $names; do
        exports+="export $name=$(quote "${!name}"); "
      done
      echo "$me: $workers workers, commit $commit, run $run_id; sent to every worker:" \
        "${names:- (no variables)}" >&2
      command_function=run_command
    else
      command_function=follow_command
      run_id=attach-$run_id
    fi
    LOG_DIR=${LOGS:-tpu_logs/$tpu/$run_id}
    if ! $dry_run; then
      mkdir -p "$LOG_DIR"
      echo "$me: each worker's output is also in $LOG_DIR/worker<i>.log" >&2
    fi
    if ! on_every_worker "$command_function"; then
      # shellcheck disable=SC2088  # the worker's home
      report_failure "; its log: $LOG_DIR/worker$failed_worker.log (on the worker:" \
        "~/jaxvrl_logs/current/worker$failed_worker.log). Stopping the run on every worker."
      LOG_DIR='' on_every_worker stop_command || true
      exit 1
    fi
    $dry_run || echo "$me: all $workers workers finished" >&2
    ;;
esac
