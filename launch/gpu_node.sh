#!/usr/bin/env bash
# Start a jaxvrl run on one GPU node: one process drives all local GPUs through JAX CUDA.
#
#   launch/gpu_node.sh [--dry-run] configs/video_r1.py /runs/r1 [--config.x=y ...]
#
# Several GPU nodes without SLURM: run it on every node with the same coordinator (a free port on
# node 0) and each node's own process id; each process drives all the GPUs of its node:
#
#   JAX_COORDINATOR_ADDRESS=node0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 launch/gpu_node.sh ...
#   JAX_COORDINATOR_ADDRESS=node0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 launch/gpu_node.sh ...
#
# CONFIG and WORKDIR are the caller's (relative paths resolve where the script was started; a
# CONFIG found only in the repository is the repository's). PYTHON: the interpreter (default
# python). --dry-run prints the environment and the command instead of running it.
set -euo pipefail
dry_run=false
if [[ ${1:-} == --dry-run ]]; then
  dry_run=true
  shift
fi
if [[ $# -lt 2 ]]; then
  echo "usage: $0 [--dry-run] CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/paths.sh
source "$repo/launch/paths.sh"
config=$(absolute_config "$config" "$repo") || exit 2
workdir=$(absolute_path "$workdir") || exit 2

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
# XLA and NCCL flags: a value set before launching is kept. The JAX docs' GPU performance tips
# (flags change between jaxlib versions; measure before keeping one):
#   --xla_gpu_enable_latency_hiding_scheduler=true   overlap collectives with compute
#   --xla_gpu_triton_gemm_any=true                   Triton for every matmul it supports
# export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
# NCCL across nodes: NCCL_DEBUG=WARN names a failing peer; NCCL_SOCKET_IFNAME (and NCCL_IB_HCA on
# InfiniBand) pick the network where NCCL's guess is wrong.
# export NCCL_DEBUG=WARN
command=("${PYTHON:-python}" -m jaxvrl.train --config="$config" --workdir="$workdir"
  ${distributed[@]+"${distributed[@]}"} "$@")
if $dry_run; then
  echo "cd $(printf '%q' "$repo")"
  for name in XLA_PYTHON_CLIENT_MEM_FRACTION XLA_FLAGS NCCL_DEBUG JAX_COORDINATOR_ADDRESS \
    JAX_NUM_PROCESSES JAX_PROCESS_ID JAX_LOCAL_DEVICE_IDS; do
    if [[ -n ${!name:-} ]]; then
      echo "export $name=$(printf '%q' "${!name}")"
    fi
  done
  printf '%q' "${command[0]}"
  printf ' %q' "${command[@]:1}"
  echo
  exit 0
fi
cd "$repo"
exec "${command[@]}"
