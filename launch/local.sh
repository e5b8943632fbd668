#!/usr/bin/env bash
# A multi-host run on this one machine: N processes of jaxvrl.train, each with its own CPU devices,
# that find each other through a coordinator on localhost, exactly as N hosts of a pod would.
#
#   launch/local.sh 2 configs/demo.py /tmp/jaxvrl_mh [--config.key=value ...]
#
# DEVICES: CPU devices per process (default 4); PORT: the coordinator's port (default: a free one).
# Process 0 writes to the terminal, process i > 0 to WORKDIR/process_<i>.log. When a process exits
# non-zero the others are stopped and the script exits non-zero naming it; Ctrl-C stops them all.
set -euo pipefail
if [[ $# -lt 3 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
num_processes=$1 config=$2 workdir=$3
shift 3
devices=${DEVICES:-4}
if [[ ! $devices =~ ^[1-9][0-9]*$ ]]; then
  echo "error: DEVICES=$devices is not a positive number" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/paths.sh
source "$repo/launch/paths.sh"
config=$(absolute_config "$config" "$repo") || exit 2
workdir=$(absolute_path "$workdir") || exit 2
cd "$repo"
mkdir -p "$workdir"

python=${PYTHON:-python}
port=${PORT:-$("$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')}

declare -A index_of # pid -> process index, for the processes still running

# Each process leads its own process group (setsid, where there is one), so stopping it also
# stops whatever it started (data workers).
launcher=()
if command -v setsid >/dev/null; then
  launcher=(setsid)
fi
signal_process() { # SIGNAL PID (0: whether it, or its group, is still there)
  if ((${#launcher[@]})); then
    kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null
  else
    kill "-$1" "$2" 2>/dev/null
  fi
}

stop_all() {
  local pid tries
  for pid in "${!index_of[@]}"; do
    signal_process TERM "$pid" || true
  done
  for ((tries = 0; tries < 50; tries++)); do
    for pid in "${!index_of[@]}"; do
      signal_process 0 "$pid" || unset "index_of[$pid]"
    done
    ((${#index_of[@]} == 0)) && break
    sleep 0.1
  done
  for pid in "${!index_of[@]}"; do
    signal_process KILL "$pid" || true
  done
  wait 2>/dev/null || true
}

on_interrupt() {
  trap - INT TERM
  echo "launch/local.sh: interrupted, stopping all $num_processes processes" >&2
  stop_all
  exit 130
}
trap on_interrupt INT TERM

log_of() {
  if [[ $1 -eq 0 ]]; then echo "(the terminal)"; else echo "$workdir/process_$1.log"; fi
}

for ((i = 0; i < num_processes; i++)); do
  # JAX_NUM_CPU_DEVICES takes precedence over an --xla_force_host_platform_device_count in
  # XLA_FLAGS; jaxvrl/parallel/mesh.py reads the JAX_* coordinates (--config.mesh.distributed=true).
  env_vars=(
    JAX_PLATFORMS=cpu
    JAX_NUM_CPU_DEVICES="$devices"
    JAX_COORDINATOR_ADDRESS="127.0.0.1:$port"
    JAX_NUM_PROCESSES="$num_processes"
    JAX_PROCESS_ID="$i"
    PYTHONUNBUFFERED=1
  )
  command=("$python" -m jaxvrl.train --config="$config" --workdir="$workdir"
    --config.mesh.distributed=true "$@")
  if [[ $i -eq 0 ]]; then
    "${launcher[@]}" env "${env_vars[@]}" "${command[@]}" &
  else
    "${launcher[@]}" env "${env_vars[@]}" "${command[@]}" >"$workdir/process_$i.log" 2>&1 &
  fi
  index_of[$!]=$i
done
echo "launch/local.sh: $num_processes processes x $devices CPU devices, coordinator" \
  "127.0.0.1:$port; processes 1.. write to $workdir/process_<i>.log" >&2

# Wait for the processes one at a time, in the order they end; the first non-zero ends the run.
while ((${#index_of[@]} > 0)); do
  finished=
  status=0
  wait -n -p finished "${!index_of[@]}" || status=$?
  if [[ -z $finished ]]; then
    break # nothing left to wait for
  fi
  i=${index_of[$finished]}
  unset "index_of[$finished]"
  if ((status != 0)); then
    trap - INT TERM
    signal_process TERM "$finished" || true # what it started
    stop_all
    echo "launch/local.sh: process $i of $num_processes exited with status $status;" \
      "stopped the others. Its output: $(log_of "$i")" >&2
    if ((i > 0)); then
      echo "---- last lines of $workdir/process_$i.log ----" >&2
      tail -n 20 "$workdir/process_$i.log" >&2 || true
    fi
    exit 1
  fi
done
echo "launch/local.sh: all $num_processes processes finished" >&2
