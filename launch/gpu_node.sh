#!/usr/bin/env bash
# Start a jaxvrl run on one GPU node: one process drives all local GPUs through JAX CUDA.
#
#   launch/gpu_node.sh configs/video_r1.py /runs/r1 [--config.x=y ...]
#
# Several GPU nodes without SLURM: run it on every node with the same coordinator (a free port on
# node 0) and each node's own process id; each process drives all the GPUs of its node:
#
#   JAX_COORDINATOR_ADDRESS=node0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 launch/gpu_node.sh ...
#   JAX_COORDINATOR_ADDRESS=node0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 launch/gpu_node.sh ...
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
distributed=()
if [[ -n ${JAX_COORDINATOR_ADDRESS:-} ]]; then
  if [[ -z ${JAX_NUM_PROCESSES:-} || -z ${JAX_PROCESS_ID:-} ]]; then
    echo "error: JAX_COORDINATOR_ADDRESS needs JAX_NUM_PROCESSES and JAX_PROCESS_ID too" >&2
    exit 2
  fi
  distributed=(--config.mesh.distributed=true)
fi
# Let XLA keep most of the GPU memory for the model; the pipeline's workers stay on the CPU.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m jaxvrl.train --config="$config" --workdir="$workdir" "${distributed[@]}" "$@"
